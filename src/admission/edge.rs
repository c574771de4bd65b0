//! The async edge of admission: HTTP routes over the pure handlers, live reads for snapshot
//! misses, and the HealthScope server-side applies an ApplicationConfiguration asks for.
//!
//! Snapshot misses: a freshly created object can reach the webhook before the watch cache has
//! it (a Component applied just before its AppConfig, a ContainerizedWorkload just before the
//! Deployment it owns). A handler is run against the cache; every object it asked for and did
//! not find is read live once (GET), and the handler runs again with those answers. At most
//! [`MAX_LOOKUP_ROUNDS`] rounds; an object that really is absent costs one GET per request.
//!
//! Write failures: if a server-side apply to a HealthScope fails, the request is still allowed,
//! with a warning naming the scope and the error: the wiring fails open, as the webhook's
//! `failurePolicy: Ignore` does, and the controller's backstop records (or, on DELETE, removes)
//! the refs from the stored ApplicationConfiguration moments later. A user's apply is never
//! refused because healthscope could not write in time.
//! A scope deleted between the check and the apply is re-created by the apply (server-side
//! apply creates missing objects); the controller's backstop owns that rare case.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use futures::future::join_all;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::appconfig::{self, ScopeWrites};
use super::{
    APPLICATION_CONFIGURATION_PATH, APPLICATION_CONFIGURATION_VALIDATE_PATH, HEALTH_SCOPE_PATH,
    OamKind, ObjectKey, Overlay, Recording, Snapshot, WORKLOAD_PATH, healthscope, object_name,
    with_warnings, workload,
};
use crate::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use crate::membership::workload_refs_apply;
use crate::metrics::Metrics;
use crate::webhook::{AdmissionReviewRequest, review_response};

/// Most rounds of live reads for one request: enough for the longest chain, a
/// ContainerizedWorkload's child (parent, then its ApplicationConfiguration, then Components).
pub const MAX_LOOKUP_ROUNDS: usize = 3;
/// Longest wait for one live read.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest wait for the scope applies of one request, queueing included; the API server gives
/// a webhook 10 s at most.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(8);

/// What the admission routes need: the cache, a client for live reads, the scope writer, and
/// optionally the metrics to record requests in.
#[derive(Clone)]
pub struct AdmissionState {
    pub snapshot: Arc<dyn Snapshot>,
    pub client: Client,
    pub writer: ScopeWriter,
    pub metrics: Option<Metrics>,
}

