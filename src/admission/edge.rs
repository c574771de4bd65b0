//! The async edge of admission: HTTP routes over the pure handlers, and live reads for snapshot
//! misses. Admission writes nothing (`sideEffects: None`): the controller wires scopes from the
//! objects the API server stored.
//!
//! Snapshot misses: a freshly created object can reach the webhook before the watch cache has
//! it (a Component applied just before its AppConfig, a ContainerizedWorkload just before the
//! Deployment it owns). A handler is run against the cache; every object it asked for and did
//! not find is read live once (GET), and the handler runs again with those answers. At most
//! [`MAX_LOOKUP_ROUNDS`] rounds.
//!
//! Live reads are bounded: at most [`MAX_LIVE_READS`] objects and [`LIVE_READ_BUDGET`] per
//! request, well under the webhook's `timeoutSeconds`. An object found absent is remembered as
//! absent for [`MISS_MEMORY`], and taken as absent without a read only by a request that misses
//! more than its budget could read, so a burst of requests naming thousands of missing objects
//! does not read them again. When the budget runs out the request is answered with what is known, a warning saying so, a log line
//! naming the object and `healthscope_webhook_lookups_unfinished_total`. Nothing is lost by it:
//! admission only validates and warns (and labels workloads, which the wiring loop also does).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use futures::future::join_all;
use kube::Client;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::appconfig;
use super::{
    APPLICATION_CONFIGURATION_PATH, APPLICATION_CONFIGURATION_VALIDATE_PATH, HEALTH_RULE_PATH,
    HEALTH_SCOPE_PATH, OamKind, ObjectKey, Overlay, Recording, Snapshot, WORKLOAD_PATH, healthrule,
    healthscope, object_name, with_warnings, workload,
};
use crate::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use crate::metrics::Metrics;
use crate::webhook::{AdmissionReviewRequest, review_response};

/// Most rounds of live reads for one request: enough for the longest chain, a
/// ContainerizedWorkload's child (parent, then its ApplicationConfiguration, then Components).
pub const MAX_LOOKUP_ROUNDS: usize = 3;
/// Most objects read live for one request.
pub const MAX_LIVE_READS: usize = 8;
/// Longest time one request spends on live reads, all rounds together.
pub const LIVE_READ_BUDGET: Duration = Duration::from_millis(1000);
/// How long an object read live and found absent is taken as absent without asking again.
pub const MISS_MEMORY: Duration = Duration::from_secs(5);
/// Most absent objects remembered at once; the oldest are forgotten first.
const MISS_MEMORY_ENTRIES: usize = 4096;

/// What the admission routes need: the cache, a client for live reads, the objects recently
/// found absent, and optionally the metrics to record requests in.
#[derive(Clone)]
pub struct AdmissionState {
    pub snapshot: Arc<dyn Snapshot>,
    pub client: Client,
    pub metrics: Option<Metrics>,
    absent: Arc<Mutex<HashMap<ObjectKey, Instant>>>,
}

impl AdmissionState {
    pub fn new(snapshot: Arc<dyn Snapshot>, client: Client) -> Self {
        Self {
            snapshot,
            client,
            metrics: None,
            absent: Arc::default(),
        }
    }

    /// Takes the keys remembered as absent out of `keys` and records them in `overlay`.
    fn recall_absent(&self, keys: &mut BTreeSet<ObjectKey>, overlay: &mut Overlay) {
        let Ok(absent) = self.absent.lock() else {
            return;
        };
        keys.retain(|key| {
            let known = absent.get(key).is_some_and(|at| at.elapsed() < MISS_MEMORY);
            if known {
                overlay.record_absent(key);
            }
            !known
        });
    }

