//! Prometheus metrics, registered per subsystem into one registry per process: the webhook
//! ([`WebhookMetrics`]), the wiring loop ([`WiringMetrics`]), the controller
//! ([`ControllerMetrics`]), the probes ([`ProbeMetrics`]) and the process ([`ProcessMetrics`]).
//! Each part goes only to its subsystem; clones share the same series. Names follow the Prometheus conventions: a `healthscope_` prefix, base
//! units, `_total` on counters. Per-workload series are deliberately absent: 10,000 workloads would
//! mean 10,000 series; per-workload detail is served by `/scopes/{namespace}/{name}` instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::api::{Health, ScopeHealthCondition};

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Webhook latency buckets (seconds). They include the API server's own admission-latency
/// boundaries (0.005, 0.025, 0.1, 0.5, 1, 2.5, 10) so both sides can be compared bucket for bucket.
pub const WEBHOOK_DURATION_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// AdmissionReview body sizes (bytes): 1 KiB up to the 7 MiB body limit.
pub const WEBHOOK_REQUEST_BYTES_BUCKETS: [f64; 8] = [
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 3145728.0, 7340032.0,
];

/// Reconcile latency buckets (seconds), 1 ms to 60 s like controller-runtime's.
pub const RECONCILE_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// HTTP probe latency buckets (seconds), up to the longest sensible probe timeout.
pub const PROBE_DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Every metric family healthscope exposes, by the sample name it is scraped as.
pub const METRIC_NAMES: [&str; 20] = [
    "healthscope_webhook_requests_total",
    "healthscope_webhook_request_duration_seconds",
    "healthscope_webhook_requests_in_flight",
    "healthscope_webhook_request_bytes",
    "healthscope_webhook_rejected_total",
    "healthscope_webhook_lookups_unfinished_total",
    "healthscope_wiring_writes_total",
    "healthscope_wiring_plan_duration_seconds",
    "healthscope_reconcile_total",
    "healthscope_reconcile_duration_seconds",
    "healthscope_status_patch_total",
    "healthscope_events_total",
    "healthscope_probe_success",
    "healthscope_probe_duration_seconds",
    "healthscope_workloads",
    "healthscope_scope_health",
    "healthscope_leader",
    "healthscope_crd_compatible",
    "healthscope_build_info",
    "healthscope_cert_expiry_timestamp_seconds",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookRequestLabels {
    operation: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    pass: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WiringLabels {
    target: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeScopeLabels {
    namespace: String,
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeHealthLabels {
    namespace: String,
    scope: String,
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// How one reconcile of a HealthScope ended (`healthscope_reconcile_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// Evaluated (and the status written when it changed).
    Success,
    Error,
}

impl ReconcileResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
        }
    }
}

/// How one status write ended (`healthscope_status_patch_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchResult {
    Success,
    Conflict,
    Error,
    Timeout,
}

impl PatchResult {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchResult::Success => "success",
            PatchResult::Conflict => "conflict",
            PatchResult::Error => "error",
            PatchResult::Timeout => "timeout",
        }
    }
}

/// Workloads of one scope by health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadCounts {
    pub healthy: i64,
    pub unhealthy: i64,
    pub unknown: i64,
}

impl From<&ScopeHealthCondition> for WorkloadCounts {
    fn from(c: &ScopeHealthCondition) -> Self {
        Self {
            healthy: c.healthy_workloads,
            unhealthy: c.unhealthy_workloads,
            unknown: c.unknown_workloads,
        }
    }
}

const HEALTHS: [Health; 3] = [Health::Healthy, Health::Unhealthy, Health::Unknown];

/// The process's metrics: one registry, and one part per subsystem, each of which registered its
/// own families. Clone freely: clones share the series. A part made with `Default` counts into
/// a registry nobody scrapes (a controller or webhook run without `healthscope run`).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub webhook: WebhookMetrics,
    pub controller: ControllerMetrics,
    pub probes: ProbeMetrics,
    pub wiring: WiringMetrics,
    pub process: ProcessMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("healthscope");
        let webhook = WebhookMetrics::register(&mut registry);
        let wiring = WiringMetrics::register(&mut registry);
        let controller = ControllerMetrics::register(&mut registry);
        let probes = ProbeMetrics::register(&mut registry);
        let process = ProcessMetrics::register(&mut registry);
        Self {
            registry: Arc::new(registry),
            webhook,
            controller,
            probes,
            wiring,
            process,
        }
    }

    /// The metrics in OpenMetrics text format (serve with [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would only come from an encoder bug,
        // and an empty scrape is the safe answer to that.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Implements `Default` as "registered nowhere that is scraped".
