//! HTTPS plumbing for the admission webhook: rustls, certificate reload, body limits, decoding.
//!
//! The server speaks TLS 1.2 and 1.3 (rustls on aws-lc-rs) and offers HTTP/2 and HTTP/1.1 by
//! ALPN. The serving certificate and key are read from files and picked up again when the files
//! change, so a rotated Kubernetes Secret is served to new connections without a restart; a
//! broken replacement is logged, counted and ignored while the previous certificate stays in use.
//!
//! Handlers come from the caller as an [`axum::Router`]. They read the request with
//! [`AdmissionReviewRequest`] (or [`decode_admission_review`]) and answer with
//! [`review_response`]; every request body is capped at [`WebhookServerConfig::body_limit`].

use std::error::Error as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// The largest request body accepted: an AdmissionReview carries the old and the new object (up
/// to 3 MiB each, the API server's own limit) plus overhead. The same figure controller-runtime uses.
pub const DEFAULT_BODY_LIMIT: usize = 7 * 1024 * 1024;
/// A Unix time as an RFC 3339 date for the log (the number itself when out of range).
fn unix_to_date(seconds: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

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
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];
const CONTENT_TYPE_JSON: &str = "application/json";

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

/// Serves `router` over HTTPS until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    config: WebhookServerConfig,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    bind(config).await?.run(router, shutdown).await
}

/// Loads the serving certificate and binds the listening socket, without serving yet, so the
/// caller learns the bound address (port 0 picks a free one) and the certificate handle first.
pub async fn bind(config: WebhookServerConfig) -> Result<BoundWebhookServer, WebhookError> {
    let certificate = ServingCertificate::load(&config.cert_file, &config.key_file)?;
    let bind_error = |source| WebhookError::Bind {
        addr: config.addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let listener = listener.into_std().map_err(bind_error)?;
    Ok(BoundWebhookServer {
        listener,
        local_addr,
        config,
        certificate,
    })
}

/// A webhook server with its socket bound and its certificate loaded.
#[derive(Debug)]
pub struct BoundWebhookServer {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    config: WebhookServerConfig,
    certificate: ServingCertificate,
}

impl BoundWebhookServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate being served; it follows reloads (e.g. for an expiry metric).
    pub fn certificate(&self) -> ServingCertificate {
        self.certificate.clone()
    }

    /// Serves `router` until `shutdown` completes; then stops accepting connections and lets
    /// in-flight requests finish for up to [`WebhookServerConfig::shutdown_grace`].
    ///
    /// When the certificate is reloaded, connections opened under the previous one are closed
    /// gracefully (HTTP/2 GOAWAY, or `Connection: close` after the current HTTP/1.1 response),
    /// so clients that keep connections alive move to the new certificate promptly.
    pub async fn run(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), WebhookError> {
        let addr = self.local_addr;
        let serve_error = |source| WebhookError::Serve { addr, source };
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(self.certificate.server_config()?));
        let _watcher = AbortOnDrop(
            self.certificate
                .spawn_reload_watcher(self.config.reload_interval),
        );
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(serve_error)?;
        let app = limit_request_bodies(
            router,
            self.config.body_limit,
            self.config.body_budget,
            self.config.body_read_deadline,
            self.config.request_deadline,
        );
        let (draining_tx, draining) = watch::channel(false);
        let mut connections = tokio::task::JoinSet::new();
        tracing::info!(%addr, cert_file = %self.config.cert_file.display(), "webhook server listening");

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        connections.spawn(serve_connection(
                            tcp,
                            peer,
                            tls.clone(),
                            app.clone(),
                            self.certificate.subscribe(),
                            draining.clone(),
                        ));
                    }
                    Err(err) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%addr, error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }

        drop(listener);
        let grace = self.config.shutdown_grace;
        tracing::info!(%addr, connections = connections.len(), grace_seconds = grace.as_secs(), "webhook server draining");
        let _ = draining_tx.send(true);
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(%addr, connections = connections.len(), "shutdown grace period over; closing remaining connections");
            connections.abort_all();
        }
        tracing::info!(%addr, "webhook server stopped");
        Ok(())
    }
}