impl AdmissionState {
    pub fn new(snapshot: Arc<dyn Snapshot>, client: Client) -> Self {
        Self {
            snapshot,
            writer: ScopeWriter::new(client.clone()),
            client,
            metrics: None,
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
/// [`APPLICATION_CONFIGURATION_VALIDATE_PATH`], [`WORKLOAD_PATH`] and [`HEALTH_SCOPE_PATH`], each taking and answering an admission/v1 AdmissionReview. Bodies are
/// read by [`crate::webhook::AdmissionReviewRequest`]: one that is not an AdmissionReview gets
/// HTTP 400 with the reason. Serve it with [`crate::webhook::serve`] (TLS, body limits).
pub fn router(state: AdmissionState) -> axum::Router {
    let metrics = state.metrics.clone();
    let router = axum::Router::new()
        .route(APPLICATION_CONFIGURATION_PATH, post(appconfig_route))
        .route(
            APPLICATION_CONFIGURATION_VALIDATE_PATH,
            post(appconfig_validate_route),
        )
        .route(WORKLOAD_PATH, post(workload_route))
        .route(HEALTH_SCOPE_PATH, post(healthscope_route))
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

async fn workload_route(
    State(state): State<AdmissionState>,
    AdmissionReviewRequest(request): AdmissionReviewRequest,
) -> Response {
    let response = with_live_reads(&state, |snapshot| workload::review(&request, snapshot)).await;
    answer(&request, response, RejectReason::InvalidRequest)
}

async fn appconfig_route(
    State(state): State<AdmissionState>,
    AdmissionReviewRequest(request): AdmissionReviewRequest,
) -> Response {
    let review = with_live_reads(&state, |snapshot| appconfig::review(&request, snapshot)).await;
    match review.writes {
        Some(writes) if review.response.allowed => {
            let failures = state.writer.apply(&writes).await;
            let response = settle_writes(&request, review.response, &writes, failures);
            answer(
                &request,
                response,
                RejectReason::InvalidApplicationConfiguration,
            )
        }
        _ => answer(
            &request,
            review.response,
            RejectReason::InvalidApplicationConfiguration,
        ),
    }
}

async fn appconfig_validate_route(
    State(state): State<AdmissionState>,
    AdmissionReviewRequest(request): AdmissionReviewRequest,
) -> Response {
    // The same decision; the writes belong to the wiring route only.
    let review = with_live_reads(&state, |snapshot| appconfig::review(&request, snapshot)).await;
    answer(
        &request,
        review.response,
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

/// Runs a pure decision against the cache, reading live whatever it missed (see the module
/// documentation), and returns the final decision.
pub async fn with_live_reads<T>(state: &AdmissionState, decide: impl Fn(&dyn Snapshot) -> T) -> T {
    let mut overlay = Overlay::default();
    for _ in 0..MAX_LOOKUP_ROUNDS {
        let misses = {
            let recording = Recording::new(&*state.snapshot, &overlay);
            let outcome = decide(&recording);
            let misses = recording.misses();
            if misses.is_empty() {
                return outcome;
            }
            misses
        };
        read_live(&state.client, misses, &mut overlay).await;
    }
    decide(&Recording::new(&*state.snapshot, &overlay))
}

/// Reads `keys` from the API server into `overlay` (absent ones as `None`). A failed read counts
/// as absent, with a log line.
async fn read_live(
    client: &Client,
    keys: std::collections::BTreeSet<ObjectKey>,
    overlay: &mut Overlay,
) {
    async fn get<K>(client: &Client, ns: &str, name: &str) -> Option<Arc<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api = Api::<K>::namespaced(client.clone(), ns);
        match tokio::time::timeout(API_CALL_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(found)) => found.map(Arc::new),
            Ok(Err(e)) => {
                tracing::warn!(namespace = ns, name, kind = %K::kind(&Default::default()), error = %e, "live read failed");
                None
            }
            Err(_) => {
                tracing::warn!(namespace = ns, name, kind = %K::kind(&Default::default()), "live read timed out");
                None
            }
        }
    }
    let reads = keys.into_iter().map(|(kind, ns, name)| async move {
        let value = match kind {
            OamKind::ApplicationConfiguration => {
                Fetched::App(get::<ApplicationConfiguration>(client, &ns, &name).await)
            }
            OamKind::Component => Fetched::Component(get::<Component>(client, &ns, &name).await),
            OamKind::ContainerizedWorkload => {
                Fetched::Cw(get::<ContainerizedWorkload>(client, &ns, &name).await)
            }
            OamKind::HealthScope => Fetched::Scope(get::<HealthScope>(client, &ns, &name).await),
        };
        ((ns, name), value)
    });
    for (key, fetched) in join_all(reads).await {
        match fetched {
            Fetched::App(v) => overlay.app_configurations.insert(key, v).map(drop),
            Fetched::Component(v) => overlay.components.insert(key, v).map(drop),
            Fetched::Cw(v) => overlay.containerized_workloads.insert(key, v).map(drop),
            Fetched::Scope(v) => overlay.health_scopes.insert(key, v).map(drop),
        };
    }
}

enum Fetched {
    App(Option<Arc<ApplicationConfiguration>>),
    Component(Option<Arc<Component>>),
    Cw(Option<Arc<ContainerizedWorkload>>),
    Scope(Option<Arc<HealthScope>>),
}

/// One scope apply that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeWriteFailure {
    pub scope: String,
    pub error: String,
}

/// One queue per (namespace, scope): holding the lock is a turn to write.
type ScopeQueues = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// Performs the workloadRefs server-side applies, one at a time per scope.
///
/// Many ApplicationConfigurations naming one scope are admitted at once (a rollout, `kubectl
/// apply -f dir/`). Sent together, their applies to the same object conflict in the API server,
/// which retries each one and runs admission again every time: 50 at once took longer than the
/// webhook timeout. Queued per scope, each apply goes through on its first try.
/// Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct ScopeWriter {
    client: Client,
    queues: Arc<std::sync::Mutex<ScopeQueues>>,
}

impl ScopeWriter {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            queues: Arc::default(),
        }
    }

