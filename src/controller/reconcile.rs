//! One scope's reconcile: evaluate its workloads from the caches, fold in the latest probe
//! outcome, write the status only when it changed, record an event on a health transition,
//! and come back after the probe interval.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use super::cache::{DependencyIndex, WorkloadCaches};
use super::evaluate::{self, CacheLookup, Evaluated};
use super::events;
use super::probes::{ProbePlan, Probes};
use super::wiring::{ChangedObjects, UnresolvedMembers};
use crate::api::probe::ProbeSettings;
use crate::api::{Health, HealthScope, HealthScopeStatus, WorkloadReference};
use crate::health::{ProbeResult, ScopeStatusInput, scope_status};
use crate::leader::LeaderState;
use crate::metrics::{
    ControllerMetrics, PatchResult, ProbeMetrics, ReconcileResult, WorkloadCounts,
};
use crate::prober::ProbeOutcome;

/// The field manager of every status write.
pub const STATUS_FIELD_MANAGER: &str = "healthscope-controller";
/// The reason of the event recorded when a scope's health changes.
pub const HEALTH_CHANGED: &str = "HealthChanged";
/// Per-scope retry delays after a failed reconcile: 5 ms doubling up to 5 min.
const BACKOFF_BASE: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Recording an event gives up after this long: it must never hold up a reconcile.
const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A status write that takes longer than this is abandoned and retried.
const STATUS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("writing the status of HealthScope {scope}: {source}")]
    WriteStatus {
        scope: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of HealthScope {scope}: no answer within {timeout:?}")]
    WriteTimeout { scope: String, timeout: Duration },
}

/// A status this replica wrote and the resourceVersion of the object it was based on.
type Written = (Option<String>, HealthScopeStatus);

/// Everything a reconcile needs; shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub scopes: Store<HealthScope>,
    pub caches: WorkloadCaches,
    pub index: DependencyIndex,
    pub probes: Probes,
    pub leader: LeaderState,
    pub recorder: Recorder,
    pub min_probe_interval: Duration,
    /// HTTP methods probes may use.
    pub probe_methods: Vec<String>,
    pub metrics: ControllerMetrics,
    pub probe_metrics: ProbeMetrics,
    /// Pinged when a scope is new or its spec changed, so the wiring loop plans its namespace.
    pub scope_changed: Option<ChangedObjects>,
    /// Why AppConfigs naming a scope add no member, as the wiring loop found.
    pub unresolved: UnresolvedMembers,
    /// The generation each scope had when last seen.
    generations: Mutex<HashMap<ObjectRef<HealthScope>, Option<i64>>>,
    /// The last status written per scope, with the resourceVersion it was based on, so a write
    /// is not repeated while the cache has not caught up with it.
    written: Mutex<HashMap<ObjectRef<HealthScope>, Written>>,
    /// The health a scope had before a status write that failed, so a write that landed
    /// although its answer was lost still gets its HealthChanged event.
    unconfirmed: Mutex<HashMap<ObjectRef<HealthScope>, Option<Health>>>,
    failures: Mutex<HashMap<ObjectRef<HealthScope>, u32>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        scopes: Store<HealthScope>,
        caches: WorkloadCaches,
        index: DependencyIndex,
        probes: Probes,
        leader: LeaderState,
        recorder: Recorder,
        min_probe_interval: Duration,
        probe_methods: Vec<String>,
        metrics: ControllerMetrics,
        probe_metrics: ProbeMetrics,
        scope_changed: Option<ChangedObjects>,
        unresolved: UnresolvedMembers,
    ) -> Self {
        Self {
            client,
            scopes,
            caches,
            index,
            probes,
            leader,
            recorder,
            min_probe_interval,
            probe_methods,
            metrics,
            probe_metrics,
            scope_changed,
            unresolved,
            generations: Default::default(),
            written: Default::default(),
            unconfirmed: Default::default(),
            failures: Default::default(),
        }
    }
}

impl Context {
    /// The kinds without a built-in cache that some scope names now.
    pub fn kinds_in_use(&self) -> std::collections::HashSet<kube::api::GroupVersionKind> {
        self.scopes
            .state()
            .iter()
            .flat_map(|scope| {
                scope
                    .spec
                    .workload_refs
                    .iter()
                    .filter_map(evaluate::extra_kind)
            })
            .collect()
    }