/// How long a client may take to complete the TLS handshake, and to send request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one TCP connection: TLS, then HTTP/1.1 or HTTP/2, until the client closes it, the
/// certificate changes or the server drains.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    app: Router,
    mut certificate_changes: watch::Receiver<CertInfo>,
    mut draining: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    certificate_changes.mark_unchanged();
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    // Pings find HTTP/2 peers that vanished without closing, so their connections end.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = *draining.borrow();
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            Ok(()) = certificate_changes.changed(), if !closing => {
                tracing::debug!(%peer, "closing a connection that uses the previous certificate");
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            Ok(()) = draining.changed(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Aborts a background task when the owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Serving certificate and reload

/// What is known about the certificate being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// The leaf's notBefore, in seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// The leaf's serial number, lower-case hex.
    pub serial_hex: String,
    /// The leaf's subject, RFC 4514 style.
    pub subject: String,
}

impl CertInfo {
    /// The leaf's notAfter as a time (e.g. for `Metrics::set_cert_expiry`).
    pub fn not_after(&self) -> std::time::SystemTime {
        let seconds = Duration::from_secs(self.not_after_unix.unsigned_abs());
        if self.not_after_unix >= 0 {
            std::time::UNIX_EPOCH + seconds
        } else {
            std::time::UNIX_EPOCH - seconds
        }
    }
}

/// The serving certificate and key, read from files and replaced when the files change.
/// Cheap to clone; all clones share the same state.
#[derive(Clone)]
pub struct ServingCertificate {
    state: Arc<CertState>,
}

struct CertState {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    info: watch::Sender<CertInfo>,
    reload_failures: AtomicU64,
    /// Digest of the file contents last tried, good or bad, so a broken pair is reported once.
    last_attempt: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("cert_file", &self.state.cert_file)
            .field("key_file", &self.state.key_file)
            .field("info", &*self.state.info.borrow())
            .finish_non_exhaustive()
    }
}

impl ServingCertificate {
    /// Reads and checks the certificate and key; fails when they cannot be served.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, WebhookError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert_pem = read_file(cert_file)?;
        let key_pem = read_file(key_file)?;
        let (key, info) = parse_certified_key(&provider, cert_file, &cert_pem, key_file, &key_pem)?;
        tracing::info!(
            cert_file = %cert_file.display(),
            serial = %info.serial_hex,
            not_after = %unix_to_date(info.not_after_unix),
            "serving certificate loaded"
        );
        Ok(Self {
            state: Arc::new(CertState {
                cert_file: cert_file.to_owned(),
                key_file: key_file.to_owned(),
                provider,
                current: ArcSwap::from_pointee(key),
                info: watch::Sender::new(info),
                reload_failures: AtomicU64::new(0),
                last_attempt: Mutex::new(digest(&cert_pem, &key_pem)),
            }),
        })
    }

    /// The certificate served to new connections now.
    pub fn info(&self) -> CertInfo {
        self.state.info.borrow().clone()
    }

    /// Follows the served certificate: a new value after every successful reload.
    pub fn subscribe(&self) -> watch::Receiver<CertInfo> {
        self.state.info.subscribe()
    }

    /// How many times new file contents could not be loaded (the old certificate stayed).
    pub fn reload_failures(&self) -> u64 {
        self.state.reload_failures.load(Ordering::Relaxed)
    }

    /// Reads the files and, when their contents differ from the last attempt, loads them.
    /// Returns whether a new certificate is now served. On error the previous one stays.
    pub async fn reload_if_changed(&self) -> Result<bool, WebhookError> {
        let state = &self.state;
        let cert_pem = read_file_async(&state.cert_file).await?;
        let key_pem = read_file_async(&state.key_file).await?;
        let seen = digest(&cert_pem, &key_pem);
        {
            let mut last = state
                .last_attempt
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *last == seen {
                return Ok(false);
            }
            *last = seen;
        }
        let (key, info) = parse_certified_key(
            &state.provider,
            &state.cert_file,
            &cert_pem,
            &state.key_file,
            &key_pem,
        )?;
        state.current.store(Arc::new(key));
        state.info.send_replace(info);
        Ok(true)
    }

    /// Checks the files every `interval` and swaps in new contents; logs and counts failures.
    pub fn spawn_reload_watcher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let certificate = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the files were just loaded
            loop {
                ticks.tick().await;
                certificate.reload_once().await;
            }
        })
    }

    async fn reload_once(&self) {
        match self.reload_if_changed().await {
            Ok(false) => {}
            Ok(true) => {
                let info = self.info();
                tracing::info!(
                    cert_file = %self.state.cert_file.display(),
                    serial = %info.serial_hex,
                    not_after = info.not_after_unix,
                    "serving certificate reloaded"
                );
            }
            Err(err) => {
                // Files mid-update (a missing key, half a rename) also land here; the next
                // change is tried again, and until then the previous certificate is served.
                self.state.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    cert_file = %self.state.cert_file.display(),
                    key_file = %self.state.key_file.display(),
                    error = %err,
                    "new certificate files could not be loaded; still serving the previous certificate"
                );
            }
        }
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, ALPN h2 and http/1.1) that picks the
    /// current certificate at every handshake.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, WebhookError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.state.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCert(self.state.clone())));
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        // No session resumption: a resumed session skips the certificate, so a client could
        // keep trusting a replaced one. Webhook clients keep connections open; full handshakes
        // are rare and cheap (ECDSA).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

