//! HTTP probing of the endpoints behind a scope's Services, with timeouts and a global bound.
//!
//! Probes follow the kubelet's HTTP probe: plain HTTP to the endpoint address, redirects not
//! followed, and any status from 200 to 399 is a success. The body is never read. A global
//! semaphore bounds how many probes are in flight across all scopes; each probe's timeout starts
//! once it holds a permit, so a slow endpoint costs one permit for at most its timeout.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("building the HTTP client for probes: {0}")]
    Client(#[from] reqwest::Error),
    #[error("invalid probe method {0:?}")]
    Method(String),
    #[error("the probe concurrency bound must be at least 1")]
    ZeroConcurrency,
}

/// One HTTP probe: `method` on `path` at `addr`, failing after `timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub method: Method,
    /// An absolute path, optionally with a query, e.g. `/health` (a leading `/` is added).
    pub path: String,
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl ProbeTarget {
    /// A target from a scope's `probe-method` text (case-insensitive, e.g. "get").
    pub fn new(
        method: &str,
        path: impl Into<String>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, ProbeError> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| ProbeError::Method(method.to_string()))?;
        let path = path.into();
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        Ok(Self {
            method,
            path,
            addr,
            timeout,
        })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }
}

impl fmt::Display for ProbeTarget {
    /// "GET /health on 10.1.0.5:8080", the start of every outcome's reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} on {}", self.method, self.path, self.addr)
    }
}

/// What one probe found. `reason` names the target and the result, e.g.
/// "GET /health on 10.1.0.5:8080: HTTP 500" or "…: timed out after 1s".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub ok: bool,
    pub reason: String,
    /// From sending the request to the response headers (or the failure).
    pub duration: Duration,
}

/// Told about every finished probe, e.g. to record metrics.
pub trait ProbeObserver: Send + Sync {
    fn observe(&self, target: &ProbeTarget, outcome: &ProbeOutcome);
}

/// Sends HTTP probes, at most `max_concurrent` at a time across every caller. Cheap to clone.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    observer: Option<Arc<dyn ProbeObserver>>,
}

impl fmt::Debug for Prober {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("available_permits", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Prober {
    pub fn new(
        max_concurrent: usize,
        observer: Option<Arc<dyn ProbeObserver>>,
    ) -> Result<Self, ProbeError> {
        if max_concurrent == 0 {
            return Err(ProbeError::ZeroConcurrency);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Pod addresses are reached directly, never through a proxy from the environment.
            .no_proxy()
            // A fresh connection per probe, as the kubelet does: a pod that stops accepting
            // connections must fail its probe.
            .pool_max_idle_per_host(0)
            .http1_only()
            .user_agent(concat!("healthscope-probe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            permits: Arc::new(Semaphore::new(max_concurrent)),
            observer,
        })
    }

    /// Probes one target. Never fails: every problem is an unsuccessful outcome with a reason.
    pub async fn probe(&self, target: &ProbeTarget) -> ProbeOutcome {
        let outcome = match self.permits.acquire().await {
            Ok(_permit) => self.send(target).await,
            // The semaphore is never closed; report rather than panic if that ever changes.
            Err(_) => ProbeOutcome {
                ok: false,
                reason: format!("{target}: prober closed"),
                duration: Duration::ZERO,
            },
        };
        tracing::debug!(target = %target, ok = outcome.ok, reason = %outcome.reason,
            duration_ms = outcome.duration.as_millis() as u64, "probe finished");
        if let Some(observer) = &self.observer {
            observer.observe(target, &outcome);
        }
        outcome
    }

    /// Probes every target concurrently (within the global bound); outcomes in target order.
    pub async fn probe_all(&self, targets: &[ProbeTarget]) -> Vec<ProbeOutcome> {
        join_all(targets.iter().map(|t| self.probe(t))).await
    }

    async fn send(&self, target: &ProbeTarget) -> ProbeOutcome {
        let start = Instant::now();
        let request = self
            .client
            .request(target.method.clone(), target.url())
            .timeout(target.timeout)
            .send();
        let result = tokio::time::timeout(target.timeout, request).await;
        let duration = start.elapsed();
        let (ok, what) = match result {
            Err(_) => (false, format!("timed out after {:?}", target.timeout)),
            Ok(Ok(response)) => {
                let status = response.status();
                // The body is never read; dropping the response closes the connection.
                (
                    (200..400).contains(&status.as_u16()),
                    format!("HTTP {}", status.as_u16()),
                )
            }
            Ok(Err(err)) if err.is_timeout() => {
                (false, format!("timed out after {:?}", target.timeout))
            }
            Ok(Err(err)) => (false, cause(&err)),
        };
        ProbeOutcome {
            ok,
            reason: format!("{target}: {what}"),
            duration,
        }
    }
}

/// The most specific cause of a failed request, e.g. "connection refused".
fn cause(err: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::ConnectionReset => "connection reset".to_string(),
                _ => io.to_string(),
            };
        }
        innermost = e.to_string();
        source = e.source();
    }
    innermost
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::{any, get};