macro_rules! unscraped_default {
    ($part:ty) => {
        impl Default for $part {
            fn default() -> Self {
                Self::register(&mut Registry::default())
            }
        }
    };
}

/// The admission webhook's requests. One shared allocation: every request clones it.
#[derive(Clone, Debug)]
pub struct WebhookMetrics(Arc<WebhookFamilies>);

#[derive(Debug)]
struct WebhookFamilies {
    requests: Family<WebhookRequestLabels, Counter>,
    duration: Histogram,
    in_flight: Gauge,
    request_bytes: Histogram,
    rejected: Family<ReasonLabels, Counter>,
    lookups_unfinished: Counter,
}

unscraped_default!(WebhookMetrics);

impl WebhookMetrics {
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::<WebhookRequestLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "AdmissionReview requests answered, by operation and HTTP status code",
            requests.clone(),
        );
        let duration = Histogram::new(WEBHOOK_DURATION_BUCKETS);
        registry.register_with_unit(
            "webhook_request_duration",
            "Time from reading an AdmissionReview to writing the response",
            Unit::Seconds,
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "webhook_requests_in_flight",
            "AdmissionReview requests being handled now",
            in_flight.clone(),
        );
        let request_bytes = Histogram::new(WEBHOOK_REQUEST_BYTES_BUCKETS);
        registry.register_with_unit(
            "webhook_request",
            "Size of AdmissionReview request bodies",
            Unit::Bytes,
            request_bytes.clone(),
        );
        let rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "webhook_rejected",
            "Admission requests denied, by reason",
            rejected.clone(),
        );
        let lookups_unfinished = Counter::default();
        registry.register(
            "webhook_lookups_unfinished",
            "Admission requests answered before every object they name was read (live-read budget spent)",
            lookups_unfinished.clone(),
        );
        Self(Arc::new(WebhookFamilies {
            requests,
            duration,
            in_flight,
            request_bytes,
            rejected,
            lookups_unfinished,
        }))
    }

    /// Counts one AdmissionReview request as in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.0.in_flight.inc();
        InFlight {
            gauge: self.0.in_flight.clone(),
        }
    }

    /// Records one answered AdmissionReview: `operation` as in the request (CREATE, UPDATE, ...;
    /// "unknown" when the body could not be read), the HTTP status code, and how long it took.
    pub fn observe_request(
        &self,
        operation: &'static str,
        code: u16,
        duration: Duration,
        bytes: usize,
    ) {
        self.0
            .requests
            .get_or_create(&WebhookRequestLabels { operation, code })
            .inc();
        self.0.duration.observe(duration.as_secs_f64());
        self.0.request_bytes.observe(bytes as f64);
    }

    /// Counts one denied admission. `reason` must come from a small fixed set (it is a label).
    pub fn rejected(&self, reason: &str) {
        self.0
            .rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one admission answered before every object it names was read.
    pub fn lookups_unfinished(&self) {
        self.0.lookups_unfinished.inc();
    }
}

/// The wiring loop's writes.
#[derive(Clone, Debug)]
pub struct WiringMetrics {
    writes: Family<WiringLabels, Counter>,
    plan_duration: Family<PassLabels, Histogram>,
}

unscraped_default!(WiringMetrics);