/// Hands rustls whatever certificate is current at handshake time.
struct CurrentCert(Arc<CertState>);

impl std::fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentCert")
            .field("cert_file", &self.0.cert_file)
            .finish()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}

fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((cert_pem.len() as u64).to_be_bytes());
    hasher.update(cert_pem);
    hasher.update(key_pem);
    hasher.finalize().into()
}

fn read_file(path: &Path) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(path).map_err(|source| WebhookError::Read {
        path: path.to_owned(),
        source,
    })
}

async fn read_file_async(path: &Path) -> Result<Vec<u8>, WebhookError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| WebhookError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Parses a PEM chain and key into something rustls can serve, checking that they match.
fn parse_certified_key(
    provider: &CryptoProvider,
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<(CertifiedKey, CertInfo), WebhookError> {
    let cert_error = |reason: String| WebhookError::Certificate {
        path: cert_file.to_owned(),
        reason,
    };
    let key_error = |reason: String| WebhookError::PrivateKey {
        path: key_file.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error("no CERTIFICATE block found".into()));
    };
    let info = cert_info(leaf).map_err(cert_error)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| key_error(format!("no usable PEM private key: {e}")))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key_error(format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    // `Unknown` (the key type cannot tell) is left to the handshake; a mismatch is certain.
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified.keys_match()
    {
        return Err(WebhookError::KeyMismatch {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
        });
    }
    Ok((certified, info))
}

/// Reads the validity and serial of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    Ok(CertInfo {
        not_after_unix: validity.not_after.timestamp(),
        not_before_unix: validity.not_before.timestamp(),
        serial_hex: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        subject: cert.subject().to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Request bodies

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
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BadAdmissionReview::EmptyBody);
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        if message.contains("recursion limit") {
            BadAdmissionReview::TooDeep(message)
        } else if e.is_syntax() || e.is_eof() {
            BadAdmissionReview::MalformedJson(message)
        } else {
            BadAdmissionReview::NotAdmissionReview(message)
        }
    })?;
    let kind = review.types.kind.as_str();
    let api_version = review.types.api_version.as_str();
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
    review.try_into().map_err(|_| BadAdmissionReview::NoRequest)
}

/// Extracts the [`AdmissionRequest`] of a request whose body is an AdmissionReview; rejects
/// anything else with a [`BadAdmissionReview`] response.
#[derive(Debug)]
pub struct AdmissionReviewRequest(pub AdmissionRequest<DynamicObject>);

