//! Background HTTP probes, one task per scope on the scope's own interval. A reconcile states
//! what to probe (method, path, timeout, endpoints per workload); the task probes through the
//! shared [`Prober`] (one global concurrency bound), keeps the latest outcome, and queues the
//! scope when that outcome changes. A slow endpoint only ever delays its own scope's task.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cache::Trigger;
use crate::api::{HealthScope, WorkloadReference};
use crate::health::ProbeResult;
use crate::metrics::ProbeMetrics;
use crate::prober::{ProbeOutcome, ProbeTarget, Prober};

/// What a scope wants probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    pub method: String,
    pub path: String,
    pub timeout: Duration,
    pub interval: Duration,
    /// Endpoint addresses per workload (a Service, or a ContainerizedWorkload's Service).
    pub targets: BTreeMap<WorkloadReference, Vec<SocketAddr>>,
}

struct ProbeTask {
    plan: ProbePlan,
    results: watch::Receiver<Option<Arc<Vec<ProbeResult>>>>,
    stop: CancellationToken,
}

/// The probe tasks of every scope. Cheap to clone.
#[derive(Clone)]
pub struct Probes {
    tasks: Arc<Mutex<HashMap<ObjectRef<HealthScope>, ProbeTask>>>,
    prober: Prober,
    trigger: Trigger,
    metrics: ProbeMetrics,
    shutdown: CancellationToken,
}

impl Probes {
    pub fn new(
        prober: Prober,
        trigger: Trigger,
        metrics: ProbeMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            tasks: Default::default(),
            prober,
            trigger,
            metrics,
            shutdown,
        }
    }

    /// Stops the scope's task, if it has one (no probe to send, or the scope is gone).
    pub fn stop(&self, scope: &ObjectRef<HealthScope>) {
        if let Ok(mut tasks) = self.tasks.lock()
            && let Some(task) = tasks.remove(scope)
        {
            task.stop.cancel();
        }
    }

    /// Makes the scope's task follow `plan` (starting or replacing it) and returns the latest
    /// outcome for that plan, once a round has finished.
    pub fn ensure(
        &self,
        scope: &ObjectRef<HealthScope>,
        plan: ProbePlan,
    ) -> Option<Arc<Vec<ProbeResult>>> {
        let Ok(mut tasks) = self.tasks.lock() else {
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
            self.prober.clone(),
            tx,
            self.trigger.clone(),
            self.metrics.clone(),
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
    prober: Prober,
    results: watch::Sender<Option<Arc<Vec<ProbeResult>>>>,
    trigger: Trigger,
    metrics: ProbeMetrics,
    stop: CancellationToken,
) {
    // The next round starts one interval after the previous one started, or as soon as it ends
    // when it overran: probing never stops, whatever a round costs.
    let mut ticks = tokio::time::interval(plan.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let round = tokio::select! {
            _ = stop.cancelled() => return,
            round = probe_round(&plan, &prober) => round,
        };
        let success = round.iter().all(|r| r.outcomes.iter().all(|o| o.ok));
        metrics.set_success(
            scope.namespace.as_deref().unwrap_or_default(),
            &scope.name,
            success,
        );
        let changed = results.send_if_modified(|current| {
            if current.as_deref().is_some_and(|c| same_verdicts(c, &round)) {
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

/// Equal for the status: the same workloads with the same results, whatever each probe took.
fn same_verdicts(a: &[ProbeResult], b: &[ProbeResult]) -> bool {
    let verdicts = |r: &[ProbeResult]| -> Vec<(WorkloadReference, Vec<(bool, String)>)> {
        r.iter()
            .map(|p| {
                (
                    p.workload.clone(),
                    p.outcomes
                        .iter()
                        .map(|o| (o.ok, o.reason.clone()))
                        .collect(),
                )
            })
            .collect()
    };
    verdicts(a) == verdicts(b)
}

async fn probe_round(plan: &ProbePlan, prober: &Prober) -> Vec<ProbeResult> {
    let rounds = plan.targets.iter().map(|(workload, addrs)| async move {
        let mut outcomes = Vec::with_capacity(addrs.len());
        let mut targets = Vec::with_capacity(addrs.len());
        for addr in addrs {
            match ProbeTarget::new(&plan.method, plan.path.clone(), *addr, plan.timeout) {
                Ok(target) => targets.push(target),
                Err(error) => outcomes.push(ProbeOutcome {
                    ok: false,
                    reason: format!("{} {} on {addr}: {error}", plan.method, plan.path),
                    duration: Duration::ZERO,
                }),
            }
        }
        outcomes.extend(prober.probe_all(&targets).await);
        ProbeResult {
            workload: workload.clone(),
            outcomes,
        }
    });
    futures::future::join_all(rounds).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool, reason: &str, ms: u64) -> ProbeResult {
        ProbeResult {
            workload: WorkloadReference::new("v1", "Service", "web"),
            outcomes: vec![ProbeOutcome {
                ok,
                reason: reason.to_string(),
                duration: Duration::from_millis(ms),
            }],
        }
    }

    #[test]
    fn probe_durations_alone_are_no_change() {
        assert!(same_verdicts(
            &[result(true, "HTTP 200", 3)],
            &[result(true, "HTTP 200", 9)]
        ));
        assert!(!same_verdicts(
            &[result(true, "HTTP 200", 3)],
            &[result(false, "HTTP 500", 3)]
        ));
    }
}
