//! The admin server (/metrics, /healthz, /readyz) and the scopes API (/scopes).
//!
//! Plain HTTP, read-only. The admin port is reachable by the cluster (kubelet probes,
//! Prometheus) and serves nothing about any scope. The scopes API shows every watched
//! namespace's scopes without asking RBAC, so `healthscope run` binds it to loopback, read with
//! `kubectl port-forward`. Scopes are answered from a reflector store of HealthScopes (their
//! status as the leader last wrote it), so every replica answers, leader or not, without a
//! request to the API server.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::{Deserialize, Serialize};

use crate::api::{Health, HealthScope, WorkloadReference};
use crate::metrics::{self, Metrics};

/// The namespace of `GET /scopes/{name}`, as in the seed's `/scopes/example-health-scope`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Whether this replica may receive traffic: only after the watch caches have their first full
/// list and the webhook's certificate is loaded. Clones share the same flags.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    flags: Arc<ReadinessFlags>,
}

#[derive(Debug, Default)]
struct ReadinessFlags {
    caches_synced: AtomicBool,
    certs_loaded: AtomicBool,
}

impl Readiness {
    /// Not ready: neither caches synced nor certificates loaded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Called once the reflectors have listed everything they watch.
    pub fn mark_caches_synced(&self) {
        self.flags.caches_synced.store(true, Ordering::Release);
    }

    /// Called once the webhook server has loaded its certificate and key (or when this process
    /// serves no webhook).
    pub fn mark_certs_loaded(&self) {
        self.flags.certs_loaded.store(true, Ordering::Release);
    }

    /// What is still missing; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.flags.caches_synced.load(Ordering::Acquire) {
            missing.push("caches not synced");
        }
        if !self.flags.certs_loaded.load(Ordering::Acquire) {
            missing.push("certificates not loaded");
        }
        missing
    }

    pub fn is_ready(&self) -> bool {
        self.missing().is_empty()
    }
}

/// What the admin server reads from.
#[derive(Clone)]
pub struct AdminState {
    scopes: Store<HealthScope>,
    metrics: Metrics,
    readiness: Readiness,
}

impl AdminState {
    pub fn new(scopes: Store<HealthScope>, metrics: Metrics, readiness: Readiness) -> Self {
        Self {
            scopes,
            metrics,
            readiness,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

/// One line of `GET /scopes`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScopeSummary {
    pub namespace: String,
    pub name: String,
    /// `unknown` until the controller has evaluated the scope.
    pub health: Health,
    pub healthy: i64,
    pub total: i64,
}

/// `GET /scopes/{namespace}/{name}`: the summary plus every workload's health and reason.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScopeDetail {
    #[serde(flatten)]
    pub summary: ScopeSummary,
    pub unhealthy: i64,
    pub unknown: i64,
    /// The spec generation the health describes; behind `generation` while an evaluation of a
    /// changed spec is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub workloads: Vec<WorkloadDetail>,
}

/// One workload of a scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadDetail {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    pub health: Health,
    pub diagnosis: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_status: Option<String>,
}

/// The JSON body of every error answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a workload listed in spec has no entry in status yet.
pub const NOT_EVALUATED: &str = "not evaluated yet";

/// The summary of one HealthScope, from its status (or "unknown" before the first evaluation).
pub fn summarize(scope: &HealthScope) -> ScopeSummary {
    let status = scope.status.as_ref();
    let condition = status.and_then(|s| s.scope_health_condition.as_ref());
    ScopeSummary {
        namespace: scope.namespace().unwrap_or_default(),
        name: scope.name_any(),
        health: status.and_then(|s| s.health).unwrap_or_default(),
        healthy: condition.map_or(0, |c| c.healthy_workloads),
        total: condition.map_or(scope.spec.workload_refs.len() as i64, |c| c.total),
    }
}