impl<S: Send + Sync> FromRequest<S> for AdmissionReviewRequest {
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
        decode_admission_review(&body).map(Self)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertificateAuthority, DEFAULT_CA_VALIDITY, DEFAULT_VALIDITY, SubjectNames};
    use axum::routing::post;
    use rustls::pki_types::ServerName;
    use std::time::Instant;
    use tokio::sync::oneshot;

    fn test_ca() -> CertificateAuthority {
        CertificateAuthority::generate("webhook test CA", DEFAULT_CA_VALIDITY).unwrap()
    }

    fn loopback_names() -> SubjectNames {
        SubjectNames {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    /// Replaces a file the way a Secret update does: new contents appear atomically.
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    struct Running {
        addr: SocketAddr,
        ca_pem: String,
        certificate: ServingCertificate,
        dir: tempfile::TempDir,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<Result<(), WebhookError>>,
    }

    impl Running {
        fn cert_file(&self) -> PathBuf {
            self.dir.path().join("tls.crt")
        }
        fn key_file(&self) -> PathBuf {
            self.dir.path().join("tls.key")
        }
        fn url(&self, path: &str) -> String {
            format!("https://{}{path}", self.addr)
        }
        fn client(&self) -> reqwest::ClientBuilder {
            reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
        }
    }

    async fn allow(AdmissionReviewRequest(request): AdmissionReviewRequest) -> Response {
        review_response(AdmissionResponse::from(&request))
    }

    async fn slow_allow(request: AdmissionReviewRequest) -> Response {
        tokio::time::sleep(Duration::from_millis(800)).await;
        allow(request).await
    }

    fn test_router() -> Router {
        Router::new()
            .route("/validate", post(allow))
            .route("/slow", post(slow_allow))
    }

    async fn start(ca: &CertificateAuthority) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let issued = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &issued.key_pem).unwrap();
        let config = WebhookServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
        );
        let server = bind(config).await.unwrap();
        let addr = server.local_addr();
        let certificate = server.certificate();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(test_router(), async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            ca_pem: ca.cert_pem().to_owned(),
            certificate,
            dir,
            stop: Some(stop),
            task,
        }
    }

    fn review(uid: &str, object: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "operation": "UPDATE",
                "userInfo": {"username": "tester"},
                "name": "big",
                "namespace": "default",
                "object": object.clone(),
                "oldObject": object,
            }
        })
    }

    fn config_map(data_bytes: usize) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "default"},
            "data": {"blob": "x".repeat(data_bytes)},
        })
    }

    async fn connect(
        addr: SocketAddr,
        ca_pem: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// Connects with tokio-rustls and reports what was negotiated and which certificate was served.
    async fn handshake(
        addr: SocketAddr,
        ca_pem: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Result<(rustls::ProtocolVersion, Option<Vec<u8>>, CertInfo), std::io::Error> {
        let tls = connect(addr, ca_pem, versions, alpn).await?;
        let conn = tls.get_ref().1;
        let leaf = conn.peer_certificates().unwrap()[0].clone();
        Ok((
            conn.protocol_version().unwrap(),
            conn.alpn_protocol().map(<[u8]>::to_vec),
            cert_info(&leaf).unwrap(),
        ))
    }

    #[tokio::test]
    async fn webhook_serves_tls12_and_tls13_with_h2_and_http11() {
        let ca = test_ca();
        let server = start(&ca).await;
        use rustls::version::{TLS12, TLS13};
        for (versions, expected) in [
            (&[&TLS12][..], rustls::ProtocolVersion::TLSv1_2),
            (&[&TLS13][..], rustls::ProtocolVersion::TLSv1_3),
        ] {
            for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
                let (version, negotiated, served) =
                    handshake(server.addr, &server.ca_pem, versions, &[alpn])
                        .await
                        .unwrap();
                assert_eq!(version, expected);
                assert_eq!(negotiated.as_deref(), Some(alpn));
                assert_eq!(served, server.certificate.info());
            }
        }

        // Whole requests over each protocol, uid echoed.
        for (client, version) in [
            (server.client().build().unwrap(), reqwest::Version::HTTP_2),
            (
                server.client().http1_only().build().unwrap(),
                reqwest::Version::HTTP_11,
            ),
            (
                server
                    .client()
                    .tls_version_max(reqwest::tls::Version::TLS_1_2)
                    .build()
                    .unwrap(),
                reqwest::Version::HTTP_2,
            ),
        ] {
            let response = client
                .post(server.url("/validate"))
                .json(&review("uid-echo-1", config_map(10)))
                .send()
                .await
                .unwrap();
            assert_eq!(response.version(), version);
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(body["kind"], "AdmissionReview");
            assert_eq!(body["response"]["uid"], "uid-echo-1");
            assert_eq!(body["response"]["allowed"], true);
        }
    }

    #[tokio::test]
    async fn webhook_offers_h2_then_http11_by_alpn() {
        let ca = test_ca();
        let dir = tempfile::tempdir().unwrap();
        let issued = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
        std::fs::write(dir.path().join("c"), &issued.cert_pem).unwrap();
        std::fs::write(dir.path().join("k"), &issued.key_pem).unwrap();
        let cert = ServingCertificate::load(&dir.path().join("c"), &dir.path().join("k")).unwrap();
        let config = cert.server_config().unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[tokio::test]
    async fn webhook_accepts_a_full_review_and_answers_413_above_the_limit() {
        let ca = test_ca();
        let server = start(&ca).await;
        let client = server.client().build().unwrap();

        // Old and new object of ~3.45 MiB each: ~6.9 MiB in all, the most the API server sends.
        let full = serde_json::to_vec(&review("big-1", config_map(3_617_000))).unwrap();
        assert!(
            full.len() > 6_900_000 && full.len() < DEFAULT_BODY_LIMIT,
            "{}",
            full.len()
        );
        for client in [
            client.clone(),
            server.client().http1_only().build().unwrap(),
        ] {
            let response = client
                .post(server.url("/validate"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(full.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["response"]["uid"], "big-1");
        }

        // Declared too large: refused before the body is read.
        let too_big = vec![b' '; DEFAULT_BODY_LIMIT + 1];
        let response = client
            .post(server.url("/validate"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(too_big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("exceeds the limit of 7340032 bytes")
        );

        // Streamed without a length (chunked HTTP/1.1): reading stops at the limit.
        let response = post_chunked(server.addr, &server.ca_pem, "/validate", &too_big).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains("exceeds the limit"), "{response}");
    }

    /// POSTs `body` with chunked transfer encoding over HTTP/1.1 and returns the raw response.
    async fn post_chunked(addr: SocketAddr, ca_pem: &str, path: &str, body: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = connect(addr, ca_pem, &[&rustls::version::TLS13], &[b"http/1.1"])
            .await
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        for chunk in body.chunks(256 * 1024) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            // The server may answer and stop reading before the end; that is the point.
            if tls.write_all(&framed).await.is_err() {
                break;
            }
        }
        let _ = tls.write_all(b"0\r\n\r\n").await;
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn webhook_answers_400_for_bad_requests() {
        let ca = test_ca();
        let server = start(&ca).await;
        let client = server.client().build().unwrap();
        let good = serde_json::to_vec(&review("u", config_map(1))).unwrap();
        let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
            ("wrong content type", Some("text/plain"), good.clone(), "content type must be application/json"),
            ("no content type", None, good.clone(), "content type must be application/json, got no Content-Type"),
            ("empty body", Some("application/json"), vec![], "request body is empty"),
            ("not JSON", Some("application/json"), b"{not json".to_vec(), "not valid JSON"),
            ("not a review", Some("application/json"), br#"{"apiVersion":"v1","kind":"ConfigMap"}"#.to_vec(), "not an AdmissionReview"),
            ("no request", Some("application/json; charset=utf-8"), br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), "AdmissionReview has no request"),
            ("request of the wrong shape", Some("application/json"), br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#.to_vec(), "not an AdmissionReview"),
        ];
        for (case, content_type, body, expected) in cases {
            let mut request = client.post(server.url("/validate")).body(body);
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 400, "{case}");
            let text = response.text().await.unwrap();
            assert!(text.contains(expected), "{case}: {text}");
        }
    }

    /// An AdmissionReview whose object carries `depth` nested arrays, or (`in_unknown_field`)
    /// the same nesting in a field nobody reads.
    fn nested_review(depth: usize, in_unknown_field: bool) -> Vec<u8> {
        let mut body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"deep","kind":{"group":"","version":"v1","kind":"ConfigMap"},"resource":{"group":"","version":"v1","resource":"configmaps"},"operation":"CREATE","userInfo":{},"#.to_vec();
        if in_unknown_field {
            body.extend(br#""unknownField":"#);
        } else {
            body.extend(br#""object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":"#);
        }
        body.extend(std::iter::repeat_n(b'[', depth));
        body.extend(std::iter::repeat_n(b']', depth));
        body.extend(if in_unknown_field {
            &b"}}"[..]
        } else {
            &b"}}}"[..]
        });
        body
    }

    #[test]
    fn webhook_decode_rejects_deep_nesting_without_overflowing() {
        for depth in [129, 10_000, 1_000_000] {
            let err = decode_admission_review(&nested_review(depth, false)).unwrap_err();
            assert!(
                matches!(err, BadAdmissionReview::TooDeep(_)),
                "{depth}: {err}"
            );
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            // serde_json skips unknown fields without recursing: harmless at any depth.
            let request = decode_admission_review(&nested_review(depth, true)).unwrap();
            assert_eq!(request.uid, "deep");
        }
        // Unclosed nesting too.
        let mut open = nested_review(10_000, false);
        open.truncate(open.len() - 10_003);
        assert!(decode_admission_review(&open).is_err());
        // Nesting within the limit is fine.
        let request = decode_admission_review(&nested_review(100, false)).unwrap();
        assert_eq!(request.uid, "deep");
    }

    #[tokio::test]
    async fn webhook_answers_400_for_deep_nesting_over_https() {
        let ca = test_ca();
        let server = start(&ca).await;
        let client = server.client().build().unwrap();
        for depth in [129, 10_000] {
            let response = client
                .post(server.url("/validate"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(nested_review(depth, false))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400);
            assert!(response.text().await.unwrap().contains("nested too deeply"));
        }
    }

    #[test]
    fn webhook_decode_echoes_uid_and_version() {
        let mut body = review("uid-v1beta1", config_map(1));
        body["apiVersion"] = "admission.k8s.io/v1beta1".into();
        let request = decode_admission_review(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(request.uid, "uid-v1beta1");
        let answer = serde_json::to_value(AdmissionResponse::from(&request).into_review()).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
        assert_eq!(answer["response"]["uid"], "uid-v1beta1");
        assert!(answer.get("request").is_none());

        body["apiVersion"] = "admission.k8s.io/v2".into();
        let err = decode_admission_review(&serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert!(err.to_string().contains("admission.k8s.io/v2"), "{err}");
    }

    #[tokio::test]
    async fn webhook_serves_a_swapped_certificate_without_restart() {
        let ca = test_ca();
        let server = start(&ca).await;
        use rustls::version::TLS13;
        let (_, _, first) = handshake(server.addr, &server.ca_pem, &[&TLS13], &[b"h2"])
            .await
            .unwrap();
        let mut updates = server.certificate.subscribe();

        // A new certificate from the same CA, written key first as a Secret update would land.
        let next = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
        replace(&server.key_file(), &next.key_pem);
        replace(&server.cert_file(), &next.cert_pem);
        let started = Instant::now();
        let served = loop {
            let (_, _, served) = handshake(server.addr, &server.ca_pem, &[&TLS13], &[b"h2"])
                .await
                .unwrap();
            if served != first {
                break served;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "not reloaded within 5s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let expected =
            cert_info(&CertificateDer::from_pem_slice(next.cert_pem.as_bytes()).unwrap()).unwrap();
        assert_eq!(served, expected);
        let days_left = expected
            .not_after()
            .duration_since(std::time::SystemTime::now())
            .unwrap()
            .as_secs()
            / 86_400;
        assert!((364..=365).contains(&days_left), "{days_left}");
        updates.changed().await.unwrap();
        assert_eq!(*updates.borrow(), expected);

        // Broken files are counted and ignored: the last good certificate keeps being served.
        replace(
            &server.cert_file(),
            "-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n",
        );
        let started = Instant::now();
        while server.certificate.reload_failures() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "failure not counted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, _, still) = handshake(server.addr, &server.ca_pem, &[&TLS13], &[b"h2"])
            .await
            .unwrap();
        assert_eq!(still, expected);

        // A certificate whose key is elsewhere is refused too.
        let other = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
        replace(&server.cert_file(), &other.cert_pem);
        let err = server.certificate.reload_if_changed().await.unwrap_err();
        assert!(matches!(err, WebhookError::KeyMismatch { .. }), "{err}");
        assert_eq!(server.certificate.info(), expected);
    }

    #[tokio::test]
    async fn webhook_moves_kept_alive_clients_to_a_swapped_certificate() {
        let ca = test_ca();
        let server = start(&ca).await;
        let first = server.certificate.info();
        let served_serial = |response: &reqwest::Response| {
            let info = response
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .unwrap();
            cert_info(info.peer_certificate().unwrap())
                .unwrap()
                .serial_hex
        };
        let clients = [
            server.client().tls_info(true).build().unwrap(),
            server.client().tls_info(true).http1_only().build().unwrap(),
        ];
        for client in &clients {
            let response = client
                .post(server.url("/validate"))
                .json(&review("before", config_map(1)))
                .send()
                .await
                .unwrap();
            assert_eq!(served_serial(&response), first.serial_hex);
        }

        let next = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
        replace(&server.key_file(), &next.key_pem);
        replace(&server.cert_file(), &next.cert_pem);
        let mut updates = server.certificate.subscribe();
        tokio::time::timeout(Duration::from_secs(5), updates.changed())
            .await
            .expect("reloaded within 5s")
            .unwrap();
        let second = server.certificate.info();
        assert_ne!(second.serial_hex, first.serial_hex);

        // The same clients, whose pooled connections were closed gracefully, now see the new one.
        for client in &clients {
            let started = Instant::now();
            loop {
                let response = client
                    .post(server.url("/validate"))
                    .json(&review("after", config_map(1)))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                if served_serial(&response) == second.serial_hex {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{client:?} kept the old connection"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    #[tokio::test]
    async fn webhook_answers_503_when_bodies_in_memory_reach_the_budget() {
        use tower::ServiceExt;
        let gate = Arc::new(tokio::sync::Notify::new());
        let hold = |State(gate): State<Arc<tokio::sync::Notify>>, body: axum::body::Bytes| async move {
            gate.notified().await;
            body.len().to_string()
        };
        let app = limit_request_bodies(
            Router::new()
                .route("/hold", post(hold))
                .route(
                    "/echo",
                    post(|b: axum::body::Bytes| async move { b.len().to_string() }),
                )
                .with_state(gate.clone()),
            1000,
            1500,
            BODY_READ_DEADLINE,
            REQUEST_DEADLINE,
        );
        let request = |path: &str, len: usize| {
            axum::http::Request::post(path)
                .header(header::CONTENT_LENGTH, len)
                .body(Body::from(vec![b'x'; len]))
                .unwrap()
        };
        let held = tokio::spawn(app.clone().oneshot(request("/hold", 1000)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let busy = app.clone().oneshot(request("/echo", 1000)).await.unwrap();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let small = app.clone().oneshot(request("/echo", 400)).await.unwrap();
        assert_eq!(small.status(), StatusCode::OK, "small bodies still fit");
        let unknown_length = axum::http::Request::post("/echo")
            .body(Body::from_stream(futures::stream::iter([Ok::<
                _,
                std::io::Error,
            >(
                axum::body::Bytes::from_static(b"abc"),
            )])))
            .unwrap();
        let unknown = app.clone().oneshot(unknown_length).await.unwrap();
        assert_eq!(
            unknown.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "a body of unknown length counts as the limit"
        );
        let bodiless = axum::http::Request::post("/echo")
            .body(Body::empty())
            .unwrap();
        let bodiless = app.clone().oneshot(bodiless).await.unwrap();
        assert_eq!(
            bodiless.status(),
            StatusCode::OK,
            "no body, nothing reserved"
        );
        gate.notify_one();
        assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
        let after = app.clone().oneshot(request("/echo", 1000)).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK, "the budget is given back");
    }

    /// Bodies that trickle in (a slow-body attack on the fail-closed webhook) are cut off at
    /// [`BODY_READ_DEADLINE`] with 408, and the body budget they held serves real reviews again.
    #[tokio::test]
    async fn webhook_cuts_off_slow_bodies_and_frees_their_budget() {
        use futures::StreamExt;
        use tower::ServiceExt;
        let deadline = Duration::from_millis(300);
        let app = limit_request_bodies(
            Router::new().route(
                "/review",
                post(|AdmissionReviewRequest(r): AdmissionReviewRequest| async move { r.uid }),
            ),
            1000,
            1500,
            deadline,
            REQUEST_DEADLINE,
        );
        let slow = || {
            let trickle = futures::stream::once(async {
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{"))
            })
            .chain(futures::stream::pending());
            axum::http::Request::post("/review")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, 1000)
                .body(Body::from_stream(trickle))
                .unwrap()
        };
        let review = || {
            let body =
                serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "real", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "operation": "CREATE", "userInfo": {}}})
                .to_string();
            axum::http::Request::post("/review")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from(body))
                .unwrap()
        };
        let held = tokio::spawn(app.clone().oneshot(slow()));
        tokio::task::yield_now().await;
        // The slow body holds 1000 of the 1500 bytes; a real review still fits beside it.
        let real = app.clone().oneshot(review()).await.unwrap();
        assert_eq!(real.status(), StatusCode::OK);
        let cut = held.await.unwrap().unwrap();
        assert_eq!(cut.status(), StatusCode::REQUEST_TIMEOUT);
        // Its reservation is back: two more slow bodies in a row are cut off too, never a 503.
        for _ in 0..2 {
            let cut = app.clone().oneshot(slow()).await.unwrap();
            assert_eq!(cut.status(), StatusCode::REQUEST_TIMEOUT);
        }
        assert_eq!(
            app.oneshot(review()).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn webhook_answers_a_stuck_request_503_at_the_request_deadline() {
        use tower::ServiceExt;
        let app = limit_request_bodies(
            Router::new().route(
                "/stuck",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "never"
                }),
            ),
            1000,
            1500,
            BODY_READ_DEADLINE,
            Duration::from_millis(200),
        );
        let started = std::time::Instant::now();
        let answer = app
            .oneshot(
                axum::http::Request::post("/stuck")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    /// Kubernetes mounts a Secret as `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>/`,
    /// and updates it by pointing `..data` at a new directory.
    #[tokio::test]
    async fn webhook_reloads_a_secret_volume_symlink_swap() {
        use std::os::unix::fs::symlink;
        let ca = test_ca();
        let dir = tempfile::tempdir().unwrap();
        let publish = |version: &str, issued: &crate::certs::IssuedCert| {
            let data = dir.path().join(format!("..{version}"));
            std::fs::create_dir(&data).unwrap();
            std::fs::write(data.join("tls.crt"), &issued.cert_pem).unwrap();
            std::fs::write(data.join("tls.key"), &issued.key_pem).unwrap();
            let link = dir.path().join("..data_tmp");
            symlink(format!("..{version}"), &link).unwrap();
            std::fs::rename(&link, dir.path().join("..data")).unwrap();
        };
        let first = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
        publish("2026_01", &first);
        symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
        symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
        let certificate =
            ServingCertificate::load(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
                .unwrap();
        let before = certificate.info();
        assert!(
            !certificate.reload_if_changed().await.unwrap(),
            "nothing changed yet"
        );

        let second = ca.issue(&loopback_names(), DEFAULT_VALIDITY).unwrap();
        publish("2026_02", &second);
        assert!(certificate.reload_if_changed().await.unwrap());
        let after = certificate.info();
        assert_ne!(after.serial_hex, before.serial_hex);
        assert_eq!(
            after,
            cert_info(&CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap())
                .unwrap()
        );
        assert!(!certificate.reload_if_changed().await.unwrap());
        assert_eq!(certificate.reload_failures(), 0);
    }

    #[tokio::test]
    async fn webhook_fails_to_start_without_a_usable_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let config = WebhookServerConfig::new("127.0.0.1:0".parse().unwrap(), &cert, &key);
        let err = bind(config.clone()).await.unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");

        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = bind(config).await.unwrap_err();
        assert!(matches!(err, WebhookError::Certificate { .. }), "{err}");
    }

    #[tokio::test]
    async fn webhook_drains_in_flight_requests_on_shutdown() {
        let ca = test_ca();
        let mut server = start(&ca).await;
        let client = server.client().build().unwrap();
        let in_flight = tokio::spawn(
            client
                .post(server.url("/slow"))
                .json(&review("slow-1", config_map(1)))
                .send(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.stop.take().unwrap().send(()).unwrap();
        let response = in_flight.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["response"]["uid"], "slow-1");
        tokio::time::timeout(Duration::from_secs(10), &mut server.task)
            .await
            .expect("the server stopped after draining")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    }
}