    fn remember_absent(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        let Ok(mut absent) = self.absent.lock() else {
            return;
        };
        let now = Instant::now();
        absent.extend(keys.into_iter().map(|key| (key, now)));
        if absent.len() > MISS_MEMORY_ENTRIES {
            absent.retain(|_, at| at.elapsed() < MISS_MEMORY);
        }
        if absent.len() > MISS_MEMORY_ENTRIES {
            let mut ages: Vec<Instant> = absent.values().copied().collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() - MISS_MEMORY_ENTRIES];
            absent.retain(|_, at| *at >= cutoff);
        }
    }

    /// Records every admission request in `metrics`: healthscope_webhook_requests_total,
    /// _request_duration_seconds, _requests_in_flight, _request_bytes and _rejected_total.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// Why a request was denied, as the `reason` label of healthscope_webhook_rejected_total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// A HealthScope with invalid probe settings.
    InvalidHealthScope,
    /// A HealthRule whose expressions do not compile.
    InvalidHealthRule,
    /// An ApplicationConfiguration with malformed scope references (or unreadable).
    InvalidApplicationConfiguration,
    /// Any other denial: no object, wrong kind for the route, unreadable workload.
    InvalidRequest,
    /// The body was not an AdmissionReview (HTTP 400/413).
    BadReview,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidHealthScope => "invalid_healthscope",
            RejectReason::InvalidHealthRule => "invalid_healthrule",
            RejectReason::InvalidApplicationConfiguration => "invalid_appconfig",
            RejectReason::InvalidRequest => "invalid_request",
            RejectReason::BadReview => "bad_review",
        }
    }
}

/// What a route tells the metrics layer about the request it answered.
#[derive(Clone, Debug)]
struct Answered {
    operation: &'static str,
    rejected: Option<RejectReason>,
}

