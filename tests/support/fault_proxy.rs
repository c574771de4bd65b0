//! A fault-injecting HTTP proxy between a client under test and the test control plane.
//!
//! It listens on plain HTTP on loopback and forwards every request to the real API server with
//! an admin [`kube::Client`], streaming the answer back unchanged (so watches work). Rules,
//! switched at runtime, make it answer 5xx or 409 instead, wait before forwarding, drop the
//! connection without an answer, lose the answer of a request it did forward, cut watches
//! mid-stream, or expire them (410). Every rule fires on every Nth request it matches, so a run
//! is deterministic for a given order of requests; counters say what really happened.
//!
//! ```ignore
//! let proxy = FaultProxy::start().await?;
//! proxy.set_rules([Rule::every(3, Fault::ServerError(500)).path("healthscopes")]);
//! let client = proxy.client(); // no credentials: the proxy authenticates upstream as admin
//! ```
//!
//! kube's client reads a watch body that breaks mid-stream as a resumable end, the same as a
//! clean one (after a warning), and retries 503/504 by itself.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How many injected faults [`FaultProxy::injected`] remembers.
const LOG_CAPACITY: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding the proxy on loopback: {0}")]
    Bind(#[source] std::io::Error),
    #[error("building a client: {0}")]
    Client(#[source] kube::Error),
    #[error("reading the request body: {0}")]
    RequestBody(#[source] hyper::Error),
    #[error("building the upstream request: {0}")]
    Request(#[source] hyper::http::Error),
    /// Returned from the service on purpose: hyper then closes the connection unanswered.
    #[error("connection dropped by the fault proxy")]
    InjectedReset,
    #[error("watch cut by the fault proxy")]
    WatchCut,
}

/// What a rule does to a request it fires on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this 5xx status with a Kubernetes `Status` body, without forwarding. (kube's
    /// default client retries 503 and 504 by itself; 500 reaches the caller.)
    ServerError(u16),
    /// Forward, then throw the API server's answer away and answer this 5xx: the request took
    /// effect, the client is told it failed. Matches everything but watches.
    LostAnswer(u16),
    /// Answer 409 Conflict (`reason: Conflict`) without forwarding. Matches writes only
    /// (POST, PUT, PATCH), so `every` counts writes.
    Conflict,
    /// Wait this long before forwarding (or before an injected answer of another rule).
    Delay(Duration),
    /// Close the connection without an answer.
    Reset,
    /// Forward a watch, then end its stream early. Matches watches only (`watch=true`/`1`).
    CutWatch(WatchCut),
    /// Answer a watch, without forwarding, with the one event an API server sends when the
    /// resourceVersion asked for was compacted away: an `ERROR` with a `410 Expired` Status.
    /// The client must list again. Matches watches only.
    ExpireWatch,
}

/// When and how a watch is cut; the first of `after_events` and `after` that comes ends it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchCut {
    /// End after this many events (lines) were passed on.
    pub after_events: Option<u64>,
    /// End this long after the answer started.
    pub after: Option<Duration>,
    /// `false`: end the chunked body cleanly, as an API server ending a watch does; `true`:
    /// fail the body mid-stream, so the client sees a broken connection.
    pub abrupt: bool,
}

/// Which requests a rule counts. Empty: every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only requests whose path and query contain this (e.g. `healthscopes`, `/status`).
    pub path_contains: Option<String>,
    /// Only these methods.
    pub methods: Option<Vec<Method>>,
    /// `Some(true)`: watches only; `Some(false)`: everything but watches.
    pub watch: Option<bool>,
}

/// One fault and how often it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub fault: Fault,
    /// Fires on the Nth, 2Nth, ... request this rule matches (1: every one).
    pub every: u64,
    /// Fires on matches after the first `skip` only (a phase shift).
    pub skip: u64,
    pub filter: Filter,
    /// Fires at most this many times.
    pub limit: Option<u64>,
}

impl Rule {
    pub fn every(n: u64, fault: Fault) -> Self {
        Self {
            fault,
            every: n.max(1),
            skip: 0,
            filter: Filter::default(),
            limit: None,
        }
    }