    #[derive(Clone, Default)]
    struct Server {
        in_flight: Arc<AtomicUsize>,
        max_in_flight: Arc<AtomicUsize>,
        redirect_followed: Arc<AtomicUsize>,
        methods: Arc<Mutex<Vec<String>>>,
    }

    async fn slow(State(s): State<Server>) -> &'static str {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        "slow"
    }

    /// An HTTP app on 127.0.0.1 with one route per behaviour a probe must handle.
    async fn start() -> (SocketAddr, Server) {
        let state = Server::default();
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/fail",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }),
            )
            .route("/notfound", get(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/hang",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .route(
                "/redirect",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/target")]) }),
            )
            .route(
                "/loop",
                get(|| async {
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::LOCATION, "/loop")],
                    )
                }),
            )
            .route(
                "/target",
                get(|State(s): State<Server>| async move {
                    s.redirect_followed.fetch_add(1, Ordering::SeqCst);
                    "target"
                }),
            )
            .route(
                "/big",
                get(|| async { "x".repeat(8 * 1024 * 1024).into_response() }),
            )
            .route("/slow", get(slow))
            .route(
                "/method",
                any(|State(s): State<Server>, method: Method| async move {
                    s.methods.lock().unwrap().push(method.to_string());
                    "seen"
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, state)
    }

    fn target(addr: SocketAddr, path: &str, timeout_ms: u64) -> ProbeTarget {
        ProbeTarget::new("GET", path, addr, Duration::from_millis(timeout_ms)).unwrap()
    }

    struct OutcomeCase {
        name: &'static str,
        path: &'static str,
        timeout_ms: u64,
        /// Probe a port nobody listens on instead of the app.
        refused: bool,
        ok: bool,
        /// The reason after "<method> <path> on <addr>: ".
        what: &'static str,
    }

    fn outcome_cases() -> Vec<OutcomeCase> {
        let case = |name, path, timeout_ms, refused, ok, what| OutcomeCase {
            name,
            path,
            timeout_ms,
            refused,
            ok,
            what,
        };
        vec![
            case("200 is a success", "/ok", 1000, false, true, "HTTP 200"),
            case("500 is a failure", "/fail", 1000, false, false, "HTTP 500"),
            case(
                "404 is a failure",
                "/notfound",
                1000,
                false,
                false,
                "HTTP 404",
            ),
            case(
                "3xx is a success and not followed",
                "/redirect",
                1000,
                false,
                true,
                "HTTP 302",
            ),
            case(
                "hanging endpoint times out",
                "/hang",
                200,
                false,
                false,
                "timed out after 200ms",
            ),
            case(
                "answer 1 ms after the timeout fails",
                "/slow",
                149,
                false,
                false,
                "timed out after 149ms",
            ),
            case(
                "redirect loop is not followed",
                "/loop",
                1000,
                false,
                true,
                "HTTP 307",
            ),
            case(
                "refused connection",
                "/ok",
                1000,
                true,
                false,
                "connection refused",
            ),
            case(
                "large body is not read",
                "/big",
                1000,
                false,
                true,
                "HTTP 200",
            ),
        ]
    }

    pub(crate) fn doc_tables() -> Vec<(&'static str, Vec<crate::health::testing::DocRow>)> {
        let rows = outcome_cases()
            .into_iter()
            .map(|c| {
                let outcome = if c.ok { "success" } else { "failure" };
                crate::health::testing::DocRow::new(c.name, outcome, c.what)
            })
            .collect();
        vec![("HTTP probe", rows)]
    }

    #[tokio::test]
    async fn probe_outcomes() {
        let (addr, server) = start().await;
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap() // closed when `l` drops at the end of this block
        };
        let prober = Prober::new(4, None).unwrap();
        let cases = outcome_cases().into_iter().map(|c| {
            let addr = if c.refused { refused } else { addr };
            (c.name, target(addr, c.path, c.timeout_ms), c.ok, c.what)
        });
        for (name, t, ok, what) in cases {
            let outcome = prober.probe(&t).await;
            assert_eq!(
                (outcome.ok, outcome.reason.as_str()),
                (ok, format!("GET {} on {}: {what}", t.path, t.addr).as_str()),
                "case {name:?}"
            );
        }
        assert_eq!(server.redirect_followed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn timeout_is_honoured_within_a_margin() {
        let (addr, _) = start().await;
        let prober = Prober::new(1, None).unwrap();
        let outcome = prober.probe(&target(addr, "/hang", 150)).await;
        assert!(!outcome.ok);
        assert!(
            outcome.duration >= Duration::from_millis(150),
            "{outcome:?}"
        );
        assert!(
            outcome.duration < Duration::from_millis(1000),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn method_is_sent_as_given() {
        let (addr, server) = start().await;
        let prober = Prober::new(1, None).unwrap();
        for method in ["post", "HEAD", "GET"] {
            let t = ProbeTarget::new(method, "method", addr, Duration::from_secs(1)).unwrap();
            assert_eq!(t.path, "/method");
            assert!(prober.probe(&t).await.ok);
        }
        assert_eq!(*server.methods.lock().unwrap(), ["POST", "HEAD", "GET"]);
        assert!(matches!(
            ProbeTarget::new("G E T", "/", addr, Duration::from_secs(1)),
            Err(ProbeError::Method(_))
        ));
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let (addr, server) = start().await;
        let prober = Prober::new(2, None).unwrap();
        let targets = vec![target(addr, "/slow", 2000); 6];
        let start = Instant::now();
        let outcomes = prober.probe_all(&targets).await;
        assert!(outcomes.iter().all(|o| o.ok), "{outcomes:?}");
        assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 2);
        // Six 150 ms requests two at a time take at least three rounds.
        assert!(start.elapsed() >= Duration::from_millis(450));
    }

    #[tokio::test]
    async fn slow_endpoint_does_not_block_others_beyond_the_bound() {
        let (addr, _) = start().await;
        let prober = Prober::new(2, None).unwrap();
        let hanging = {
            let prober = prober.clone();
            tokio::spawn(async move { prober.probe(&target(addr, "/hang", 3000)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let fast = prober.probe_all(&vec![target(addr, "/ok", 1000); 5]).await;
        assert!(fast.iter().all(|o| o.ok));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "fast probes waited {:?} behind a hanging one",
            start.elapsed()
        );
        assert!(!hanging.is_finished());
        hanging.abort();
    }

    #[tokio::test]
    async fn observer_sees_every_outcome() {
        struct Count(AtomicUsize);
        impl ProbeObserver for Count {
            fn observe(&self, _: &ProbeTarget, _: &ProbeOutcome) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (addr, _) = start().await;
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let prober = Prober::new(2, Some(count.clone())).unwrap();
        prober
            .probe_all(&[target(addr, "/ok", 1000), target(addr, "/fail", 1000)])
            .await;
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(matches!(
            Prober::new(0, None),
            Err(ProbeError::ZeroConcurrency)
        ));
    }
}
