//! The status controller: the process's cache layer, reconcile, status writes, events, the
//! operators' HealthRules, and the wiring loop.
//!
//! A kube-runtime `Controller` over HealthScopes, driven by the HealthScope watch of the cache
//! layer ([`cache`]). Each reconcile reads only those caches, judges every referenced workload
//! ([`evaluate`], with the rules in force from [`rules`]), folds in the latest HTTP probe outcome
//! ([`probes`]), and writes the status only when it changed ([`reconcile`]), with an Event on each
//! health transition ([`events`]). A scope is reconciled when it changes, when anything its last
//! evaluation read changes, when its probe outcome or a HealthRule for a kind it holds changes,
//! and every probe interval regardless. The [`wiring`] loop keeps scopes' workloadRefs and
//! workloads' labels from the stored ApplicationConfigurations.

pub mod cache;
pub mod evaluate;
pub mod events;
pub mod probes;
pub mod reconcile;
pub mod rules;
pub mod wiring;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::HealthScope;
use crate::leader::LeaderState;
use crate::metrics::Metrics;
use crate::prober::{ProbeObserver, Prober};
use cache::{DependencyIndex, WorkloadCaches};
use probes::Probes;
use reconcile::Context;

pub use reconcile::{HEALTH_CHANGED, STATUS_FIELD_MANAGER};

/// Lowest probe interval a scope may ask for, unless configured otherwise.
pub const DEFAULT_MIN_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often state kept for deleted scopes is dropped.
const FORGET_DELETED_EVERY: Duration = Duration::from_secs(30);
/// HTTP methods probes use unless an operator allows more: the ones that change nothing.
pub const DEFAULT_PROBE_METHODS: [&str; 2] = ["GET", "HEAD"];
/// Probes in flight at once across all scopes, unless configured otherwise.
pub const DEFAULT_PROBE_CONCURRENCY: u32 = 64;
/// Scopes reconciled at once unless configured otherwise: enough to keep the API server busy
/// while each waits for its status write, few enough that a start-up burst of thousands of
/// scopes does not open a connection (and hold a patch in memory) per scope.
pub const DEFAULT_RECONCILE_CONCURRENCY: u16 = 16;

#[derive(Clone)]
pub struct ControllerConfig {
    /// Watch and reconcile only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Floor of every scope's probe interval.
    pub min_probe_interval: Duration,
    /// Global bound on probes in flight.
    pub probe_concurrency: usize,
    /// Most reconciles (evaluation and status write) in flight at once.
    pub reconcile_concurrency: u16,
    /// HTTP methods probes may use; a scope asking for another one is not probed, and its
    /// probed workloads say why ([`DEFAULT_PROBE_METHODS`] unless configured).
    pub probe_methods: Vec<String>,
    /// This replica's name in events (the pod name in a cluster).
    pub identity: String,
    /// How often the wiring loop plans every namespace when nothing changes; `None` turns the
    /// wiring off (nothing then writes workloadRefs or repairs labels).
    pub wiring_resync: Option<Duration>,
    /// Whether the wiring loop also corrects workloads' scope labels (needs `patch` on the
    /// workload kinds). Without it the workload webhook alone sets them, when a workload is
    /// created or updated.
    pub repair_labels: bool,
    /// Kinds without a built-in cache that scopes may hold (each is watched while a scope
    /// names it); others are `unknown`.
    pub extra_kinds: cache::ExtraKinds,
    /// Where the controller's, the probes' and the wiring loop's metrics go.
    pub metrics: Metrics,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            min_probe_interval: DEFAULT_MIN_PROBE_INTERVAL,
            probe_concurrency: DEFAULT_PROBE_CONCURRENCY as usize,
            reconcile_concurrency: DEFAULT_RECONCILE_CONCURRENCY,
            probe_methods: DEFAULT_PROBE_METHODS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            identity: "healthscope".to_string(),
            wiring_resync: Some(wiring::DEFAULT_RESYNC),
            repair_labels: true,
            extra_kinds: cache::ExtraKinds::None,
            metrics: Metrics::default(),
        }
    }
}