    pub fn path(mut self, contains: &str) -> Self {
        self.filter.path_contains = Some(contains.to_string());
        self
    }

    pub fn methods(mut self, methods: &[Method]) -> Self {
        self.filter.methods = Some(methods.to_vec());
        self
    }

    /// Only POST, PUT, PATCH and DELETE.
    pub fn writes(self) -> Self {
        self.methods(&[Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
    }

    pub fn watches(mut self, watches: bool) -> Self {
        self.filter.watch = Some(watches);
        self
    }

    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }

    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    fn matches(&self, method: &Method, path: &str, watch: bool) -> bool {
        let implied = match self.fault {
            Fault::Conflict => is_write(method) && *method != Method::DELETE,
            Fault::CutWatch(_) | Fault::ExpireWatch => watch,
            // A watch's answer never ends, so it cannot be read and then lost.
            Fault::LostAnswer(_) => !watch,
            _ => true,
        };
        implied
            && self
                .filter
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
            && self
                .filter
                .methods
                .as_ref()
                .is_none_or(|m| m.contains(method))
            && self.filter.watch.is_none_or(|w| w == watch)
    }
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// What the proxy did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received.
    pub requests: u64,
    /// Requests forwarded to the API server (and answered by it).
    pub forwarded: u64,
    /// Of those, writes (POST, PUT, PATCH, DELETE).
    pub forwarded_writes: u64,
    /// Of those, watches.
    pub forwarded_watches: u64,
    /// Requests the API server could not be reached for (answered 502).
    pub upstream_errors: u64,
    pub server_errors: u64,
    pub lost_answers: u64,
    pub conflicts: u64,
    pub delays: u64,
    pub resets: u64,
    pub watch_cuts: u64,
    pub expired_watches: u64,
}

impl Counts {
    /// Faults injected, of every kind.
    pub fn injected(&self) -> u64 {
        self.server_errors
            + self.lost_answers
            + self.conflicts
            + self.delays
            + self.resets
            + self.watch_cuts
            + self.expired_watches
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    forwarded_writes: AtomicU64,
    forwarded_watches: AtomicU64,
    upstream_errors: AtomicU64,
    server_errors: AtomicU64,
    lost_answers: AtomicU64,
    conflicts: AtomicU64,
    delays: AtomicU64,
    resets: AtomicU64,
    watch_cuts: AtomicU64,
    expired_watches: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            requests: get(&self.requests),
            forwarded: get(&self.forwarded),
            forwarded_writes: get(&self.forwarded_writes),
            forwarded_watches: get(&self.forwarded_watches),
            upstream_errors: get(&self.upstream_errors),
            server_errors: get(&self.server_errors),
            lost_answers: get(&self.lost_answers),
            conflicts: get(&self.conflicts),
            delays: get(&self.delays),
            resets: get(&self.resets),
            watch_cuts: get(&self.watch_cuts),
            expired_watches: get(&self.expired_watches),
        }
    }
}

struct RuleState {
    rule: Rule,
    seen: u64,
    fired: u64,
}

/// What to do with one request, decided under the lock before anything is awaited.
#[derive(Default)]
struct Decision {
    delay: Duration,
    /// Answer this instead of forwarding (Reset: no answer at all).
    answer: Option<Fault>,
    /// Forward, then answer this status instead.
    lose_answer: Option<u16>,
    cut: Option<WatchCut>,
}

struct Shared {
    upstream: kube::Client,
    rules: Mutex<Vec<RuleState>>,
    counters: Counters,
    /// Injected faults: when (since the start) and what.
    log: Mutex<VecDeque<(Duration, String)>>,
    started: std::time::Instant,
    /// Watches being streamed, by path, to be cut on demand.
    open_watches: Mutex<Vec<(String, CancellationToken)>>,
}

