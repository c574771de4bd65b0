//! Lease-based leader election: only the leader writes.
//!
//! One `coordination.k8s.io/v1` Lease names the holder. Every replica tries to acquire or renew
//! it every `retry_period`; updates carry the resourceVersion they were based on, so two
//! replicas can never both win the same round (the loser gets 409 Conflict and reads again).
//! A lease counts as expired when its record has not changed for `lease_duration` as measured by
//! this replica's own clock (as client-go does), so clock skew between replicas does not matter.
//! The leader steps down when it could not renew for `renew_deadline`, and on shutdown it
//! releases the lease (empty holder) so a standby takes over on its next retry.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Defaults as in controller-runtime: lease 15 s, renew deadline 10 s, retry 2 s.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// The Lease's name when none is given.
pub const DEFAULT_LEASE_NAME: &str = "healthscope-controller";

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Who this replica is: the pod name in a cluster.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A configuration with the default durations.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

/// This replica's identity: `POD_NAME` when set (the downward API), else the host name plus a
/// random suffix, so two processes on one host never share an identity.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "healthscope".to_string());
    format!("{host}-{}", random_suffix())
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    format!("{:08x}", hasher.finish() as u32)
}

/// Whether this replica currently leads. Cheap to clone; every holder sees every change.
#[derive(Clone, Debug)]
pub struct LeaderState {
    rx: watch::Receiver<bool>,
    // Keeps the channel open for a state that never changes (see `always`).
    _constant: Option<std::sync::Arc<watch::Sender<bool>>>,
}

impl LeaderState {
    /// A state that always leads: leader election is off (a single replica).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            rx,
            _constant: Some(std::sync::Arc::new(tx)),
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until leadership changes; returns the new value. Returns the current value at once
    /// when the elector has stopped (it will never change again).
    pub async fn changed(&mut self) -> bool {
        let _ = self.rx.changed().await;
        *self.rx.borrow_and_update()
    }

    /// Waits until this replica leads (or returns false when the elector stopped first).
    pub async fn wait_leader(&mut self) -> bool {
        self.rx.wait_for(|leader| *leader).await.is_ok()
    }

    /// A state that leads only while this one leads and `gate` is true (for example while the
    /// served CRD is one healthscope can write to). Spawns a task on the current runtime that
    /// follows both; it ends when either side is dropped.
    pub fn gated(self, mut gate: watch::Receiver<bool>) -> LeaderState {
        let mut leader = self.rx.clone();
        let both = *leader.borrow() && *gate.borrow();
        let (tx, rx) = watch::channel(both);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { break },
                    changed = gate.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                }
                tx.send_if_modified(|value| {
                    let both = *leader.borrow() && *gate.borrow();
                    std::mem::replace(value, both) != both
                });
            }
            // Keep the last value for holders; `self` stays alive with its sender until here.
            drop(self);
        });
        LeaderState {
            rx,
            _constant: None,
        }
    }

    /// The underlying channel, for callers that select on it.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lease {namespace}/{name}: API call took longer than {timeout:?}")]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// Runs leader election for one Lease until `shutdown` is cancelled.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    tx: watch::Sender<bool>,
    /// The last lease record seen and when (by our clock) it last changed.
    observed: Option<(Observed, Instant)>,
    last_renew: Option<Instant>,
}

/// The parts of a Lease record that show its holder is alive.
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    duration: Option<i32>,
}

impl Observed {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time,
            resource_version: lease.metadata.resource_version.clone(),
            duration: spec.lease_duration_seconds,
        }
    }
}

/// What one round of acquire-or-renew found.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Someone else holds an unexpired lease, or won the race.
    Other,
}

