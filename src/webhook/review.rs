//! AdmissionReview bodies: size limits and the memory budget, read deadlines, content type, and
//! decoding into an admission request.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{GroupVersionKind, GroupVersionResource, TypeMeta};
use serde::Deserialize;

use super::*;

/// The body limit and read deadline in force for a request, set by the server for extractors.
#[derive(Debug, Clone, Copy)]
struct BodyLimit {
    limit: usize,
    deadline: Duration,
}

/// Caps every request body at `limit`: a declared Content-Length above it is refused before
/// anything is read, and a streamed body stops being read at the limit. Bodies of requests in
/// flight together may take at most `budget` bytes; a request beyond that gets 503 right away.
/// A body that has not arrived within `read_deadline` is answered 408, which gives its share
/// back; a request not answered within `request_deadline` (body included) is answered 503.
pub fn limit_request_bodies(
    router: Router,
    limit: usize,
    budget: usize,
    read_deadline: Duration,
    request_deadline: Duration,
) -> Router {
    let limits = BodyLimits {
        limit,
        read_deadline,
        budget: Arc::new(tokio::sync::Semaphore::new(
            budget.min(tokio::sync::Semaphore::MAX_PERMITS),
        )),
    };
    router
        .layer(axum::middleware::from_fn_with_state(
            limits,
            enforce_body_limit,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            request_deadline,
            answer_within_deadline,
        ))
}

async fn answer_within_deadline(
    State(deadline): State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%path, "request not answered within {deadline:?}; answering 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "not answered in time, retry shortly\n",
            )
                .into_response()
        }
    }
}

#[derive(Clone)]
struct BodyLimits {
    limit: usize,
    read_deadline: Duration,
    budget: Arc<tokio::sync::Semaphore>,
}

async fn enforce_body_limit(
    State(limits): State<BodyLimits>,
    mut req: Request,
    next: Next,
) -> Response {
    let limit = limits.limit;
    let declared = declared_length(req.headers());
    if let Some(declared) = declared
        && declared > limit as u64
    {
        tracing::warn!(declared, limit, "request body too large");
        return BadAdmissionReview::TooLarge { limit }.into_response();
    }
    // Reserve what the body may take for as long as the request is handled: its exact size
    // when known (0 for a bodiless GET), else the limit.
    let exact = axum::body::HttpBody::size_hint(req.body()).exact();
    let reserve = exact
        .or(declared)
        .map_or(limit, |n| (n as usize).min(limit));
    let _reserved = match u32::try_from(reserve)
        .ok()
        .and_then(|n| limits.budget.clone().try_acquire_many_owned(n).ok())
    {
        Some(permit) => permit,
        None => {
            tracing::warn!(
                reserve,
                "request bodies in memory at their budget; answering 503"
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "too many large requests in flight, retry shortly\n",
            )
                .into_response();
        }
    };
    req.extensions_mut().insert(BodyLimit {
        limit,
        deadline: limits.read_deadline,
    });
    let req = req.map(|body| Body::new(http_body_util::Limited::new(body, limit)));
    next.run(req).await
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why a request could not be read as an AdmissionReview. Answered with 400 (413 when too large)
/// and a plain-text reason.
#[derive(Debug, thiserror::Error)]
pub enum BadAdmissionReview {
    #[error("content type must be application/json, got {0}")]
    ContentType(String),
    #[error("request body is empty, expected an AdmissionReview")]
    EmptyBody,
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("request body did not arrive within {0:?}")]
    SlowBody(Duration),
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body is nested too deeply to be an AdmissionReview: {0}")]
    TooDeep(String),
    #[error("request body is not an AdmissionReview: {0}")]
    NotAdmissionReview(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

impl BadAdmissionReview {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for BadAdmissionReview {
    fn into_response(self) -> Response {
        (self.status(), format!("{self}\n")).into_response()
    }
}

/// Checks that a request declares a JSON body.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), BadAdmissionReview> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(BadAdmissionReview::ContentType("no Content-Type".into()));
    };
    let text = value.to_str().unwrap_or_default();
    let media_type = text.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
        Ok(())
    } else {
        Err(BadAdmissionReview::ContentType(format!("{text:?}")))
    }
}