    /// The status last written for the scope while the cache still shows the version that write
    /// was based on (it has not come back through the watch yet). Once the cache has moved on,
    /// the cached status is the truth and the copy is dropped, so copies are kept only for
    /// writes in flight, not for every scope.
    fn unconfirmed_write(
        &self,
        key: &ObjectRef<HealthScope>,
        version: &Option<String>,
    ) -> Option<HealthScopeStatus> {
        let mut written = self.written.lock().ok()?;
        match written.get(key) {
            Some((based_on, status)) if based_on == version => Some(status.clone()),
            Some(_) => {
                written.remove(key);
                None
            }
            None => None,
        }
    }

    /// Drops what is kept for scopes that no longer exist: their probe task, dependency index
    /// entries, metric series and memos. Reconciles never run for a deleted scope, so this is
    /// called periodically.
    pub fn forget_deleted_scopes(&self) {
        let known: Vec<ObjectRef<HealthScope>> = self
            .generations
            .lock()
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default();
        for key in known {
            if self.scopes.get(&key).is_some() {
                continue;
            }
            tracing::debug!(scope = %key, "forgetting a deleted scope");
            self.probes.stop(&key);
            self.index.remove(&key);
            let namespace = key.namespace.as_deref().unwrap_or_default();
            self.metrics.forget_scope(namespace, &key.name);
            self.probe_metrics.forget_scope(namespace, &key.name);
            if let Ok(mut generations) = self.generations.lock() {
                generations.remove(&key);
            }
            if let Ok(mut unconfirmed) = self.unconfirmed.lock() {
                unconfirmed.remove(&key);
            }
            if let Ok(mut written) = self.written.lock() {
                written.remove(&key);
            }
            if let Ok(mut failures) = self.failures.lock() {
                failures.remove(&key);
            }
        }
    }
}

/// The scope's probe settings as validation defines them (one decision for the webhook and the
/// controller), with the interval raised to the controller's floor and the timeout kept below it.
pub fn probe_settings(scope: &HealthScope, floor: Duration) -> ProbeSettings {
    let mut settings = scope.spec.effective_probe_settings();
    settings.interval = settings.interval.max(floor).max(Duration::from_millis(100));
    settings.timeout = settings.timeout.min(settings.interval);
    settings
}

#[tracing::instrument(name = "reconcile", skip_all, fields(scope = %ObjectRef::from_obj(scope.as_ref())))]
pub async fn reconcile(
    scope: Arc<HealthScope>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = evaluate_and_write(&scope, &ctx).await;
    let outcome = match &result {
        // Every reconcile that evaluated and wrote asks to come back at the probe interval:
        // counted as what it is, a success.
        Ok(_) => ReconcileResult::Success,
        Err(_) => ReconcileResult::Error,
    };
    ctx.metrics.observe_reconcile(outcome, started.elapsed());
    tracing::debug!(scope = %ObjectRef::from_obj(&*scope), took = ?started.elapsed(), ok = result.is_ok(), "reconciled");
    result
}

async fn evaluate_and_write(scope: &HealthScope, ctx: &Context) -> Result<Action, ReconcileError> {
    let key = ObjectRef::from_obj(scope);
    let settings = probe_settings(scope, ctx.min_probe_interval);
    let interval = settings.interval;
    notice_spec_change(ctx, &key, scope);
    // Standbys keep their caches warm but neither probe nor write.
    if !ctx.leader.is_leader() {
        ctx.probes.stop(&key);
        return Ok(Action::requeue(interval));
    }
    let namespace = scope.namespace().unwrap_or_default();

    let mut refs: Vec<WorkloadReference> = Vec::new();
    let mut seen = BTreeSet::new();
    for wref in &scope.spec.workload_refs {
        if seen.insert(wref.key()) {
            refs.push(wref.clone());
        }
    }
    let lookup = CacheLookup::for_refs(&ctx.caches, &refs).await;
    let evaluated: Vec<(WorkloadReference, Evaluated)> = refs
        .into_iter()
        .map(|wref| {
            let outcome = evaluate::evaluate(&namespace, &wref, &lookup);
            (wref, outcome)
        })
        .collect();
    ctx.index.set(&key, lookup.into_dependencies());

    let plan = probe_plan(&settings, &evaluated);
    let probes = match plan {
        Some(plan) if !ctx.probe_methods.contains(&plan.method) => {
            ctx.probes.stop(&key);
            Arc::new(refused_probes(&plan, &ctx.probe_methods))
        }
        Some(plan) => ctx.probes.ensure(&key, plan).unwrap_or_default(),
        None => {
            ctx.probes.stop(&key);
            Arc::default()
        }
    };
    // The status as last written: ours, when the cache has not caught up with our last write
    // yet, so a transition time stamped then is kept rather than stamped again.
    let version = scope.resource_version();
    let previous = ctx
        .unconfirmed_write(&key, &version)
        .or_else(|| scope.status.clone());
    let desired = scope_status(ScopeStatusInput {
        generation: scope.meta().generation,
        workloads: evaluated.into_iter().map(|(_, e)| e.condition).collect(),
        probes: &probes,
        previous: previous.as_ref(),
        now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        unresolved: &ctx.unresolved.get(&key),
    });
    if let (Some(health), Some(counts)) = (desired.health, desired.scope_health_condition.as_ref())
    {
        ctx.metrics
            .record_scope(&namespace, &key.name, health, WorkloadCounts::from(counts));
    }
    write_if_changed(ctx, scope, &key, desired).await?;
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&key);
    }
    Ok(Action::requeue(interval))
}