impl LeaderElector {
    /// Starts election in the background; the returned state follows it. On cancellation the
    /// lease is released (if held) before the task ends.
    pub fn spawn(
        client: Client,
        config: LeaseConfig,
        shutdown: CancellationToken,
    ) -> (LeaderState, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let elector = LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            tx,
            observed: None,
            last_renew: None,
        };
        let task = tokio::spawn(elector.run(shutdown));
        (
            LeaderState {
                rx,
                _constant: None,
            },
            task,
        )
    }

    async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            lease = %self.config.name,
            namespace = %self.config.namespace,
            identity = %self.config.identity,
            "starting leader election"
        );
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Round::Held) => {
                    self.last_renew = Some(Instant::now());
                    self.set_leader(true);
                }
                Ok(Round::Other) => {
                    if self.is_leader() {
                        tracing::warn!(identity = %self.config.identity, "lease taken by another replica");
                    }
                    self.set_leader(false);
                }
                Err(error) => {
                    tracing::warn!(%error, "leader election round failed");
                    let past_deadline = self
                        .last_renew
                        .is_none_or(|at| at.elapsed() >= self.config.renew_deadline);
                    if self.is_leader() && past_deadline {
                        tracing::warn!(
                            deadline = ?self.config.renew_deadline,
                            "could not renew the lease before the renew deadline; stepping down"
                        );
                        self.set_leader(false);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        let was_leader = self.is_leader();
        // Stop writing before the lease can go to someone else.
        self.set_leader(false);
        if was_leader {
            match self.release().await {
                Ok(()) => tracing::info!(identity = %self.config.identity, "released the lease"),
                Err(error) => {
                    tracing::warn!(%error, "could not release the lease; the standby takes over when it expires")
                }
            }
        }
    }

    fn is_leader(&self) -> bool {
        *self.tx.borrow()
    }

    fn set_leader(&self, leader: bool) {
        self.tx.send_if_modified(|current| {
            if *current == leader {
                return false;
            }
            tracing::info!(identity = %self.config.identity, leader, "leadership changed");
            *current = leader;
            true
        });
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    /// Every API call is bounded so a hung request cannot keep a stale leader writing.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaderError> {
        let timeout = self.config.retry_period.max(Duration::from_secs(1));
        match tokio::time::timeout(timeout, fut).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(_) => Err(LeaderError::Timeout {
                namespace: self.config.namespace.clone(),
                name: self.config.name.clone(),
                timeout,
            }),
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Round, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let current = self.call(self.api.get_opt(&self.config.name)).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.held_spec(now.clone(), now, 0)),
            };
            return match self
                .call(self.api.create(&PostParams::default(), &lease))
                .await
            {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Round::Held)
                }
                Err(LeaderError::Api { source, .. }) if is_conflict(&source) => Ok(Round::Other),
                Err(other) => Err(other),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        if !ours && holder.is_some() && !self.observed_expired() {
            return Ok(Round::Other);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            LeaseSpec {
                renew_time: Some(now),
                lease_duration_seconds: Some(seconds(self.config.lease_duration)),
                ..spec
            }
        } else {
            self.held_spec(now.clone(), now, transitions + 1)
        });
        // resourceVersion stays set from the read: a concurrent writer makes this a 409.
        match self
            .call(
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease),
            )
            .await
        {
            Ok(updated) => {
                if !ours {
                    tracing::info!(identity = %self.config.identity, previous = holder.as_deref().unwrap_or("none"), "acquired the lease");
                }
                self.observe(&updated);
                Ok(Round::Held)
            }
            Err(LeaderError::Api { source, .. }) if is_conflict(&source) => Ok(Round::Other),
            Err(other) => Err(other),
        }
    }

    fn held_spec(&self, acquire: MicroTime, renew: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(seconds(self.config.lease_duration)),
            acquire_time: Some(acquire),
            renew_time: Some(renew),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let record = Observed::of(lease);
        match &self.observed {
            Some((seen, _)) if *seen == record => {}
            _ => self.observed = Some((record, Instant::now())),
        }
    }

    /// Expired when the record has not changed for its lease duration, by our clock.
    fn observed_expired(&self) -> bool {
        let Some((record, since)) = &self.observed else {
            return true;
        };
        let duration = record
            .duration
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d as u64))
            .unwrap_or(self.config.lease_duration);
        since.elapsed() >= duration
    }

    /// Gives the lease up: empty holder, so any standby acquires it on its next round.
    async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.call(self.api.get_opt(&self.config.name)).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.call(
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease),
        )
        .await
        .map(|_| ())
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_between_electors_on_one_host() {
        // SAFETY of the assertion: POD_NAME is not set in unit tests.
        if std::env::var_os("POD_NAME").is_none() {
            assert_ne!(default_identity(), default_identity());
        }
    }

    #[test]
    fn lease_seconds_are_at_least_one() {
        assert_eq!(seconds(Duration::from_millis(300)), 1);
        assert_eq!(seconds(Duration::from_secs(15)), 15);
    }

    #[tokio::test]
    async fn always_state_leads() {
        let mut state = LeaderState::always();
        assert!(state.is_leader());
        assert!(state.wait_leader().await);
    }
}