impl WiringMetrics {
    fn register(registry: &mut Registry) -> Self {
        let writes = Family::<WiringLabels, Counter>::default();
        registry.register(
            "wiring_writes",
            "Writes of the wiring loop, by target (refs: a scope's workloadRefs, labels: a workload's scope labels) and result (success, error)",
            writes.clone(),
        );
        for target in ["refs", "labels"] {
            for result in ["success", "error"] {
                let _ = writes.get_or_create_owned(&WiringLabels { target, result });
            }
        }
        let plan_duration = Family::<PassLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(RECONCILE_DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "wiring_plan_duration",
            "Time the wiring loop spent planning, by pass (changes: what watch events marked; everything: every namespace, at start, on leading, after a relist and each resync)",
            Unit::Seconds,
            plan_duration.clone(),
        );
        for pass in ["changes", "everything"] {
            let _ = plan_duration.get_or_create_owned(&PassLabels { pass });
        }
        Self {
            writes,
            plan_duration,
        }
    }

    /// Times one planning pass; `pass` is "changes" or "everything".
    pub fn observe_plan(&self, pass: &'static str, duration: Duration) {
        self.plan_duration
            .get_or_create(&PassLabels { pass })
            .observe(duration.as_secs_f64());
    }

    /// Counts one write; `target` is "refs" or "labels".
    pub fn write(&self, target: &'static str, success: bool) {
        let result = if success { "success" } else { "error" };
        self.writes
            .get_or_create(&WiringLabels { target, result })
            .inc();
    }
}

/// The status controller: reconciles, status writes, Events, scopes' health and leadership.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    reconcile: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    status_patch: Family<ResultLabels, Counter>,
    events: Family<EventLabels, Counter>,
    workloads: Family<HealthLabels, Gauge>,
    scope_health: Family<ScopeHealthLabels, Gauge>,
    leader: Gauge,
    /// Per-scope workload counts and their sum, so `healthscope_workloads` is the sum over the
    /// scopes that exist now (a deleted scope's workloads drop out of it), kept up to date one
    /// scope at a time.
    scope_counts: Arc<Mutex<ScopeCounts>>,
}

#[derive(Debug, Default)]
struct ScopeCounts {
    by_scope: BTreeMap<(String, String), WorkloadCounts>,
    total: WorkloadCounts,
}

impl ScopeCounts {
    /// Replaces one scope's counts (`None`: the scope is gone) and returns the new total.
    fn set(&mut self, key: (String, String), counts: Option<WorkloadCounts>) -> WorkloadCounts {
        let old = match counts {
            Some(counts) => self.by_scope.insert(key, counts),
            None => self.by_scope.remove(&key),
        };
        let old = old.unwrap_or_default();
        let new = counts.unwrap_or_default();
        self.total = WorkloadCounts {
            healthy: self.total.healthy - old.healthy + new.healthy,
            unhealthy: self.total.unhealthy - old.unhealthy + new.unhealthy,
            unknown: self.total.unknown - old.unknown + new.unknown,
        };
        self.total
    }
}

unscraped_default!(ControllerMetrics);