/// Marks the scope for the wiring loop when it appears or its spec changes.
fn notice_spec_change(ctx: &Context, key: &ObjectRef<HealthScope>, scope: &HealthScope) {
    let generation = scope.meta().generation;
    let changed = ctx
        .generations
        .lock()
        .map(|mut seen| seen.insert(key.clone(), generation) != Some(generation))
        .unwrap_or(false);
    if changed && let Some(wiring) = &ctx.scope_changed {
        wiring.mark(scope, &());
    }
}

/// The outcome of a probe plan whose method this controller does not send: every endpoint
/// failed, saying why, so the scope's owner sees it in the status rather than a silent skip.
fn refused_probes(plan: &ProbePlan, allowed: &[String]) -> Vec<ProbeResult> {
    let reason = format!(
        "not sent: probe-method {} is not enabled on this controller (it sends {}; an operator \
         may allow more with --probe-methods)",
        plan.method,
        allowed.join(", ")
    );
    plan.targets
        .iter()
        .map(|(workload, addresses)| ProbeResult {
            workload: workload.clone(),
            outcomes: addresses
                .iter()
                .map(|_| ProbeOutcome {
                    ok: false,
                    reason: reason.clone(),
                    duration: Duration::ZERO,
                })
                .collect(),
        })
        .collect()
}

/// What to probe for this scope: nothing without a probe-endpoint; otherwise every ready
/// endpoint of the scope's Services (direct, or a ContainerizedWorkload's child).
fn probe_plan(
    settings: &ProbeSettings,
    evaluated: &[(WorkloadReference, Evaluated)],
) -> Option<ProbePlan> {
    let path = settings.endpoint.clone()?;
    let targets: BTreeMap<WorkloadReference, Vec<std::net::SocketAddr>> = evaluated
        .iter()
        .filter(|(_, e)| !e.probe_addresses.is_empty())
        .map(|(wref, e)| (wref.clone(), e.probe_addresses.clone()))
        .collect();
    if targets.is_empty() {
        return None;
    }
    Some(ProbePlan {
        method: settings.method.clone(),
        path,
        timeout: settings.timeout,
        interval: settings.interval,
        targets,
    })
}