/// A running controller.
pub struct ControllerHandle {
    /// The HealthScope cache (with status), for the HTTP API and the wiring loop.
    pub scopes: Store<HealthScope>,
    /// The workload caches.
    pub caches: WorkloadCaches,
    /// The controller's metrics (reconciles, status writes, events, ...).
    pub metrics: crate::metrics::ControllerMetrics,
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ControllerHandle {
    /// True once every cache has listed its objects.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// A receiver that turns true once every cache has listed its objects.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Waits until every cache has listed its objects.
    pub async fn wait_ready(&mut self) {
        let _ = self.ready.wait_for(|r| *r).await;
    }

    /// Waits for the controller to finish draining after shutdown was requested.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts the caches and the controller on the current runtime. Only the leader probes and
/// writes; every replica keeps its caches warm. Cancelling `shutdown` stops new reconciles,
/// lets running ones finish, and stops the watches and probes.
pub fn start(
    client: Client,
    config: ControllerConfig,
    leader: LeaderState,
    shutdown: CancellationToken,
) -> Result<ControllerHandle, crate::prober::ProbeError> {
    let (trigger, mut triggered) = mpsc::unbounded_channel::<ObjectRef<HealthScope>>();
    let (scope_events, scope_stream) = mpsc::unbounded_channel();
    let index = DependencyIndex::default();
    let dirty = wiring::ChangedObjects::default();
    let wiring_on = config.wiring_resync.is_some();
    let feed = wiring::WiringFeed::new(dirty.clone());
    let rules = rules::RuleBook::default();
    // The one cache layer: every kind watched once, its events fanned out.
    let caches = WorkloadCaches::spawn(
        client.clone(),
        config.namespace.clone(),
        cache::Subscribers {
            index: index.clone(),
            trigger: trigger.clone(),
            wiring: wiring_on.then(|| feed.clone()),
            scopes: scope_events,
        },
        cache::AllowedKinds {
            listed: config.extra_kinds.clone(),
            rules: rules.clone(),
        },
        shutdown.clone(),
    );
    // Not part of readiness: without the HealthRule CRD (a chart upgrade does not install new
    // CRDs) the built-in judgement goes on, and the watch keeps retrying.
    rules::spawn(
        client.clone(),
        rules,
        index.clone(),
        trigger.clone(),
        leader.clone(),
        shutdown.clone(),
    );
    let scopes = caches.scopes.clone();
    let scope_stream = futures::stream::unfold(scope_stream, |mut events| async move {
        events.recv().await.map(|event| (event, events))
    });
    let controller = Controller::for_stream(scope_stream, scopes.clone()).with_config(
        kube::runtime::controller::Config::default()
            .concurrency(config.reconcile_concurrency.max(1)),
    );
    let observer: Arc<dyn ProbeObserver> = Arc::new(config.metrics.probes.clone());
    let prober = Prober::new(config.probe_concurrency.max(1), Some(observer))?;
    let probes = Probes::new(
        prober,
        trigger.clone(),
        config.metrics.probes.clone(),
        shutdown.clone(),
    );
    let unresolved = wiring::UnresolvedMembers::default();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "healthscope".to_string(),
            instance: Some(config.identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        scopes.clone(),
        caches.clone(),
        index,
        probes.clone(),
        leader.clone(),
        recorder,
        config.min_probe_interval,
        config.probe_methods.clone(),
        config.metrics.controller.clone(),
        config.metrics.probes.clone(),
        wiring_on.then(|| dirty.clone()),
        unresolved.clone(),
    ));

    if let Some(resync) = config.wiring_resync {
        let wiring = wiring::Wiring::new(
            client.clone(),
            caches.clone(),
            feed,
            leader.clone(),
            resync,
            config.repair_labels,
            config.metrics.wiring.clone(),
            unresolved,
            trigger,
        );
        tokio::spawn(wiring.run(shutdown.clone()));
    }

    // Workload, EndpointSlice and probe changes name the scopes to reconcile at once.
    let triggers = futures::stream::poll_fn(move |cx| triggered.poll_recv(cx));
    // Gaining leadership re-evaluates every scope; losing it stops probing.
    let became_leader = leadership_gained(leader, probes, config.metrics.controller.clone());

    // Deleted scopes get no reconcile: forget their probes, index entries and metrics here.
    let janitor_ctx = ctx.clone();
    let janitor_stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = janitor_stop.cancelled() => return,
                _ = tokio::time::sleep(FORGET_DELETED_EVERY) => {
                    janitor_ctx.forget_deleted_scopes();
                    janitor_ctx.caches.retain_dynamic(&janitor_ctx.kinds_in_use()).await;
                }
            }
        }
    });

    let (ready_tx, ready) = watch::channel(false);
    let waiting_caches = caches.clone();
    tokio::spawn(async move {
        waiting_caches.wait_synced().await;
        tracing::info!("caches synced");
        let _ = ready_tx.send(true);
    });

    let task = tokio::spawn(async move {
        controller
            .reconcile_on(triggers)
            .reconcile_all_on(became_leader)
            .graceful_shutdown_on(shutdown.cancelled_owned())
            .run(reconcile::reconcile, reconcile::error_policy, ctx)
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "controller event");
                }
            })
            .await;
        tracing::info!("controller stopped");
    });

    Ok(ControllerHandle {
        scopes,
        caches,
        metrics: config.metrics.controller.clone(),
        ready,
        task,
    })
}

fn leadership_gained(
    leader: LeaderState,
    probes: Probes,
    metrics: crate::metrics::ControllerMetrics,
) -> impl futures::Stream<Item = ()> + Send {
    metrics.set_leader(leader.is_leader());
    let state = (leader, probes, metrics);
    futures::stream::unfold(state, |(mut leader, probes, metrics)| async move {
        loop {
            let before = leader.is_leader();
            let now = leader.changed().await;
            metrics.set_leader(now);
            if now == before && !now {
                // The elector stopped: no more changes will come.
                return None;
            }
            if now {
                return Some(((), (leader, probes, metrics)));
            }
            probes.stop_all();
        }
    })
}
