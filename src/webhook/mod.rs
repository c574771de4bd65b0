//! The admission webhook's HTTPS wing: the server ([`server`]), TLS and certificate reload
//! ([`tls`]), review bodies, limits and decoding ([`review`]), the routes over the pure admission
//! decisions and their metrics ([`routes`]), and live reads for cache misses ([`live`]).
//!
//! The server speaks TLS 1.2 and 1.3 (rustls on aws-lc-rs) and offers HTTP/2 and HTTP/1.1 by
//! ALPN. The serving certificate and key are read from files and picked up again when the files
//! change, so a rotated Kubernetes Secret is served to new connections without a restart; a
//! broken replacement is logged, counted and ignored while the previous certificate stays in use.
//!
//! Handlers come from the caller as an [`axum::Router`]. They read the request with
//! [`AdmissionReviewRequest`] (or [`decode_admission_review`]) and answer with
//! [`review_response`]; every request body is capped at [`WebhookServerConfig::body_limit`].

mod live;
mod review;
mod routes;
mod server;
#[cfg(test)]
mod tests;
mod tls;

pub use live::{
    AdmissionState, LIVE_READ_BUDGET, LiveRead, MAX_LIVE_READS, MAX_LOOKUP_ROUNDS, MISS_MEMORY,
    with_live_reads,
};
pub use review::{
    AdmissionReviewRequest, BadAdmissionReview, check_content_type, decode_admission_review,
    decode_review, limit_request_bodies, review_response,
};
pub use routes::{RejectReason, router};
pub use server::{BoundWebhookServer, bind, serve};
pub use tls::{CertInfo, ServingCertificate, cert_info};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The largest request body accepted: an AdmissionReview carries the old and the new object (up
/// to 3 MiB each, the API server's own limit) plus overhead. The same figure controller-runtime uses.
pub const DEFAULT_BODY_LIMIT: usize = 7 * 1024 * 1024;

/// How often the certificate files are checked for changes.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// The most request-body bytes held in memory at once, across all requests. Beyond it new
/// requests are answered 503 at once instead of queueing until the API server times out.
pub const DEFAULT_BODY_BUDGET: usize = 64 * 1024 * 1024;
/// Longest time a request body may take to arrive. The API server sends a review at once and
/// waits at most 30 s (`timeoutSeconds`) for the answer; a body still trickling after this is
/// not from it, and would otherwise hold its share of the body budget for as long as it likes.
pub const BODY_READ_DEADLINE: Duration = Duration::from_secs(5);
/// Longest time one request may take from its arrival to its answer, body included. Admission
/// answers from caches within a bounded live-read budget; this ends anything else (a handler
/// stuck on a peer) before the API server's longest `timeoutSeconds` (30 s), freeing its body
/// budget and its stream.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Requests one HTTP/2 connection may have in flight at once; more are refused by the
/// protocol (REFUSED_STREAM), so one client cannot hold every handler.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;
/// How long in-flight requests may take to finish once shutdown begins.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Protocols offered by ALPN, preferred first.
pub(crate) const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];
pub(crate) const CONTENT_TYPE_JSON: &str = "application/json";

/// Where and how the webhook server listens.
#[derive(Debug, Clone)]
pub struct WebhookServerConfig {
    pub addr: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching the leaf certificate.
    pub key_file: PathBuf,
    /// Request bodies larger than this are answered with 413.
    pub body_limit: usize,
    /// Request bodies in memory at once, in bytes (a body without Content-Length counts as
    /// `body_limit`). Requests beyond it are answered 503 with Retry-After.
    pub body_budget: usize,
    /// A body that takes longer to arrive is answered 408, giving its budget back.
    pub body_read_deadline: Duration,
    /// Longest time from a request's arrival to its answer; 503 after it.
    pub request_deadline: Duration,
    /// How often `cert_file` and `key_file` are checked for new contents.
    pub reload_interval: Duration,
    /// How long in-flight requests may run after shutdown is requested.
    pub shutdown_grace: Duration,
}

impl WebhookServerConfig {
    /// A configuration with the default body limit, reload interval and shutdown grace.
    pub fn new(
        addr: SocketAddr,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            addr,
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            body_limit: DEFAULT_BODY_LIMIT,
            body_budget: DEFAULT_BODY_BUDGET,
            body_read_deadline: BODY_READ_DEADLINE,
            request_deadline: REQUEST_DEADLINE,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate file {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("private key file {}: {reason}", path.display())]
    PrivateKey { path: PathBuf, reason: String },
    #[error("private key {} does not belong to certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("binding the webhook server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("webhook server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