fn operation_label(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// The AdmissionReview response, tagged for the metrics layer.
fn answer(
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
    reason_if_denied: RejectReason,
) -> Response {
    let rejected = (!response.allowed).then_some(reason_if_denied);
    log_decision(request, &response);
    let mut http = review_response(response);
    http.extensions_mut().insert(Answered {
        operation: operation_label(&request.operation),
        rejected,
    });
    http
}

async fn record_metrics(
    State(metrics): State<Metrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let _in_flight = metrics.webhook_in_flight();
    let started = std::time::Instant::now();
    let bytes = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let response = next.run(request).await;
    let answered = response.extensions().get::<Answered>().cloned();
    let operation = answered.as_ref().map_or("unknown", |a| a.operation);
    let rejected = match &answered {
        Some(a) => a.rejected,
        None if !response.status().is_success() => Some(RejectReason::BadReview),
        None => None,
    };
    if let Some(reason) = rejected {
        metrics.webhook_rejected(reason.as_str());
    }
    metrics.observe_webhook_request(
        operation,
        response.status().as_u16(),
        started.elapsed(),
        bytes,
    );
    response
}

/// The admission routes: POST [`APPLICATION_CONFIGURATION_PATH`],
/// [`APPLICATION_CONFIGURATION_VALIDATE_PATH`], [`WORKLOAD_PATH`], [`HEALTH_SCOPE_PATH`] and
/// [`HEALTH_RULE_PATH`], each taking and answering an admission/v1 AdmissionReview. Bodies are
/// read by [`crate::webhook::AdmissionReviewRequest`]: one that is not an AdmissionReview gets
/// HTTP 400 with the reason. Serve it with [`crate::webhook::serve`] (TLS, body limits).
pub fn router(state: AdmissionState) -> axum::Router {
    let metrics = state.metrics.clone();
    let router = axum::Router::new()
        .route(APPLICATION_CONFIGURATION_PATH, post(appconfig_route))
        .route(
            APPLICATION_CONFIGURATION_VALIDATE_PATH,
            post(appconfig_route),
        )
        .route(WORKLOAD_PATH, post(workload_route))
        .route(HEALTH_SCOPE_PATH, post(healthscope_route))
        .route(HEALTH_RULE_PATH, post(healthrule_route))
        .with_state(state);
    match metrics {
        Some(metrics) => router.layer(axum::middleware::from_fn_with_state(
            metrics,
            record_metrics,
        )),
        None => router,
    }
}

async fn healthscope_route(AdmissionReviewRequest(request): AdmissionReviewRequest) -> Response {
    let response = healthscope::review(&request);
    answer(&request, response, RejectReason::InvalidHealthScope)
}

async fn healthrule_route(AdmissionReviewRequest(request): AdmissionReviewRequest) -> Response {
    let response = healthrule::review(&request);
    answer(&request, response, RejectReason::InvalidHealthRule)
}

async fn workload_route(
    State(state): State<AdmissionState>,
    AdmissionReviewRequest(request): AdmissionReviewRequest,
) -> Response {
    let read = with_live_reads(&state, |snapshot| workload::review(&request, snapshot)).await;
    let response = settle_unread(&state, &request, read);
    answer(&request, response, RejectReason::InvalidRequest)
}

/// Both ApplicationConfiguration paths answer the same decision, without a patch: the
/// mutating path stays for webhook configurations of earlier versions.
async fn appconfig_route(
    State(state): State<AdmissionState>,
    AdmissionReviewRequest(request): AdmissionReviewRequest,
) -> Response {
    let read = with_live_reads(&state, |snapshot| appconfig::review(&request, snapshot)).await;
    let response = settle_unread(&state, &request, read);
    answer(
        &request,
        response,
        RejectReason::InvalidApplicationConfiguration,
    )
}

fn log_decision(request: &AdmissionRequest<DynamicObject>, response: &AdmissionResponse) {
    tracing::debug!(
        uid = %request.uid,
        kind = %request.kind.kind,
        object = %object_name(request),
        operation = ?request.operation,
        dry_run = request.dry_run,
        allowed = response.allowed,
        patched = response.patch.is_some(),
        reason = %response.result.message,
        "admission decision"
    );
}

/// A decision, and how many objects it asked for that could not be read within the budget.
pub struct LiveRead<T> {
    pub outcome: T,
    pub unread: usize,
}

/// Runs a pure decision against the cache, reading live whatever it missed (see the module
/// documentation), and returns the final decision.
pub async fn with_live_reads<T>(
    state: &AdmissionState,
    decide: impl Fn(&dyn Snapshot) -> T,
) -> LiveRead<T> {
    let deadline = Instant::now() + LIVE_READ_BUDGET;
    let mut reads_left = MAX_LIVE_READS;
    let mut overlay = Overlay::default();
    for _ in 0..MAX_LOOKUP_ROUNDS {
        let mut misses = {
            let recording = Recording::new(&*state.snapshot, &overlay);
            let outcome = decide(&recording);
            let misses = recording.misses();
            if misses.is_empty() {
                return LiveRead { outcome, unread: 0 };
            }
            misses
        };
        // Remembered absences stand in only for more reads than the budget has left: a
        // request that can read what it misses reads it fresh (an AppConfig created a moment
        // ago must not be taken as absent).
        if misses.len() > reads_left {
            state.recall_absent(&mut misses, &mut overlay);
        }
        let now = Instant::now();
        if misses.len() > reads_left || now >= deadline {
            break;
        }
        reads_left -= misses.len();
        let absent = read_live(&state.client, misses, &mut overlay, deadline - now).await;
        state.remember_absent(absent);
    }
    let recording = Recording::new(&*state.snapshot, &overlay);
    let outcome = decide(&recording);
    let unread = recording.misses().len();
    LiveRead { outcome, unread }
}

/// The response to send: unchanged when every object was read; otherwise with a warning that
/// some were not, counted and logged with the object's name.
fn settle_unread(
    state: &AdmissionState,
    request: &AdmissionRequest<DynamicObject>,
    read: LiveRead<AdmissionResponse>,
) -> AdmissionResponse {
    if read.unread == 0 {
        return read.outcome;
    }
    let object = format!("{} {}", request.kind.kind, object_name(request));
    tracing::warn!(
        object = %object,
        unread = read.unread,
        "admission answered before every object it names was read (more than {MAX_LIVE_READS} \
         live reads or {} ms); warnings about missing objects may be incomplete",
        LIVE_READ_BUDGET.as_millis()
    );
    if let Some(metrics) = &state.metrics {
        metrics.webhook_lookups_unfinished();
    }
    // First, so the API server's cap on warning length never drops it.
    let mut response = read.outcome;
    let mut warnings = vec![format!(
        "healthscope could not read {} object(s) that {object} names within its time budget; \
         it was checked against what it could read. The controller wires it from the stored \
         object either way.",
        read.unread
    )];
    warnings.extend(response.warnings.take().unwrap_or_default());
    with_warnings(response, warnings)
}

/// Reads `keys` from the API server into `overlay` (absent ones as `None`). A failed read counts
/// as absent, with a log line.
/// Returns the keys the API server said do not exist (not those that failed or timed out).
async fn read_live(
    client: &Client,
    keys: BTreeSet<ObjectKey>,
    overlay: &mut Overlay,
    budget: Duration,
) -> Vec<ObjectKey> {
    async fn get<K>(
        client: &Client,
        ns: &str,
        name: &str,
        budget: Duration,
    ) -> Result<Option<Arc<K>>, ()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api = Api::<K>::namespaced(client.clone(), ns);
        match tokio::time::timeout(budget, api.get_opt(name)).await {
            Ok(Ok(found)) => Ok(found.map(Arc::new)),
            Ok(Err(e)) => {
                tracing::warn!(namespace = ns, name, kind = %K::kind(&Default::default()), error = %e, "live read failed");
                Err(())
            }
            Err(_) => {
                tracing::warn!(namespace = ns, name, kind = %K::kind(&Default::default()), "live read timed out");
                Err(())
            }
        }
    }
    let reads = keys.into_iter().map(|key| async move {
        let (kind, ns, name) = &key;
        let value = match kind {
            OamKind::ApplicationConfiguration => {
                get::<ApplicationConfiguration>(client, ns, name, budget)
                    .await
                    .map(Fetched::App)
            }
            OamKind::Component => get::<Component>(client, ns, name, budget)
                .await
                .map(Fetched::Component),
            OamKind::ContainerizedWorkload => {
                get::<ContainerizedWorkload>(client, ns, name, budget)
                    .await
                    .map(Fetched::Cw)
            }
            OamKind::HealthScope => get::<HealthScope>(client, ns, name, budget)
                .await
                .map(Fetched::Scope),
        };
        (key, value)
    });
    let mut absent = Vec::new();
    for (key, fetched) in join_all(reads).await {
        // A failed read stays a miss: the decision counts it as unread.
        let Ok(fetched) = fetched else { continue };
        if fetched.is_absent() {
            absent.push(key.clone());
        }
        overlay.insert(&key, fetched);
    }
    absent
}

