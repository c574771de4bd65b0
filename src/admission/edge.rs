//! The async edge of admission: HTTP routes over the pure handlers, live reads for snapshot
//! misses, and the HealthScope server-side applies an ApplicationConfiguration asks for.
//!
//! Snapshot misses: a freshly created object can reach the webhook before the watch cache has
//! it (a Component applied just before its AppConfig, a ContainerizedWorkload just before the
//! Deployment it owns). A handler is run against the cache; every object it asked for and did
//! not find is read live once (GET), and the handler runs again with those answers. At most
//! [`MAX_LOOKUP_ROUNDS`] rounds; an object that really is absent costs one GET per request.
//!
//! Write failures: if a server-side apply to a HealthScope fails on CREATE or UPDATE, the
//! request is denied with the scope and the error, so the client sees it and retries (the
//! applies are idempotent). On DELETE the deletion is never blocked: it is allowed with a
//! warning, and the controller's backstop removes the refs.
//! A scope deleted between the check and the apply is re-created by the apply (server-side
//! apply creates missing objects); the controller's backstop owns that rare case.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::join_all;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::appconfig::{self, ScopeWrites};
use super::{
    APPLICATION_CONFIGURATION_PATH, HEALTH_SCOPE_PATH, OamKind, ObjectKey, Overlay, Recording,
    ReviewError, Snapshot, WORKLOAD_PATH, decode_review, deny, healthscope, object_name,
    with_warnings, workload,
};
use crate::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use crate::membership::workload_refs_apply;

/// Most rounds of live reads for one request.
pub const MAX_LOOKUP_ROUNDS: usize = 3;
/// Longest wait for one live read or one scope apply; the API server's webhook timeout is 10 s.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// Largest request body: an AdmissionReview with old and new objects of 3 MiB each.
pub const MAX_REVIEW_BYTES: usize = 7 * 1024 * 1024;

/// What the admission routes need: the cache and a client for live reads and scope writes.
#[derive(Clone)]
pub struct AdmissionState {
    pub snapshot: Arc<dyn Snapshot>,
    pub client: Client,
}

impl AdmissionState {
    pub fn new(snapshot: Arc<dyn Snapshot>, client: Client) -> Self {
        Self { snapshot, client }
    }
}

/// The admission routes: POST [`APPLICATION_CONFIGURATION_PATH`], [`WORKLOAD_PATH`] and
/// [`HEALTH_SCOPE_PATH`], each taking and answering an admission/v1 AdmissionReview. A body that
/// is not one gets HTTP 400 with the reason.
pub fn router(state: AdmissionState) -> axum::Router {
    axum::Router::new()
        .route(APPLICATION_CONFIGURATION_PATH, post(appconfig_route))
        .route(WORKLOAD_PATH, post(workload_route))
        .route(HEALTH_SCOPE_PATH, post(healthscope_route))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(state)
}

fn answer(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}

fn bad_request(error: ReviewError) -> Response {
    tracing::warn!(error = %error, "undecodable admission request");
    (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response()
}

async fn healthscope_route(body: Bytes) -> Response {
    let request = match decode_review(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let response = healthscope::review(&request);
    log_decision(&request, &response);
    answer(response)
}

async fn workload_route(State(state): State<AdmissionState>, body: Bytes) -> Response {
    let request = match decode_review(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let response = with_live_reads(&state, |snapshot| workload::review(&request, snapshot)).await;
    log_decision(&request, &response);
    answer(response)
}

async fn appconfig_route(State(state): State<AdmissionState>, body: Bytes) -> Response {
    let request = match decode_review(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let review = with_live_reads(&state, |snapshot| appconfig::review(&request, snapshot)).await;
    let response = match review.writes {
        Some(writes) if review.response.allowed => {
            let failures = apply_scope_writes(&state.client, &writes).await;
            settle_writes(&request, review.response, &writes, failures)
        }
        _ => review.response,
    };
    log_decision(&request, &response);
    answer(response)
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

/// Performs the server-side applies of `writes`, all at once, each under the AppConfig's field
/// manager with `force` (the manager only ever claims its own list entries). Returns the
/// failures; empty when every apply succeeded.
pub async fn apply_scope_writes(client: &Client, writes: &ScopeWrites) -> Vec<ScopeWriteFailure> {
    let api = Api::<HealthScope>::namespaced(client.clone(), &writes.namespace);
    let params = PatchParams::apply(&writes.field_manager).force();
    let applies = writes.applies.iter().map(|(scope, refs)| {
        let api = api.clone();
        let params = params.clone();
        async move {
            let body = workload_refs_apply(&writes.namespace, scope, refs);
            let outcome =
                tokio::time::timeout(API_CALL_TIMEOUT, api.patch(scope, &params, &Patch::Apply(&body)))
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
                Err(_) => format!("no answer within {API_CALL_TIMEOUT:?}"),
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

/// The final response once the writes are done: unchanged when they all succeeded; a denial
/// naming each failed scope on CREATE/UPDATE; a warning on DELETE (never blocked).
pub fn settle_writes(
    request: &AdmissionRequest<DynamicObject>,
    response: AdmissionResponse,
    writes: &ScopeWrites,
    failures: Vec<ScopeWriteFailure>,
) -> AdmissionResponse {
    if failures.is_empty() {
        return response;
    }
    let described: Vec<String> = failures
        .iter()
        .map(|f| format!("HealthScope {}/{}: {}", writes.namespace, f.scope, f.error))
        .collect();
    if request.operation == Operation::Delete {
        let warnings = described
            .into_iter()
            .map(|d| {
                format!(
                    "healthscope could not remove the workload refs of {}: {d}",
                    object_name(request)
                )
            })
            .collect();
        return with_warnings(response, warnings);
    }
    deny(
        request,
        format!(
            "healthscope could not record the workloads of ApplicationConfiguration {} in their \
             scopes ({}); nothing is lost by retrying",
            object_name(request),
            described.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::tests::{deeply_nested_review, request, review_json};
    use axum::body::Body;
    use axum::http::Request;
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
        let response = router(offline_state())
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
            assert!(String::from_utf8_lossy(&bytes).contains("not JSON"));
            let (status, bytes) = post(
                path,
                br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(String::from_utf8_lossy(&bytes).contains("no request"));
            let deep = deeply_nested_review(50_000);
            let (status, bytes) = post(path, deep.into_bytes()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(String::from_utf8_lossy(&bytes).contains("nested too deeply"));
        }
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
    fn failed_writes_deny_changes_and_warn_on_delete() {
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
        let denied = settle_writes(
            &create,
            crate::admission::allow(&create),
            &writes,
            failures.clone(),
        );
        assert!(!denied.allowed);
        assert!(denied.result.message.contains("HealthScope ns/s: boom"));
        let delete = request(kind, "DELETE", None, Some(app), false);
        let warned = settle_writes(&delete, crate::admission::allow(&delete), &writes, failures);
        assert!(warned.allowed);
        assert!(warned.warnings.unwrap()[0].contains("HealthScope ns/s: boom"));
        assert!(settle_writes(&create, crate::admission::allow(&create), &writes, vec![]).allowed);
    }
}