impl Shared {
    fn decide(&self, method: &Method, path: &str, watch: bool) -> Decision {
        let mut decision = Decision::default();
        let Ok(mut rules) = self.rules.lock() else {
            return decision;
        };
        for state in rules.iter_mut() {
            if !state.rule.matches(method, path, watch) {
                continue;
            }
            state.seen += 1;
            let due = state.seen > state.rule.skip
                && (state.seen - state.rule.skip).is_multiple_of(state.rule.every)
                && state.rule.limit.is_none_or(|l| state.fired < l);
            if !due {
                continue;
            }
            // One answer per request: a rule due when another already decided the answer
            // does not fire (and is not counted as fired).
            let decided = decision.answer.is_some()
                || decision.lose_answer.is_some()
                || decision.cut.is_some();
            match &state.rule.fault {
                Fault::Delay(d) => decision.delay += *d,
                _ if decided => continue,
                Fault::ServerError(_) | Fault::Conflict | Fault::Reset | Fault::ExpireWatch => {
                    decision.answer = Some(state.rule.fault.clone())
                }
                Fault::LostAnswer(code) => decision.lose_answer = Some(*code),
                Fault::CutWatch(cut) => decision.cut = Some(cut.clone()),
            }
            state.fired += 1;
        }
        decision
    }

    fn open_watch(&self, path: &str) -> CancellationToken {
        let token = CancellationToken::new();
        if let Ok(mut open) = self.open_watches.lock() {
            // Ended watches cancel their token: forget them here.
            open.retain(|(_, t)| !t.is_cancelled());
            open.push((path.to_string(), token.clone()));
        }
        token
    }

    fn record(&self, counter: &AtomicU64, what: String) {
        bump(counter);
        if let Ok(mut log) = self.log.lock() {
            if log.len() == LOG_CAPACITY {
                log.pop_front();
            }
            log.push_back((self.started.elapsed(), what));
        }
    }
}

/// The running proxy. Stops when dropped or by [`FaultProxy::stop`].
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    client: kube::Client,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy to the test control plane, authenticating as its admin, with no rules yet.
    pub async fn start() -> Result<Self, ProxyError> {
        let mut config = super::config().await;
        // Pass on what the API server answered as it is: the client under test retries.
        config.default_retry = false;
        let upstream = kube::Client::try_from(config).map_err(ProxyError::Client)?;
        Self::start_with(upstream).await
    }

    /// A proxy forwarding with `upstream`.
    pub async fn start_with(upstream: kube::Client) -> Result<Self, ProxyError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(ProxyError::Bind)?;
        let addr = listener.local_addr().map_err(ProxyError::Bind)?;
        let url: hyper::Uri = format!("http://{addr}")
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| ProxyError::Request(e.into()))?;
        // Like a client built from a kubeconfig, with kube's default retry of 429/503/504, but
        // without credentials.
        let client = kube::Client::try_from(kube::Config::new(url)).map_err(ProxyError::Client)?;
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(Vec::new()),
            counters: Counters::default(),
            log: Mutex::new(VecDeque::new()),
            started: std::time::Instant::now(),
            open_watches: Mutex::new(Vec::new()),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, shared.clone(), stop.clone()));
        Ok(Self {
            addr,
            shared,
            client,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client that talks to the API server through this proxy.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Replaces the rules (their counts start again from zero).
    pub fn set_rules(&self, rules: impl IntoIterator<Item = Rule>) {
        let states = rules
            .into_iter()
            .map(|rule| RuleState {
                rule,
                seen: 0,
                fired: 0,
            })
            .collect();
        if let Ok(mut current) = self.shared.rules.lock() {
            *current = states;
        }
    }

    /// Turns every fault off: from now on every request is forwarded as it is. (Watches already
    /// being cut end as decided when they started.)
    pub fn clear(&self) {
        self.set_rules([]);
    }

    /// Ends (cleanly) every watch being streamed now whose path and query contain
    /// `path_contains`; returns how many. The clients watch again, through the current rules.
    pub fn cut_open_watches(&self, path_contains: &str) -> usize {
        let Ok(mut open) = self.shared.open_watches.lock() else {
            return 0;
        };
        let mut cut = 0;
        for (path, token) in open.iter() {
            if path.contains(path_contains) && !token.is_cancelled() {
                token.cancel();
                cut += 1;
            }
        }
        open.retain(|(_, t)| !t.is_cancelled());
        cut
    }

    pub fn counts(&self) -> Counts {
        self.shared.counters.snapshot()
    }

    /// The last injected faults, oldest first, e.g. `[1.234s] PATCH /apis/... -> 409`.
    pub fn injected(&self) -> Vec<String> {
        self.injected_timed()
            .into_iter()
            .map(|(at, what)| format!("[{:.3}s] {what}", at.as_secs_f64()))
            .collect()
    }

    /// The last injected faults, oldest first, with when they happened since the start.
    pub fn injected_timed(&self) -> Vec<(Duration, String)> {
        self.shared
            .log
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops accepting and drops every open connection.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // e.g. out of file descriptors: try again in a moment.
                    tracing::debug!(%error, "fault proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| handle(shared.clone(), request));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                // Dropping the connection closes it, with watches still streaming.
                _ = stop.cancelled() => {}
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "fault proxy: connection ended");
                    }
                }
            }
        });
    }
}