enum Fetched {
    App(Option<Arc<ApplicationConfiguration>>),
    Component(Option<Arc<Component>>),
    Cw(Option<Arc<ContainerizedWorkload>>),
    Scope(Option<Arc<HealthScope>>),
}

impl Fetched {
    fn is_absent(&self) -> bool {
        match self {
            Fetched::App(v) => v.is_none(),
            Fetched::Component(v) => v.is_none(),
            Fetched::Cw(v) => v.is_none(),
            Fetched::Scope(v) => v.is_none(),
        }
    }
}

impl Overlay {
    fn insert(&mut self, (_, ns, name): &ObjectKey, fetched: Fetched) {
        let key = (ns.clone(), name.clone());
        match fetched {
            Fetched::App(v) => drop(self.app_configurations.insert(key, v)),
            Fetched::Component(v) => drop(self.components.insert(key, v)),
            Fetched::Cw(v) => drop(self.containerized_workloads.insert(key, v)),
            Fetched::Scope(v) => drop(self.health_scopes.insert(key, v)),
        }
    }

    /// Records `key` as known absent.
    fn record_absent(&mut self, key: &ObjectKey) {
        let fetched = match key.0 {
            OamKind::ApplicationConfiguration => Fetched::App(None),
            OamKind::Component => Fetched::Component(None),
            OamKind::ContainerizedWorkload => Fetched::Cw(None),
            OamKind::HealthScope => Fetched::Scope(None),
        };
        self.insert(key, fetched);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::tests::{deeply_nested_review, review_json};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    /// A client for an address nothing listens on: these routes never reach it.
    fn offline_state() -> AdmissionState {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        AdmissionState::new(
            Arc::new(Overlay::default()),
            Client::try_from(config).unwrap(),
        )
    }

    async fn post(path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        post_to(router(offline_state()), path, body).await
    }

    async fn post_to(router: axum::Router, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let response = router
            .oneshot(
                Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    #[tokio::test]
    async fn routes_answer_admission_v1_with_the_uid() {
        let scope = json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
            "metadata": {"name": "s", "namespace": "ns"}, "spec": {"probe-method": "BREW"}});
        let body = review_json(
            ("core.oam.dev", "v1alpha2", "HealthScope"),
            "CREATE",
            Some(scope),
            None,
            false,
        );
        let (status, bytes) = post(HEALTH_SCOPE_PATH, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let review: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["response"]["uid"], body["request"]["uid"]);
        assert_eq!(review["response"]["allowed"], false);
        assert!(
            review["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("BREW")
        );
    }

    #[tokio::test]
    async fn routes_reject_malformed_bodies_with_400() {
        for path in [
            HEALTH_SCOPE_PATH,
            WORKLOAD_PATH,
            APPLICATION_CONFIGURATION_PATH,
        ] {
            let (status, bytes) = post(path, b"{oops".to_vec()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            assert!(String::from_utf8_lossy(&bytes).contains("not valid JSON"));
            let (status, bytes) = post(
                path,
                br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(String::from_utf8_lossy(&bytes).contains("no request"));
            let (status, bytes) = post(path, br#"{"kind":"Pod","apiVersion":"v1"}"#.to_vec()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(String::from_utf8_lossy(&bytes).contains("not an AdmissionReview"));
            let deep = deeply_nested_review(50_000);
            let (status, bytes) = post(path, deep.into_bytes()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(String::from_utf8_lossy(&bytes).contains("nested too deeply"));
        }
    }

    #[tokio::test]
    async fn requests_and_rejections_are_counted_in_the_metrics() {
        let metrics = Metrics::new();
        let app = router(offline_state().with_metrics(metrics.clone()));
        let scope = |method: &str| {
            json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
                "metadata": {"name": "s", "namespace": "ns"}, "spec": {"probe-method": method}})
        };
        for method in ["BREW", "GET"] {
            let body = review_json(
                ("core.oam.dev", "v1alpha2", "HealthScope"),
                "CREATE",
                Some(scope(method)),
                None,
                false,
            );
            let (status, _) = post_to(
                app.clone(),
                HEALTH_SCOPE_PATH,
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
        let (status, _) = post_to(app, WORKLOAD_PATH, b"{oops".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let text = metrics.encode();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .map(str::to_string)
        };
        assert_eq!(
            line("healthscope_webhook_rejected_total{reason=\"invalid_healthscope\"}").as_deref(),
            Some("healthscope_webhook_rejected_total{reason=\"invalid_healthscope\"} 1"),
            "{text}"
        );
        assert!(
            line("healthscope_webhook_rejected_total{reason=\"bad_review\"} 1").is_some(),
            "{text}"
        );
        assert!(
            line("healthscope_webhook_requests_total{operation=\"CREATE\",code=\"200\"} 2")
                .is_some(),
            "{text}"
        );
        assert!(
            line("healthscope_webhook_requests_total{operation=\"unknown\",code=\"400\"} 1")
                .is_some(),
            "{text}"
        );
        assert!(
            line("healthscope_webhook_requests_in_flight 0").is_some(),
            "{text}"
        );
    }

    #[tokio::test]
    async fn wrong_kind_for_the_route_is_denied() {
        let deployment =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}});
        let body = review_json(
            ("apps", "v1", "Deployment"),
            "CREATE",
            Some(deployment),
            None,
            false,
        );
        let (status, bytes) = post(
            APPLICATION_CONFIGURATION_PATH,
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let review: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(review["response"]["allowed"], false);
        assert!(
            review["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("ApplicationConfigurations")
        );
    }
}