    fn queue(&self, namespace: &str, scope: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Forget queues nobody waits in, so the map stays as small as the scopes in use.
        queues.retain(|_, queue| Arc::strong_count(queue) > 1);
        queues
            .entry((namespace.to_string(), scope.to_string()))
            .or_default()
            .clone()
    }

    /// Applies `writes` (scopes in parallel, each under the AppConfig's field manager with
    /// `force`: the manager only ever claims its own list entries) within [`WRITE_DEADLINE`].
    /// Returns the failures; empty when every apply succeeded.
    pub async fn apply(&self, writes: &ScopeWrites) -> Vec<ScopeWriteFailure> {
        let api = Api::<HealthScope>::namespaced(self.client.clone(), &writes.namespace);
        let params = PatchParams::apply(&writes.field_manager).force();
        let applies = writes.applies.iter().map(|(scope, refs)| {
            let api = api.clone();
            let params = params.clone();
            let queue = self.queue(&writes.namespace, scope);
            async move {
                let body = workload_refs_apply(&writes.namespace, scope, refs);
                let outcome = tokio::time::timeout(WRITE_DEADLINE, async {
                    let _turn = queue.lock().await;
                    api.patch(scope, &params, &Patch::Apply(&body)).await
                })
                .await;
                let error = match outcome {
                    Ok(Ok(_)) => {
                        tracing::info!(
                            namespace = %writes.namespace,
                            scope = %scope,
                            appconfig = %writes.appconfig,
                            refs = refs.len(),
                            "workload refs applied"
                        );
                        return None;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("not done within {WRITE_DEADLINE:?}"),
                };
                tracing::warn!(namespace = %writes.namespace, scope = %scope, appconfig = %writes.appconfig, error = %error, "applying workload refs failed");
                Some(ScopeWriteFailure {
                    scope: scope.clone(),
                    error,
                })
            }
        });
        join_all(applies).await.into_iter().flatten().collect()
    }
}

/// The final response once the writes are done: unchanged when they all succeeded; otherwise
/// allowed with one warning per failed scope (the controller's backstop converges).
pub fn settle_writes(
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
    writes: &ScopeWrites,
    failures: Vec<ScopeWriteFailure>,
) -> AdmissionResponse {
    if failures.is_empty() {
        return response;
    }
    let action = if request.operation == Operation::Delete {
        "remove the workload refs of"
    } else {
        "record the workload refs of"
    };
    let warnings = failures
        .iter()
        .map(|f| {
            tracing::warn!(
                appconfig = %object_name(request),
                scope = %format!("{}/{}", writes.namespace, f.scope),
                error = %f.error,
                "scope write failed; left to the controller's backstop"
            );
            format!(
                "healthscope could not {action} {} in HealthScope {}/{} ({}); the healthscope \
                 controller will do it shortly",
                object_name(request),
                writes.namespace,
                f.scope,
                f.error
            )
        })
        .collect();
    with_warnings(response, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::tests::{deeply_nested_review, request, review_json};
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

    #[test]
    fn failed_writes_allow_with_a_warning_naming_the_scope() {
        let app = json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "ApplicationConfiguration",
            "metadata": {"name": "shop", "namespace": "ns"}, "spec": {}});
        let kind = ("core.oam.dev", "v1alpha2", "ApplicationConfiguration");
        let writes = ScopeWrites {
            namespace: "ns".into(),
            appconfig: "shop".into(),
            field_manager: "m".into(),
            applies: Default::default(),
        };
        let failures = vec![ScopeWriteFailure {
            scope: "s".into(),
            error: "boom".into(),
        }];
        let create = request(kind, "CREATE", Some(app.clone()), None, false);
        let warned = settle_writes(
            &create,
            crate::admission::allow(&create),
            &writes,
            failures.clone(),
        );
        assert!(
            warned.allowed,
            "a failed write never refuses the user's apply"
        );
        let warning = &warned.warnings.unwrap()[0];
        assert!(warning.contains("record the workload refs"), "{warning}");
        assert!(warning.contains("HealthScope ns/s (boom)"), "{warning}");
        let delete = request(kind, "DELETE", None, Some(app), false);
        let warned = settle_writes(&delete, crate::admission::allow(&delete), &writes, failures);
        assert!(warned.allowed);
        assert!(warned.warnings.unwrap()[0].contains("remove the workload refs"));
        let clean = settle_writes(&create, crate::admission::allow(&create), &writes, vec![]);
        assert!(clean.allowed && clean.warnings.is_none());
    }
}