fn is_watch(query: Option<&str>) -> bool {
    query
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1")
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    bump(&shared.counters.requests);
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let watch = is_watch(request.uri().query());
    let decision = shared.decide(&method, &path, watch);
    let what = format!("{method} {path}");

    if !decision.delay.is_zero() {
        shared.record(
            &shared.counters.delays,
            format!("{what} -> delayed {:?}", decision.delay),
        );
        tokio::time::sleep(decision.delay).await;
    }
    match decision.answer {
        Some(Fault::Reset) => {
            shared.record(&shared.counters.resets, format!("{what} -> reset"));
            return Err(ProxyError::InjectedReset);
        }
        Some(Fault::ServerError(code)) => {
            shared.record(&shared.counters.server_errors, format!("{what} -> {code}"));
            return Ok(status_answer(code, &method, &path));
        }
        Some(Fault::Conflict) => {
            shared.record(&shared.counters.conflicts, format!("{what} -> 409"));
            return Ok(status_answer(409, &method, &path));
        }
        Some(Fault::ExpireWatch) => {
            shared.record(
                &shared.counters.expired_watches,
                format!("{what} -> 410 Expired"),
            );
            return Ok(expired_watch());
        }
        _ => {}
    }

    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(ProxyError::RequestBody)?
        .to_bytes();
    let mut upstream = Request::builder().method(parts.method).uri(path.as_str());
    for (name, value) in &parts.headers {
        // The upstream client sets its own host, length and credentials.
        let own = [header::HOST, header::CONTENT_LENGTH, header::AUTHORIZATION];
        if !hop_by_hop(name) && !own.contains(name) {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream
        .body(kube::client::Body::from(body))
        .map_err(ProxyError::Request)?;
    let answer = match shared.upstream.send(upstream).await {
        Ok(answer) => answer,
        Err(error) => {
            bump(&shared.counters.upstream_errors);
            tracing::debug!(%error, "fault proxy: forwarding {what}");
            return Ok(status_answer(502, &method, &path));
        }
    };
    bump(&shared.counters.forwarded);
    if is_write(&method) {
        bump(&shared.counters.forwarded_writes);
    }
    if watch {
        bump(&shared.counters.forwarded_watches);
    }
    if let Some(code) = decision.lose_answer {
        // Read the answer to its end, so the request is complete upstream, then drop it.
        let _ = answer.into_body().collect().await;
        shared.record(
            &shared.counters.lost_answers,
            format!("{what} -> forwarded, answered {code}"),
        );
        return Ok(status_answer(code, &method, &path));
    }

    let (parts, body) = answer.into_parts();
    let mut response = Response::builder().status(parts.status);
    // Every watch can be cut: by a rule, or on demand (cut_open_watches).
    let cuttable = watch && parts.status.is_success();
    for (name, value) in &parts.headers {
        // A cut body is shorter than any length the API server announced.
        if hop_by_hop(name) || (cuttable && name == header::CONTENT_LENGTH) {
            continue;
        }
        response = response.header(name, value);
    }
    let body: ProxyBody = if cuttable {
        let token = shared.open_watch(&path);
        let cut = decision.cut.unwrap_or_default();
        CutBody::new(body, cut, token, shared.clone(), what).boxed_unsync()
    } else {
        body.map_err(BoxError::from).boxed_unsync()
    };
    response.body(body).map_err(ProxyError::Request)
}

fn hop_by_hop(name: &HeaderName) -> bool {
    const HOP_BY_HOP: [&str; 7] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP_BY_HOP.contains(&name.as_str())
}

/// An answer in the API server's own form: a `Status` object with the code's usual reason.
fn status_answer(code: u16, method: &Method, path: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (reason, message) = match status.as_u16() {
        409 => (
            "Conflict",
            "Operation cannot be fulfilled: the object has been modified; please apply your \
             changes to the latest version and try again"
                .to_string(),
        ),
        502 => (
            "InternalError",
            "the fault proxy could not reach the API server".to_string(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".to_string(),
        ),
        504 => (
            "Timeout",
            "the server was unable to return a response in the time allotted".to_string(),
        ),
        _ => (
            "InternalError",
            "an error on the server has prevented the request from succeeding".to_string(),
        ),
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{message} (injected by the fault proxy into {method} {path})"),
        "reason": reason,
        "code": status.as_u16(),
    });
    let bytes = Bytes::from(body.to_string());
    let mut response = Response::new(
        http_body_util::Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A watch answer that is nothing but a `410 Expired` error event, as the API server sends for
/// a resourceVersion too old to watch from.
fn expired_watch() -> Response<ProxyBody> {
    let event = json!({
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version (expired by the fault proxy)",
            "reason": "Expired",
            "code": 410,
        },
    });
    let bytes = Bytes::from(format!("{event}\n"));
    let mut response = Response::new(
        http_body_util::Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A watch body that ends early: after a number of events (at a line end) or a duration.
struct CutBody {
    inner: kube::client::Body,
    events_left: Option<u64>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Cut on demand: cancelled by FaultProxy::cut_open_watches (and on drop).
    token: CancellationToken,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    abrupt: bool,
    /// The cut was made: what is left to yield is the end (or the error).
    cut: bool,
    finished: bool,
    shared: Arc<Shared>,
    what: String,
}

impl CutBody {
    fn new(
        inner: kube::client::Body,
        cut: WatchCut,
        token: CancellationToken,
        shared: Arc<Shared>,
        what: String,
    ) -> Self {
        Self {
            inner,
            events_left: cut.after_events,
            deadline: cut.after.map(|d| Box::pin(tokio::time::sleep(d))),
            cancelled: Box::pin(token.clone().cancelled_owned()),
            token,
            abrupt: cut.abrupt,
            cut: false,
            finished: false,
            shared,
            what,
        }
    }

    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finished = true;
        let how = if self.abrupt { "broken" } else { "ended" };
        self.shared.record(
            &self.shared.counters.watch_cuts,
            format!("{} -> watch {how}", self.what),
        );
        if self.abrupt {
            Poll::Ready(Some(Err(ProxyError::WatchCut.into())))
        } else {
            Poll::Ready(None)
        }
    }
}

impl Drop for CutBody {
    fn drop(&mut self) {
        // Marks this watch as ended for the list of open ones.
        self.token.cancel();
    }
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if this.cut {
            return this.end();
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return this.end();
        }
        if this.cancelled.as_mut().poll(cx).is_ready() {
            this.abrupt = false;
            return this.end();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(left) = this.events_left else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                let Ok(mut data) = frame.into_data() else {
                    // Trailers: a watch has none; pass nothing on.
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::new()))));
                };
                if left == 0 {
                    return this.end();
                }
                // Each watch event is one JSON line.
                let line_ends: Vec<usize> = data
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i)
                    .collect();
                let last = usize::try_from(left - 1)
                    .ok()
                    .and_then(|i| line_ends.get(i).copied());
                match last {
                    // The last allowed event ends in this frame: pass it on, cut the rest.
                    Some(end) => {
                        data.truncate(end + 1);
                        this.events_left = Some(0);
                        this.cut = true;
                    }
                    None => this.events_left = Some(left - line_ends.len() as u64),
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