async fn write_if_changed(
    ctx: &Context,
    scope: &HealthScope,
    key: &ObjectRef<HealthScope>,
    desired: HealthScopeStatus,
) -> Result<(), ReconcileError> {
    let current = scope.status.as_ref();
    let name = scope.name_any();
    let namespace = scope.namespace().unwrap_or_default();
    let scope_name = format!("{namespace}/{name}");
    // A write whose answer was lost may have landed: announce its transition first.
    if let Some(current) = current {
        let pending = ctx
            .unconfirmed
            .lock()
            .ok()
            .and_then(|mut unconfirmed| unconfirmed.remove(key))
            .filter(|from| *from != current.health);
        if let Some(from) = pending {
            announce(ctx, scope, &scope_name, from, current).await;
        }
    }
    if current == Some(&desired) {
        return Ok(());
    }
    let version = scope.resource_version();
    let previous = match ctx.unconfirmed_write(key, &version) {
        // Our last write has not reached the cache yet: it already says this.
        Some(status) if status == desired => return Ok(()),
        Some(status) => Some(status),
        None => current.cloned(),
    };
    // A scope that was never evaluated with members (new, or only momentarily empty) has no
    // health to change from: its first real verdict is no transition.
    let previous_health = previous
        .as_ref()
        .filter(|s| {
            s.scope_health_condition
                .as_ref()
                .is_some_and(|c| c.total > 0)
        })
        .and_then(|s| s.health);

    let api: Api<HealthScope> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": "core.oam.dev/v1alpha2",
        "kind": "HealthScope",
        "metadata": { "name": name, "namespace": namespace },
        "status": desired,
    });
    let params = PatchParams::apply(STATUS_FIELD_MANAGER).force();
    let outcome = tokio::time::timeout(
        STATUS_WRITE_TIMEOUT,
        api.patch_status(&name, &params, &Patch::Apply(&body)),
    )
    .await;
    ctx.metrics.status_patch(match &outcome {
        Err(_) => PatchResult::Timeout,
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => PatchResult::Conflict,
        Ok(Err(_)) => PatchResult::Error,
        Ok(Ok(_)) => PatchResult::Success,
    });
    let failure = match outcome {
        Err(_) => Some(ReconcileError::WriteTimeout {
            scope: scope_name.clone(),
            timeout: STATUS_WRITE_TIMEOUT,
        }),
        Ok(Err(source)) => Some(ReconcileError::WriteStatus {
            scope: scope_name.clone(),
            source,
        }),
        Ok(Ok(_)) => None,
    };
    if let Some(failure) = failure {
        // The write may still have landed; remember the health before it.
        if let Ok(mut unconfirmed) = ctx.unconfirmed.lock() {
            unconfirmed.entry(key.clone()).or_insert(previous_health);
        }
        return Err(failure);
    }
    tracing::info!(
        scope = %scope_name,
        health = %desired.health.unwrap_or_default(),
        healthy = desired.healthy_of_total.as_deref().unwrap_or_default(),
        "status written"
    );
    if let Ok(mut written) = ctx.written.lock() {
        written.insert(key.clone(), (version, desired.clone()));
    }
    if let Ok(mut unconfirmed) = ctx.unconfirmed.lock() {
        unconfirmed.remove(key);
    }
    announce(ctx, scope, &scope_name, previous_health, &desired).await;
    Ok(())
}

/// Records the HealthChanged event for a transition from `from` to the written status (none
/// when the health did not change).
async fn announce(
    ctx: &Context,
    scope: &HealthScope,
    scope_name: &str,
    from: Option<Health>,
    desired: &HealthScopeStatus,
) {
    let Some(note) = from.and_then(|from| events::transition_note(from, desired)) else {
        return;
    };
    let event = Event {
        type_: if desired.health == Some(Health::Healthy) {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: HEALTH_CHANGED.to_string(),
        action: events::transition_action(desired.health.unwrap_or_default(), &note),
        note: Some(note),
        secondary: None,
    };
    // An event is best effort: failing to record it must not fail the status.
    let reference = scope.object_ref(&());
    let publish = tokio::time::timeout(EVENT_TIMEOUT, ctx.recorder.publish(&event, &reference));
    match publish
        .await
        .unwrap_or_else(|_| Err(kube::Error::Service("timed out".into())))
    {
        Ok(()) => ctx.metrics.event(match event.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }),
        Err(error) => {
            tracing::warn!(scope = %scope_name, %error, "could not record the health event")
        }
    }
}

/// Retries a failed scope with exponential backoff (5 ms doubling to 5 min), so API errors
/// (409, 429, 5xx) never make a hot loop.
pub fn error_policy(scope: Arc<HealthScope>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*scope);
    let attempts = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = backoff(attempts);
    tracing::warn!(scope = %key, %error, attempts, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub fn backoff(attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(31));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::HealthScopeSpec;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(5), Duration::from_millis(80));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn probe_settings_follow_validation_with_a_floor() {
        let mut scope = HealthScope::new("s", HealthScopeSpec::default());
        let floor = Duration::from_secs(1);
        let defaults = probe_settings(&scope, floor);
        assert_eq!(defaults.interval, Duration::from_secs(10));
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        assert_eq!(defaults.endpoint, None, "no probe-endpoint: no HTTP probe");
        // Invalid values (a scope from before the webhook) fall back to the defaults.
        scope.spec.probe_interval = Some(0);
        assert_eq!(
            probe_settings(&scope, floor).interval,
            Duration::from_secs(10)
        );
        // The controller's floor wins over a shorter interval, and the timeout stays below it.
        scope.spec.probe_interval = Some(2);
        scope.spec.probe_timeout = Some(1);
        let floored = probe_settings(&scope, Duration::from_secs(5));
        assert_eq!(floored.interval, Duration::from_secs(5));
        assert_eq!(floored.timeout, Duration::from_secs(1));
        scope.spec.probe_endpoint = Some("/health".into());
        scope.spec.probe_method = Some("HEAD".into());
        let probed = probe_settings(&scope, floor);
        assert_eq!(probed.endpoint.as_deref(), Some("/health"));
        assert_eq!(probed.method, "HEAD");
    }
}