/// The detail of one HealthScope: each workload from `status.healthConditions`, then any
/// workload of `spec.workloadRefs` the controller has not evaluated yet (as unknown).
pub fn describe(scope: &HealthScope) -> ScopeDetail {
    let summary = summarize(scope);
    let status = scope.status.as_ref();
    let condition = status.and_then(|s| s.scope_health_condition.as_ref());
    let conditions = status
        .map(|s| s.health_conditions.as_slice())
        .unwrap_or(&[]);

    let mut workloads: Vec<WorkloadDetail> = conditions
        .iter()
        .map(|c| WorkloadDetail {
            api_version: c.target_workload.api_version.clone(),
            kind: c.target_workload.kind.clone(),
            name: c.target_workload.name.clone(),
            component: c.component_name.clone(),
            health: c.health_status.into(),
            diagnosis: c.diagnosis.clone(),
            workload_status: c.workload_status.clone(),
        })
        .collect();
    let evaluated: BTreeSet<(&str, &str, &str)> =
        conditions.iter().map(|c| c.target_workload.key()).collect();
    workloads.extend(
        scope
            .spec
            .workload_refs
            .iter()
            .filter(|r| !evaluated.contains(&r.key()))
            .map(not_evaluated),
    );

    ScopeDetail {
        unhealthy: condition.map_or(0, |c| c.unhealthy_workloads),
        unknown: condition.map_or(summary.total, |c| c.unknown_workloads),
        observed_generation: status.and_then(|s| s.observed_generation),
        generation: scope.metadata.generation,
        workloads,
        summary,
    }
}

fn not_evaluated(r: &WorkloadReference) -> WorkloadDetail {
    WorkloadDetail {
        api_version: r.api_version.clone(),
        kind: r.kind.clone(),
        name: r.name.clone(),
        component: None,
        health: Health::Unknown,
        diagnosis: NOT_EVALUATED.to_string(),
        workload_status: None,
    }
}

/// Every route: the scopes API and the admin routes. Unknown paths answer 404 and other
/// methods 405, both with a JSON error.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/scopes", get(list_scopes))
        .route("/scopes/{namespace}/{name}", get(get_scope))
        .route("/scopes/{name}", get(get_default_namespace_scope))
        .merge(admin_routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The routes for the cluster-reachable admin port: /metrics, /healthz, /readyz. /scopes
/// answers 404 saying where it is served.
pub fn admin_router(state: AdminState) -> Router {
    admin_routes()
        .route("/scopes", get(scopes_elsewhere))
        .route("/scopes/{*rest}", get(scopes_elsewhere))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn admin_routes() -> Router<AdminState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// What the admin port answers for /scopes.
pub const SCOPES_ELSEWHERE: &str = "/scopes is not served on the admin port: it is served on \
    --api-addr (127.0.0.1:8081 by default); read it with kubectl port-forward";

async fn scopes_elsewhere() -> Response {
    error(StatusCode::NOT_FOUND, SCOPES_ELSEWHERE.to_string())
}

async fn list_scopes(State(state): State<AdminState>) -> Json<Vec<ScopeSummary>> {
    let mut scopes: Vec<ScopeSummary> = state.scopes.state().iter().map(|s| summarize(s)).collect();
    scopes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Json(scopes)
}

async fn get_scope(
    State(state): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    scope_response(&state, &namespace, &name)
}

async fn get_default_namespace_scope(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Response {
    scope_response(&state, DEFAULT_NAMESPACE, &name)
}

fn scope_response(state: &AdminState, namespace: &str, name: &str) -> Response {
    let key = ObjectRef::<HealthScope>::new(name).within(namespace);
    match state.scopes.get(&key) {
        Some(scope) => Json(describe(&scope)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("healthscope {namespace}/{name} not found"),
        ),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let missing = state.readiness.missing();
    if missing.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join(", ")),
        )
            .into_response()
    }
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}: read-only, use GET",
            uri.path()
        ),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