/// Decodes an admission.k8s.io/v1 (or v1beta1) AdmissionReview body into its request. Depth is
/// bounded by serde_json's recursion limit (128), so hostile nesting is an error, not a crash.
pub fn decode_admission_review(
    body: &[u8],
) -> Result<AdmissionRequest<DynamicObject>, BadAdmissionReview> {
    decode_review(body)
}

/// Decodes an AdmissionReview whose objects are read as `K`: a type that holds only what a
/// decision reads skips the rest of each object without building it.
///
/// The request is read as [`RequestWire`], the fields decisions and logs use; `userInfo`,
/// `options`, `requestKind`, `requestResource` and `requestSubResource` are skipped by the JSON
/// reader, and left empty in the returned request.
pub fn decode_review<K>(body: &[u8]) -> Result<AdmissionRequest<K>, BadAdmissionReview>
where
    K: kube::Resource + serde::de::DeserializeOwned,
{
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BadAdmissionReview::EmptyBody);
    }
    let review: ReviewWire<K> = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        if message.contains("recursion limit") {
            BadAdmissionReview::TooDeep(message)
        } else if e.is_syntax() || e.is_eof() {
            BadAdmissionReview::MalformedJson(message)
        } else {
            BadAdmissionReview::NotAdmissionReview(message)
        }
    })?;
    let kind = review.kind.as_str();
    let api_version = review.api_version.as_str();
    if kind != "AdmissionReview"
        || !matches!(
            api_version,
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(BadAdmissionReview::NotAdmissionReview(format!(
            "kind {kind:?} apiVersion {api_version:?}, expected kind \"AdmissionReview\" apiVersion \"admission.k8s.io/v1\""
        )));
    }
    let request = review.request.ok_or(BadAdmissionReview::NoRequest)?;
    Ok(request.into_request(TypeMeta {
        api_version: review.api_version,
        kind: review.kind,
    }))
}

/// An AdmissionReview as read off the wire. Not kube's `AdmissionReview`: that one flattens its
/// type fields, which makes serde buffer them, and reads every field of the request.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewWire<K> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<RequestWire<K>>,
}

/// The fields of an AdmissionRequest that healthscope reads. Unknown fields are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestWire<K> {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(default = "Option::default")]
    object: Option<K>,
    #[serde(default = "Option::default")]
    old_object: Option<K>,
    #[serde(default)]
    dry_run: bool,
}

impl<K: kube::Resource> RequestWire<K> {
    fn into_request(self, types: TypeMeta) -> AdmissionRequest<K> {
        AdmissionRequest {
            types,
            uid: self.uid,
            kind: self.kind,
            resource: self.resource,
            sub_resource: self.sub_resource,
            request_kind: None,
            request_resource: None,
            request_sub_resource: None,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            user_info: UserInfo::default(),
            object: self.object,
            old_object: self.old_object,
            dry_run: self.dry_run,
            options: None,
        }
    }
}

/// Extracts the [`AdmissionRequest`] of a request whose body is an AdmissionReview, its objects
/// read as `K` (whole, by default); rejects anything else with a [`BadAdmissionReview`]
/// response.
#[derive(Debug)]
pub struct AdmissionReviewRequest<K: kube::Resource = DynamicObject>(pub AdmissionRequest<K>);

impl<S, K> FromRequest<S> for AdmissionReviewRequest<K>
where
    S: Send + Sync,
    K: kube::Resource + serde::de::DeserializeOwned,
{
    type Rejection = BadAdmissionReview;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        check_content_type(req.headers())?;
        let BodyLimit { limit, deadline } =
            req.extensions()
                .get::<BodyLimit>()
                .copied()
                .unwrap_or(BodyLimit {
                    limit: DEFAULT_BODY_LIMIT,
                    deadline: BODY_READ_DEADLINE,
                });
        let body = tokio::time::timeout(deadline, axum::body::to_bytes(req.into_body(), limit))
            .await
            .map_err(|_| {
                tracing::warn!(?deadline, "request body too slow; answering 408");
                BadAdmissionReview::SlowBody(deadline)
            })?
            .map_err(|e| {
                if is_length_limit(&e) {
                    BadAdmissionReview::TooLarge { limit }
                } else {
                    BadAdmissionReview::Body(e.to_string())
                }
            })?;
        decode_review(&body).map(Self)
    }
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The HTTP response carrying an AdmissionReview with `response` (uid echoed from the request
/// it was built from, in the request's apiVersion).
pub fn review_response(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}
