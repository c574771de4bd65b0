//! Background HTTP probes, one task per scope on the scope's own interval. A reconcile states
//! what to probe (method, path, timeout, endpoints per Service); the task probes, keeps the
//! latest outcome, and queues the scope when that outcome changes. A slow endpoint only ever
//! delays its own scope's task; every task shares one global concurrency bound.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::cache::Trigger;
use crate::api::HealthScope;

/// What a scope wants probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    pub method: String,
    pub path: String,
    pub timeout: Duration,
    pub interval: Duration,
    /// Endpoint addresses per Service name.
    pub targets: BTreeMap<String, Vec<SocketAddr>>,
}

/// The outcome of one probe of one endpoint: `Ok(status code)` or the failure reason.
pub type EndpointOutcome = Result<u16, String>;

/// The latest outcome per Service, per endpoint.
pub type ProbeResults = BTreeMap<String, Vec<(SocketAddr, EndpointOutcome)>>;

struct ProbeTask {
    plan: ProbePlan,
    results: watch::Receiver<Option<Arc<ProbeResults>>>,
    stop: CancellationToken,
}

/// The probe tasks of every scope.
#[derive(Clone)]
pub struct Probes {
    tasks: Arc<Mutex<HashMap<ObjectRef<HealthScope>, ProbeTask>>>,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    trigger: Trigger,
    shutdown: CancellationToken,
}

impl Probes {
    pub fn new(concurrency: usize, trigger: Trigger, shutdown: CancellationToken) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            tasks: Default::default(),
            http,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            trigger,
            shutdown,
        }
    }

    /// Makes the scope's task follow `plan` (starting, replacing or stopping it) and returns
    /// the latest results for that plan, if a round has finished.
    pub fn ensure(
        &self,
        scope: &ObjectRef<HealthScope>,
        plan: Option<ProbePlan>,
    ) -> Option<Arc<ProbeResults>> {
        let Ok(mut tasks) = self.tasks.lock() else {
            return None;
        };
        let Some(plan) = plan else {
            if let Some(task) = tasks.remove(scope) {
                task.stop.cancel();
            }
            return None;
        };
        if let Some(task) = tasks.get(scope)
            && task.plan == plan
        {
            return task.results.borrow().clone();
        }
        if let Some(old) = tasks.remove(scope) {
            old.stop.cancel();
        }
        let (tx, rx) = watch::channel(None);
        let stop = self.shutdown.child_token();
        tokio::spawn(probe_loop(
            scope.clone(),
            plan.clone(),
            self.http.clone(),
            self.permits.clone(),
            tx,
            self.trigger.clone(),
            stop.clone(),
        ));
        tasks.insert(
            scope.clone(),
            ProbeTask {
                plan,
                results: rx,
                stop,
            },
        );
        None
    }

    /// Stops every task (this replica stopped leading).
    pub fn stop_all(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, task) in tasks.drain() {
                task.stop.cancel();
            }
        }
    }
}

async fn probe_loop(
    scope: ObjectRef<HealthScope>,
    plan: ProbePlan,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    results: watch::Sender<Option<Arc<ProbeResults>>>,
    trigger: Trigger,
    stop: CancellationToken,
) {
    // The next round starts one interval after the previous one started, however long it took;
    // an overrunning round delays the next, it never cancels probing.
    let mut ticks = tokio::time::interval(plan.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let round = tokio::select! {
            _ = stop.cancelled() => return,
            round = probe_round(&plan, &http, &permits) => round,
        };
        let changed = results.send_if_modified(|current| {
            if current.as_deref() == Some(&round) {
                return false;
            }
            *current = Some(Arc::new(round));
            true
        });
        if changed {
            tracing::debug!(scope = %scope, "probe outcome changed");
            let _ = trigger.send(scope.clone());
        }
    }
}

async fn probe_round(
    plan: &ProbePlan,
    http: &reqwest::Client,
    permits: &Semaphore,
) -> ProbeResults {
    let mut round = ProbeResults::new();
    let probes = plan.targets.iter().flat_map(|(service, addrs)| {
        addrs.iter().map(move |addr| async move {
            let outcome = match permits.acquire().await {
                Ok(_permit) => probe_one(plan, http, *addr).await,
                Err(_) => Err("prober stopped".to_string()),
            };
            (service.clone(), *addr, outcome)
        })
    });
    for (service, addr, outcome) in futures::future::join_all(probes).await {
        round.entry(service).or_default().push((addr, outcome));
    }
    round
}

async fn probe_one(plan: &ProbePlan, http: &reqwest::Client, addr: SocketAddr) -> EndpointOutcome {
    let method = reqwest::Method::from_bytes(plan.method.as_bytes())
        .map_err(|_| format!("invalid probe method {:?}", plan.method))?;
    let url = format!("http://{addr}{}", plan.path);
    let response = http
        .request(method, &url)
        .timeout(plan.timeout)
        .send()
        .await
        .map_err(|e| describe(&e, plan.timeout))?;
    let code = response.status();
    // 2xx and 3xx are success, as the kubelet judges HTTP probes.
    if code.is_success() || code.is_redirection() {
        Ok(code.as_u16())
    } else {
        Err(format!("HTTP {}", code.as_u16()))
    }
}

fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("timed out after {timeout:?}")
    } else if error.is_connect() {
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
        while let Some(inner) = source {
            if let Some(io) = inner.downcast_ref::<std::io::Error>() {
                return format!("connection failed: {}", io.kind());
            }
            source = inner.source();
        }
        "connection failed".to_string()
    } else {
        format!("request failed: {error}")
    }
}

/// Folds one Service's probe outcome into a one-line verdict: `Err` lists the failures.
pub fn verdict(
    plan_method: &str,
    path: &str,
    outcomes: &[(SocketAddr, EndpointOutcome)],
) -> Result<String, String> {
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|(addr, o)| o.as_ref().err().map(|e| format!("{addr}: {e}")))
        .collect();
    if failures.is_empty() {
        Ok(format!(
            "probe {plan_method} {path}: {}/{} endpoints OK",
            outcomes.len(),
            outcomes.len()
        ))
    } else {
        Err(format!(
            "probe {plan_method} {path} failed on {}/{} endpoints ({})",
            failures.len(),
            outcomes.len(),
            failures.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_names_each_failing_endpoint() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert_eq!(
            verdict("GET", "/health", &[(a, Ok(200)), (b, Ok(204))]),
            Ok("probe GET /health: 2/2 endpoints OK".to_string())
        );
        assert_eq!(
            verdict(
                "GET",
                "/health",
                &[(a, Ok(200)), (b, Err("HTTP 500".into()))]
            ),
            Err("probe GET /health failed on 1/2 endpoints (10.0.0.2:80: HTTP 500)".to_string())
        );
    }
}