impl ControllerMetrics {
    fn register(registry: &mut Registry) -> Self {
        let reconcile = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconcile",
            "HealthScope reconciles, by result (success, error)",
            reconcile.clone(),
        );
        let reconcile_duration = Histogram::new(RECONCILE_DURATION_BUCKETS);
        registry.register_with_unit(
            "reconcile_duration",
            "Time one HealthScope reconcile took",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        for result in [ReconcileResult::Success, ReconcileResult::Error] {
            // Present from the start, so rate() works before the first error.
            let _ = reconcile.get_or_create_owned(&ResultLabels {
                result: result.as_str(),
            });
        }
        let status_patch = Family::<ResultLabels, Counter>::default();
        registry.register(
            "status_patch",
            "HealthScope status writes, by result (success, conflict, error, timeout)",
            status_patch.clone(),
        );
        for result in [
            PatchResult::Success,
            PatchResult::Conflict,
            PatchResult::Error,
            PatchResult::Timeout,
        ] {
            let _ = status_patch.get_or_create_owned(&ResultLabels {
                result: result.as_str(),
            });
        }
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "HealthChanged Events recorded on scopes' health transitions, by type (Normal, Warning)",
            events.clone(),
        );
        for type_ in ["Normal", "Warning"] {
            let _ = events.get_or_create_owned(&EventLabels { r#type: type_ });
        }
        let workloads = Family::<HealthLabels, Gauge>::default();
        registry.register(
            "workloads",
            "Workloads in all HealthScopes, by health",
            workloads.clone(),
        );
        for health in HEALTHS {
            let _ = workloads.get_or_create_owned(&HealthLabels {
                health: health.as_str(),
            });
        }
        let scope_health = Family::<ScopeHealthLabels, Gauge>::default();
        registry.register(
            "scope_health",
            "1 for the scope's current health, 0 for the others",
            scope_health.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and writes status",
            leader.clone(),
        );
        Self {
            reconcile,
            reconcile_duration,
            status_patch,
            events,
            workloads,
            scope_health,
            leader,
            scope_counts: Default::default(),
        }
    }

    pub fn observe_reconcile(&self, result: ReconcileResult, duration: Duration) {
        self.reconcile
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    pub fn status_patch(&self, result: PatchResult) {
        self.status_patch
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts one HealthChanged Event recorded; `type_` is "Normal" or "Warning".
    pub fn event(&self, type_: &'static str) {
        self.events
            .get_or_create(&EventLabels { r#type: type_ })
            .inc();
    }

    /// Reconciles so far, whatever their result.
    pub fn reconciles(&self) -> u64 {
        [ReconcileResult::Success, ReconcileResult::Error]
            .into_iter()
            .map(|result| {
                self.reconcile
                    .get_or_create(&ResultLabels {
                        result: result.as_str(),
                    })
                    .get()
            })
            .sum()
    }

    /// Status writes that succeeded so far.
    pub fn status_writes(&self) -> u64 {
        self.status_patch
            .get_or_create(&ResultLabels {
                result: PatchResult::Success.as_str(),
            })
            .get()
    }

    /// Events recorded so far.
    pub fn events(&self) -> u64 {
        ["Normal", "Warning"]
            .into_iter()
            .map(|type_| {
                self.events
                    .get_or_create(&EventLabels { r#type: type_ })
                    .get()
            })
            .sum()
    }

    /// Records a scope's evaluated health and its workloads by health. Call it after every
    /// evaluation; the series follow the latest call.
    pub fn record_scope(
        &self,
        namespace: &str,
        scope: &str,
        health: Health,
        counts: WorkloadCounts,
    ) {
        for h in HEALTHS {
            self.scope_health
                .get_or_create(&ScopeHealthLabels {
                    namespace: namespace.to_string(),
                    scope: scope.to_string(),
                    health: h.as_str(),
                })
                .set(i64::from(h == health));
        }
        let total = self
            .scope_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set((namespace.to_string(), scope.to_string()), Some(counts));
        self.set_workload_totals(total);
    }

    /// Drops every series of a scope that no longer exists (or that this replica stopped
    /// evaluating).
    pub fn forget_scope(&self, namespace: &str, scope: &str) {
        for h in HEALTHS {
            self.scope_health.remove(&ScopeHealthLabels {
                namespace: namespace.to_string(),
                scope: scope.to_string(),
                health: h.as_str(),
            });
        }
        let total = self
            .scope_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set((namespace.to_string(), scope.to_string()), None);
        self.set_workload_totals(total);
    }

    fn set_workload_totals(&self, total: WorkloadCounts) {
        for (health, value) in [
            (Health::Healthy, total.healthy),
            (Health::Unhealthy, total.unhealthy),
            (Health::Unknown, total.unknown),
        ] {
            self.workloads
                .get_or_create(&HealthLabels {
                    health: health.as_str(),
                })
                .set(value);
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }
}

/// The HTTP probes.
#[derive(Clone, Debug)]
pub struct ProbeMetrics {
    success: Family<ProbeScopeLabels, Gauge>,
    duration: Histogram,
}

unscraped_default!(ProbeMetrics);

impl ProbeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let success = Family::<ProbeScopeLabels, Gauge>::default();
        registry.register(
            "probe_success",
            "1 if every HTTP probe of the scope's last cycle succeeded, else 0",
            success.clone(),
        );
        let duration = Histogram::new(PROBE_DURATION_BUCKETS);
        registry.register_with_unit(
            "probe_duration",
            "Time one HTTP probe of one endpoint took",
            Unit::Seconds,
            duration.clone(),
        );
        Self { success, duration }
    }

    /// Records how long one HTTP probe of one endpoint took.
    pub fn observe_duration(&self, duration: Duration) {
        self.duration.observe(duration.as_secs_f64());
    }

    /// Records whether every probe of the scope's last cycle succeeded.
    pub fn set_success(&self, namespace: &str, scope: &str, success: bool) {
        self.success
            .get_or_create(&ProbeScopeLabels {
                namespace: namespace.to_string(),
                scope: scope.to_string(),
            })
            .set(i64::from(success));
    }

    /// Drops the series of a scope that no longer exists.
    pub fn forget_scope(&self, namespace: &str, scope: &str) {
        self.success.remove(&ProbeScopeLabels {
            namespace: namespace.to_string(),
            scope: scope.to_string(),
        });
    }
}

/// Every probe's duration, as the prober reports it.
impl crate::prober::ProbeObserver for ProbeMetrics {
    fn observe(&self, _target: &crate::prober::ProbeTarget, outcome: &crate::prober::ProbeOutcome) {
        self.observe_duration(outcome.duration);
    }
}

/// The process: its version, the served CRD and the serving certificate.
#[derive(Clone, Debug)]
pub struct ProcessMetrics {
    crd_compatible: Gauge,
    cert_expiry: Gauge,
}

unscraped_default!(ProcessMetrics);

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let crd_compatible = Gauge::default();
        registry.register(
            "crd_compatible",
            "1 while the served HealthScope CRD is one healthscope can write to; 0 pauses its writes",
            crd_compatible.clone(),
        );
        registry.register(
            "build",
            "Version of the running healthscope",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let cert_expiry = Gauge::default();
        registry.register_with_unit(
            "cert_expiry_timestamp",
            "When the webhook's serving certificate expires (Unix time), 0 if none is loaded",
            Unit::Seconds,
            cert_expiry.clone(),
        );
        Self {
            crd_compatible,
            cert_expiry,
        }
    }

    pub fn set_crd_compatible(&self, compatible: bool) {
        self.crd_compatible.set(i64::from(compatible));
    }

    /// Records when the serving certificate just loaded expires.
    pub fn set_cert_expiry(&self, not_after: SystemTime) {
        let seconds = not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.cert_expiry.set(seconds);
    }
}

/// Keeps one request counted in `healthscope_webhook_requests_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlight {
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series` (name plus labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    fn exercise_everything(m: &Metrics) {
        let _guard = m.webhook.in_flight();
        m.webhook
            .observe_request("CREATE", 200, Duration::from_millis(2), 2048);
        m.webhook.rejected("invalid_probe_endpoint");
        m.controller
            .observe_reconcile(ReconcileResult::Success, Duration::from_millis(3));
        m.controller.status_patch(PatchResult::Timeout);
        m.wiring
            .observe_plan("everything", Duration::from_millis(40));
        m.controller.event("Warning");
        m.probes.observe_duration(Duration::from_millis(7));
        m.probes.set_success("default", "example", true);
        m.controller.record_scope(
            "default",
            "example",
            Health::Healthy,
            WorkloadCounts::default(),
        );
        m.controller.set_leader(true);
        m.process
            .set_cert_expiry(UNIX_EPOCH + Duration::from_secs(1_900_000_000));
    }

    #[test]
    fn encode_contains_every_family_name() {
        let m = Metrics::new();
        exercise_everything(&m);
        let text = m.encode();
        for name in METRIC_NAMES {
            assert!(
                text.lines()
                    .any(|l| !l.starts_with('#') && l.starts_with(name)),
                "no sample of {name} in:\n{text}"
            );
        }
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
    }

    #[test]
    fn result_counters_start_at_zero_for_every_result() {
        let text = Metrics::new().encode();
        for result in ["success", "error"] {
            let series = format!("healthscope_reconcile_total{{result=\"{result}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for result in ["success", "conflict", "error", "timeout"] {
            let series = format!("healthscope_status_patch_total{{result=\"{result}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
    }

    #[test]
    fn webhook_duration_buckets_align_with_the_api_server() {
        for boundary in [0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0] {
            assert!(WEBHOOK_DURATION_BUCKETS.contains(&boundary), "{boundary}");
        }
        let m = Metrics::new();
        m.webhook
            .observe_request("CREATE", 200, Duration::from_millis(4), 100);
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "healthscope_webhook_request_duration_seconds_bucket{le=\"0.005\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "healthscope_webhook_requests_total{operation=\"CREATE\",code=\"200\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn in_flight_gauge_follows_the_guard() {
        let m = Metrics::new();
        let a = m.webhook.in_flight();
        let b = m.webhook.in_flight();
        assert_eq!(
            sample(&m.encode(), "healthscope_webhook_requests_in_flight"),
            Some(2.0)
        );
        drop(a);
        drop(b);
        assert_eq!(
            sample(&m.encode(), "healthscope_webhook_requests_in_flight"),
            Some(0.0)
        );
    }

    #[test]
    fn scope_health_marks_only_the_current_health() {
        let m = Metrics::new();
        m.controller
            .record_scope("ns", "s", Health::Healthy, WorkloadCounts::default());
        m.controller
            .record_scope("ns", "s", Health::Unhealthy, WorkloadCounts::default());
        let text = m.encode();
        let series = |h: &str| {
            sample(
                &text,
                &format!("healthscope_scope_health{{namespace=\"ns\",scope=\"s\",health=\"{h}\"}}"),
            )
        };
        assert_eq!(series("healthy"), Some(0.0));
        assert_eq!(series("unhealthy"), Some(1.0));
        assert_eq!(series("unknown"), Some(0.0));
    }

    #[test]
    fn workloads_sum_over_existing_scopes_and_forget_drops_a_scope() {
        let m = Metrics::new();
        let counts = |healthy, unhealthy, unknown| WorkloadCounts {
            healthy,
            unhealthy,
            unknown,
        };
        m.controller
            .record_scope("a", "one", Health::Unhealthy, counts(2, 1, 0));
        m.controller
            .record_scope("b", "two", Health::Unknown, counts(1, 0, 3));
        m.probes.set_success("a", "one", false);
        let text = m.encode();
        assert_eq!(
            sample(&text, "healthscope_workloads{health=\"healthy\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "healthscope_workloads{health=\"unhealthy\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "healthscope_workloads{health=\"unknown\"}"),
            Some(3.0)
        );

        // A scope judged again replaces its counts.
        m.controller
            .record_scope("a", "one", Health::Unhealthy, counts(2, 1, 0));
        assert_eq!(
            sample(&m.encode(), "healthscope_workloads{health=\"healthy\"}"),
            Some(3.0)
        );

        m.controller.forget_scope("a", "one");
        m.probes.forget_scope("a", "one");
        let text = m.encode();
        assert_eq!(
            sample(&text, "healthscope_workloads{health=\"healthy\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "healthscope_workloads{health=\"unhealthy\"}"),
            Some(0.0)
        );
        assert!(!text.contains("scope=\"one\""), "{text}");
    }

    #[test]
    fn status_patch_timeout_counts_once_by_result() {
        let m = Metrics::new();
        m.controller.status_patch(PatchResult::Timeout);
        m.wiring
            .observe_plan("everything", Duration::from_millis(40));
        m.controller.status_patch(PatchResult::Success);
        let text = m.encode();
        assert!(!text.contains("status_patch_timeouts"), "{text}");
        assert_eq!(m.controller.status_writes(), 1);
        assert_eq!(
            sample(&text, "healthscope_status_patch_total{result=\"timeout\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn parts_made_alone_count_without_being_scraped() {
        let controller = ControllerMetrics::default();
        controller.event("Normal");
        controller.observe_reconcile(ReconcileResult::Error, Duration::from_millis(1));
        assert_eq!((controller.events(), controller.reconciles()), (1, 1));
        let m = Metrics::new();
        assert_eq!(
            sample(&m.encode(), "healthscope_events_total{type=\"Normal\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn build_info_and_cert_expiry() {
        let m = Metrics::new();
        m.process
            .set_cert_expiry(UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        let text = m.encode();
        assert!(text.contains(&format!(
            "healthscope_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert_eq!(
            sample(&text, "healthscope_cert_expiry_timestamp_seconds"),
            Some(1_900_000_000.0)
        );
    }
}
