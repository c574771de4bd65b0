//! The admission routes: each decodes an AdmissionReview, runs the pure decision of
//! [`crate::admission`] (with live reads for cache misses, [`super::live`]), and answers; a
//! metrics layer records every request.

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use tracing::Instrument;

use super::live::{AdmissionState, settle_unread, with_live_reads};
use super::{AdmissionReviewRequest, review_response};
use crate::admission::appconfig;
use crate::admission::{
    APPLICATION_CONFIGURATION_PATH, APPLICATION_CONFIGURATION_VALIDATE_PATH, HEALTH_RULE_PATH,
    HEALTH_SCOPE_PATH, WORKLOAD_PATH, healthrule, healthscope, object_name, workload,
};
use crate::metrics::WebhookMetrics;

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
fn answer<K: kube::Resource>(
    request: &AdmissionRequest<K>,
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
    State(metrics): State<WebhookMetrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let _in_flight = metrics.in_flight();
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
        metrics.rejected(reason.as_str());
    }
    metrics.observe_request(
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
    let metrics = state.metrics().clone();
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
    router.layer(axum::middleware::from_fn_with_state(
        metrics,
        record_metrics,
    ))
}

async fn healthscope_route(AdmissionReviewRequest(request): AdmissionReviewRequest) -> Response {
    let _review = review_span(&request).entered();
    let response = healthscope::review(&request);
    answer(&request, response, RejectReason::InvalidHealthScope)
}

async fn healthrule_route(AdmissionReviewRequest(request): AdmissionReviewRequest) -> Response {
    let _review = review_span(&request).entered();
    let response = healthrule::review(&request);
    answer(&request, response, RejectReason::InvalidHealthRule)
}

async fn workload_route(
    State(state): State<AdmissionState>,
    AdmissionReviewRequest(request): AdmissionReviewRequest<workload::WorkloadObject>,
) -> Response {
    let span = review_span(&request);
    async {
        let read = with_live_reads(&state, |snapshot| workload::review(&request, snapshot)).await;
        let response = settle_unread(&state, &request, read);
        answer(&request, response, RejectReason::InvalidRequest)
    }
    .instrument(span)
    .await
}

/// Both ApplicationConfiguration paths answer the same decision, without a patch: the
/// mutating path stays for webhook configurations of earlier versions.
async fn appconfig_route(
    State(state): State<AdmissionState>,
    AdmissionReviewRequest(request): AdmissionReviewRequest<appconfig::AppConfigObject>,
) -> Response {
    let span = review_span(&request);
    async {
        let read = with_live_reads(&state, |snapshot| appconfig::review(&request, snapshot)).await;
        let response = settle_unread(&state, &request, read);
        answer(
            &request,
            response,
            RejectReason::InvalidApplicationConfiguration,
        )
    }
    .instrument(span)
    .await
}

/// One span per AdmissionReview: everything logged while deciding carries its uid and object.
fn review_span<K: kube::Resource>(request: &AdmissionRequest<K>) -> tracing::Span {
    tracing::info_span!(
        "review",
        uid = %request.uid,
        kind = %request.kind.kind,
        object = %object_name(request),
        operation = operation_label(&request.operation),
    )
}

fn log_decision<K: kube::Resource>(request: &AdmissionRequest<K>, response: &AdmissionResponse) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Overlay;
    use crate::admission::tests::{deeply_nested_review, review_json};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use kube::Client;
    use serde_json::{Value, json};
    use std::sync::Arc;
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
            if path == WORKLOAD_PATH {
                // The workload route reads only the object's metadata: nesting elsewhere is
                // skipped without recursion, and the (non-OAM) object is admitted.
                assert_eq!(status, StatusCode::OK);
                let review: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(review["response"]["allowed"], true);
            } else if path == APPLICATION_CONFIGURATION_PATH {
                // The AppConfig route keeps only its spec and status raw: the nesting is skipped
                // unbuilt, and a ConfigMap is the wrong kind for it.
                assert_eq!(status, StatusCode::OK);
                let review: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(review["response"]["allowed"], false);
            } else {
                assert_eq!(status, StatusCode::BAD_REQUEST);
                assert!(String::from_utf8_lossy(&bytes).contains("nested too deeply"));
            }
        }
    }

    #[tokio::test]
    async fn requests_and_rejections_are_counted_in_the_metrics() {
        let metrics = crate::metrics::Metrics::new();
        let app = router(offline_state().with_metrics(&metrics));
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