/// Errors of the admin server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the admin server to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("admin server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Binds the admin address (e.g. 0.0.0.0:8080 in a pod, 127.0.0.1:0 in tests).
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `router` (see [`router`]) over plain HTTP (the webhook's HTTPS is [`crate::webhook::serve`]) until `shutdown` completes, then finishes
/// the requests in progress.
pub async fn serve_plain(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        HealthScopeSpec, HealthScopeStatus, HealthStatus, ScopeHealthCondition,
        WorkloadHealthCondition,
    };
    use axum::body::Body;
    use axum::http::Request;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use tower::ServiceExt;

    fn scope(namespace: &str, name: &str, refs: &[&str]) -> HealthScope {
        let mut hs = HealthScope::new(
            name,
            HealthScopeSpec {
                probe_endpoint: Some("/health".into()),
                workload_refs: refs
                    .iter()
                    .map(|n| WorkloadReference::new("apps/v1", "Deployment", *n))
                    .collect(),
                ..Default::default()
            },
        );
        hs.metadata.namespace = Some(namespace.into());
        hs.metadata.generation = Some(2);
        hs
    }

    fn evaluated(mut hs: HealthScope, healthy: &[&str], unhealthy: &[&str]) -> HealthScope {
        let condition =
            |name: &&str, status: HealthStatus, diagnosis: &str| WorkloadHealthCondition {
                component_name: Some(format!("{name}-component")),
                target_workload: WorkloadReference::new("apps/v1", "Deployment", *name),
                health_status: status,
                diagnosis: diagnosis.into(),
                workload_status: None,
            };
        let mut conditions: Vec<_> = healthy
            .iter()
            .map(|n| condition(n, HealthStatus::Healthy, "Ready: 1/1 replicas"))
            .collect();
        conditions.extend(
            unhealthy
                .iter()
                .map(|n| condition(n, HealthStatus::Unhealthy, "Ready: 0/1 replicas")),
        );
        let total = conditions.len() as i64;
        let health = if unhealthy.is_empty() {
            Health::Healthy
        } else {
            Health::Unhealthy
        };
        hs.status = Some(HealthScopeStatus {
            health: Some(health),
            healthy_of_total: Some(format!("{}/{total}", healthy.len())),
            scope_health_condition: Some(ScopeHealthCondition {
                health_status: health.into(),
                total,
                healthy_workloads: healthy.len() as i64,
                unhealthy_workloads: unhealthy.len() as i64,
                unknown_workloads: 0,
            }),
            health_conditions: conditions,
            observed_generation: Some(2),
            ..Default::default()
        });
        hs
    }

    fn state_with(scopes: Vec<HealthScope>) -> AdminState {
        let (reader, mut writer) = store::<HealthScope>();
        for s in scopes {
            writer.apply_watcher_event(&Event::Apply(s));
        }
        AdminState::new(reader, Metrics::new(), Readiness::new())
    }

    async fn call(state: &AdminState, method: Method, path: &str) -> (StatusCode, Response) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        (response.status(), response)
    }

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        state: &AdminState,
        path: &str,
    ) -> (StatusCode, T) {
        let (status, response) = call(state, Method::GET, path).await;
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json",
            "{path}"
        );
        let text = body_text(response).await;
        (status, serde_json::from_str(&text).unwrap())
    }

    #[tokio::test]
    async fn scopes_lists_every_scope_sorted_with_counts() {
        let state = state_with(vec![
            evaluated(scope("default", "web", &["a", "b"]), &["a"], &["b"]),
            scope("apps", "fresh", &["x"]),
            evaluated(scope("apps", "api", &["c"]), &["c"], &[]),
        ]);
        let (status, scopes): (_, Vec<ScopeSummary>) = get_json(&state, "/scopes").await;
        assert_eq!(status, StatusCode::OK);
        let line = |ns: &str, name: &str, health, healthy, total| ScopeSummary {
            namespace: ns.into(),
            name: name.into(),
            health,
            healthy,
            total,
        };
        assert_eq!(
            scopes,
            vec![
                line("apps", "api", Health::Healthy, 1, 1),
                line("apps", "fresh", Health::Unknown, 0, 1),
                line("default", "web", Health::Unhealthy, 1, 2),
            ]
        );
    }

    #[tokio::test]
    async fn scopes_is_an_empty_list_without_scopes() {
        let (status, scopes): (_, Vec<ScopeSummary>) =
            get_json(&state_with(vec![]), "/scopes").await;
        assert_eq!(status, StatusCode::OK);
        assert!(scopes.is_empty());
    }

    #[tokio::test]
    async fn scope_detail_has_each_workload_with_its_diagnosis() {
        let state = state_with(vec![evaluated(
            scope("apps", "web", &["a", "b", "late"]),
            &["a"],
            &["b"],
        )]);
        let (status, detail): (_, ScopeDetail) = get_json(&state, "/scopes/apps/web").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(detail.summary.health, Health::Unhealthy);
        assert_eq!(
            (
                detail.summary.healthy,
                detail.unhealthy,
                detail.summary.total
            ),
            (1, 1, 2)
        );
        assert_eq!(detail.observed_generation, Some(2));
        let rows: Vec<_> = detail
            .workloads
            .iter()
            .map(|w| {
                (
                    w.name.as_str(),
                    w.health,
                    w.diagnosis.as_str(),
                    w.component.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    "a",
                    Health::Healthy,
                    "Ready: 1/1 replicas",
                    Some("a-component")
                ),
                (
                    "b",
                    Health::Unhealthy,
                    "Ready: 0/1 replicas",
                    Some("b-component")
                ),
                ("late", Health::Unknown, NOT_EVALUATED, None),
            ]
        );
    }

    #[tokio::test]
    async fn scope_by_name_alone_is_looked_up_in_the_default_namespace() {
        let state = state_with(vec![
            evaluated(
                scope("default", "example-health-scope", &["a"]),
                &["a"],
                &[],
            ),
            scope("other", "only-elsewhere", &[]),
        ]);
        let (status, detail): (_, ScopeDetail) =
            get_json(&state, "/scopes/example-health-scope").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(detail.summary.namespace, "default");
        assert_eq!(detail.summary.health, Health::Healthy);

        let (status, body): (_, ErrorBody) = get_json(&state, "/scopes/only-elsewhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body.error, "healthscope default/only-elsewhere not found");
    }

    #[tokio::test]
    async fn unknown_scope_is_a_404_with_a_json_error() {
        let state = state_with(vec![scope("apps", "web", &[])]);
        let (status, body): (_, ErrorBody) = get_json(&state, "/scopes/default/x").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            ErrorBody {
                error: "healthscope default/x not found".into()
            }
        );
        let (status, body): (_, ErrorBody) = get_json(&state, "/nowhere").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body.error, "no such path: /nowhere");
    }

    #[tokio::test]
    async fn other_methods_are_405_with_allow() {
        let state = state_with(vec![scope("default", "web", &[])]);
        for (method, path) in [
            (Method::POST, "/scopes"),
            (Method::DELETE, "/scopes/default/web"),
            (Method::PUT, "/scopes/web"),
            (Method::POST, "/metrics"),
            (Method::PATCH, "/readyz"),
        ] {
            let (status, response) = call(&state, method.clone(), path).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
            let body: ErrorBody = serde_json::from_str(&body_text(response).await).unwrap();
            assert!(
                body.error
                    .starts_with(&format!("{method} is not allowed on {path}"))
            );
        }
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_text() {
        let state = state_with(vec![]);
        state.metrics().controller.set_leader(true);
        let (status, response) = call(&state, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            metrics::CONTENT_TYPE
        );
        let text = body_text(response).await;
        assert!(text.contains("\nhealthscope_leader 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn healthz_is_ok_while_not_ready() {
        let state = state_with(vec![]);
        let (status, _) = call(&state, Method::GET, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn readyz_waits_for_caches_and_certificates_and_says_why() {
        let state = state_with(vec![]);
        let (status, response) = call(&state, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body_text(response).await,
            "not ready: caches not synced, certificates not loaded\n"
        );

        state.readiness().mark_caches_synced();
        let (status, response) = call(&state, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body_text(response).await,
            "not ready: certificates not loaded\n"
        );

        state.readiness().mark_certs_loaded();
        let (status, _) = call(&state, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_deleted_scope_disappears() {
        let (reader, mut writer) = store::<HealthScope>();
        let web = scope("default", "web", &[]);
        writer.apply_watcher_event(&Event::Apply(web.clone()));
        let state = AdminState::new(reader, Metrics::new(), Readiness::new());
        let (status, _) = call(&state, Method::GET, "/scopes/web").await;
        assert_eq!(status, StatusCode::OK);
        writer.apply_watcher_event(&Event::Delete(web));
        let (status, _) = call(&state, Method::GET, "/scopes/web").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
