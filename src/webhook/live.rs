//! Live reads for cache misses, for the admission routes. Admission writes nothing (`sideEffects: None`): the controller wires scopes from the
//! objects the API server stored.
//!
//! Snapshot misses: a freshly created object can reach the webhook before the watch cache has
//! it (a Component applied just before its AppConfig, a ContainerizedWorkload just before the
//! Deployment it owns). A handler is run against the cache; every object it asked for and did
//! not find is read live once (GET), and the handler runs again with those answers. At most
//! [`MAX_LOOKUP_ROUNDS`] rounds.
//!
//! Live reads are bounded: at most [`MAX_LIVE_READS`] objects and [`LIVE_READ_BUDGET`] per
//! request, well under the webhook's `timeoutSeconds`. An object found absent is remembered as
//! absent for [`MISS_MEMORY`], and taken as absent without a read only by a request that misses
//! more than its budget could read, so a burst of requests naming thousands of missing objects
//! does not read them again. When the budget runs out the request is answered with what is known, a warning saying so, a log line
//! naming the object and `healthscope_webhook_lookups_unfinished_total`. Nothing is lost by it:
//! admission only validates and warns (and labels workloads, which the wiring loop also does).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::Client;
use kube::api::Api;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};

use crate::admission::{
    OamKind, ObjectKey, Overlay, Recording, Snapshot, object_name, with_warnings,
};
use crate::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use crate::metrics::{Metrics, WebhookMetrics};

/// Most rounds of live reads for one request: enough for the longest chain, a
/// ContainerizedWorkload's child (parent, then its ApplicationConfiguration, then Components).
pub const MAX_LOOKUP_ROUNDS: usize = 3;
/// Most objects read live for one request.
pub const MAX_LIVE_READS: usize = 8;
/// Longest time one request spends on live reads, all rounds together.
pub const LIVE_READ_BUDGET: Duration = Duration::from_millis(1000);
/// How long an object read live and found absent is taken as absent without asking again.
pub const MISS_MEMORY: Duration = Duration::from_secs(5);
/// Most absent objects remembered at once; the oldest are forgotten first.
const MISS_MEMORY_ENTRIES: usize = 4096;

/// What the admission routes need: the cache, a client for live reads, the objects recently
/// found absent, and the metrics to record requests in. One shared allocation: every request
/// clones it.
#[derive(Clone)]
pub struct AdmissionState {
    shared: Arc<Shared>,
}

struct Shared {
    snapshot: Arc<dyn Snapshot>,
    client: Client,
    metrics: WebhookMetrics,
    absent: Mutex<HashMap<ObjectKey, Instant>>,
}

impl AdmissionState {
    pub fn new(snapshot: Arc<dyn Snapshot>, client: Client) -> Self {
        Self {
            shared: Arc::new(Shared {
                snapshot,
                client,
                metrics: WebhookMetrics::default(),
                absent: Mutex::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &WebhookMetrics {
        &self.shared.metrics
    }

    /// Takes the keys remembered as absent out of `keys` and records them in `overlay`.
    fn recall_absent(&self, keys: &mut BTreeSet<ObjectKey>, overlay: &mut Overlay) {
        let Ok(absent) = self.shared.absent.lock() else {
            return;
        };
        keys.retain(|key| {
            let known = absent.get(key).is_some_and(|at| at.elapsed() < MISS_MEMORY);
            if known {
                overlay.record_absent(key);
            }
            !known
        });
    }

    fn remember_absent(&self, keys: impl IntoIterator<Item = ObjectKey>) {
        let Ok(mut absent) = self.shared.absent.lock() else {
            return;
        };
        let now = Instant::now();
        absent.extend(keys.into_iter().map(|key| (key, now)));
        if absent.len() > MISS_MEMORY_ENTRIES {
            absent.retain(|_, at| at.elapsed() < MISS_MEMORY);
        }
        if absent.len() > MISS_MEMORY_ENTRIES {
            let mut ages: Vec<Instant> = absent.values().copied().collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() - MISS_MEMORY_ENTRIES];
            absent.retain(|_, at| *at >= cutoff);
        }
    }

    /// Records every admission request in `metrics`: healthscope_webhook_requests_total,
    /// _request_duration_seconds, _requests_in_flight, _request_bytes and _rejected_total.
    pub fn with_metrics(self, metrics: &Metrics) -> Self {
        let shared = &self.shared;
        Self {
            shared: Arc::new(Shared {
                snapshot: shared.snapshot.clone(),
                client: shared.client.clone(),
                metrics: metrics.webhook.clone(),
                absent: Mutex::default(),
            }),
        }
    }
}

/// A decision, and how many objects it asked for that could not be read within the budget.
pub struct LiveRead<T> {
    pub outcome: T,
    pub unread: usize,
}

/// Runs a pure decision against the cache, reading live whatever it missed (see the module
/// documentation), and returns the final decision.
pub async fn with_live_reads<T>(
    state: &AdmissionState,
    decide: impl Fn(&dyn Snapshot) -> T,
) -> LiveRead<T> {
    let deadline = Instant::now() + LIVE_READ_BUDGET;
    let mut reads_left = MAX_LIVE_READS;
    let mut overlay = Overlay::default();
    for _ in 0..MAX_LOOKUP_ROUNDS {
        let mut misses = {
            let recording = Recording::new(&*state.shared.snapshot, &overlay);
            let outcome = decide(&recording);
            let misses = recording.misses();
            if misses.is_empty() {
                return LiveRead { outcome, unread: 0 };
            }
            misses
        };
        // Remembered absences stand in only for more reads than the budget has left: a
        // request that can read what it misses reads it fresh (an AppConfig created a moment
        // ago must not be taken as absent).
        if misses.len() > reads_left {
            state.recall_absent(&mut misses, &mut overlay);
        }
        let now = Instant::now();
        if misses.len() > reads_left || now >= deadline {
            break;
        }
        reads_left -= misses.len();
        let absent = read_live(&state.shared.client, misses, &mut overlay, deadline - now).await;
        state.remember_absent(absent);
    }
    let recording = Recording::new(&*state.shared.snapshot, &overlay);
    let outcome = decide(&recording);
    let unread = recording.misses().len();
    LiveRead { outcome, unread }
}

/// The response to send: unchanged when every object was read; otherwise with a warning that
/// some were not, counted and logged with the object's name.
pub(super) fn settle_unread<K: kube::Resource>(
    state: &AdmissionState,
    request: &AdmissionRequest<K>,
    read: LiveRead<AdmissionResponse>,
) -> AdmissionResponse {
    if read.unread == 0 {
        return read.outcome;
    }
    let object = format!("{} {}", request.kind.kind, object_name(request));
    tracing::warn!(
        object = %object,
        unread = read.unread,
        "admission answered before every object it names was read (more than {MAX_LIVE_READS} \
         live reads or {} ms); warnings about missing objects may be incomplete",
        LIVE_READ_BUDGET.as_millis()
    );
    state.shared.metrics.lookups_unfinished();
    // First, so the API server's cap on warning length never drops it.
    let mut response = read.outcome;
    let mut warnings = vec![format!(
        "healthscope could not read {} object(s) that {object} names within its time budget; \
         it was checked against what it could read. The controller wires it from the stored \
         object either way.",
        read.unread
    )];
    warnings.extend(response.warnings.take().unwrap_or_default());
    with_warnings(response, warnings)
}

/// Reads `keys` from the API server into `overlay` (absent ones as `None`). A failed read counts
/// as absent, with a log line.
/// Returns the keys the API server said do not exist (not those that failed or timed out).
async fn read_live(
    client: &Client,
    keys: BTreeSet<ObjectKey>,
    overlay: &mut Overlay,
    budget: Duration,
) -> Vec<ObjectKey> {
    async fn get<K>(
        client: &Client,
        ns: &str,
        name: &str,
        budget: Duration,
    ) -> Result<Option<Arc<K>>, ()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api = Api::<K>::namespaced(client.clone(), ns);
        match tokio::time::timeout(budget, api.get_opt(name)).await {
            Ok(Ok(found)) => Ok(found.map(Arc::new)),
            Ok(Err(e)) => {
                tracing::warn!(namespace = ns, name, kind = %K::kind(&Default::default()), error = %e, "live read failed");
                Err(())
            }
            Err(_) => {
                tracing::warn!(namespace = ns, name, kind = %K::kind(&Default::default()), "live read timed out");
                Err(())
            }
        }
    }
    let reads = keys.into_iter().map(|key| async move {
        let (kind, ns, name) = &key;
        let value = match kind {
            OamKind::ApplicationConfiguration => {
                get::<ApplicationConfiguration>(client, ns, name, budget)
                    .await
                    .map(Fetched::App)
            }
            OamKind::Component => get::<Component>(client, ns, name, budget)
                .await
                .map(Fetched::Component),
            OamKind::ContainerizedWorkload => {
                get::<ContainerizedWorkload>(client, ns, name, budget)
                    .await
                    .map(Fetched::Cw)
            }
            OamKind::HealthScope => get::<HealthScope>(client, ns, name, budget)
                .await
                .map(Fetched::Scope),
        };
        (key, value)
    });
    let mut absent = Vec::new();
    for (key, fetched) in join_all(reads).await {
        // A failed read stays a miss: the decision counts it as unread.
        let Ok(fetched) = fetched else { continue };
        if fetched.is_absent() {
            absent.push(key.clone());
        }
        overlay.insert(&key, fetched);
    }
    absent
}

enum Fetched {
    App(Option<Arc<ApplicationConfiguration>>),
    Component(Option<Arc<Component>>),
    Cw(Option<Arc<ContainerizedWorkload>>),
    Scope(Option<Arc<HealthScope>>),
}

impl Fetched {
    fn is_absent(&self) -> bool {
        match self {
            Fetched::App(v) => v.is_none(),
            Fetched::Component(v) => v.is_none(),
            Fetched::Cw(v) => v.is_none(),
            Fetched::Scope(v) => v.is_none(),
        }
    }
}

impl Overlay {
    fn insert(&mut self, (_, ns, name): &ObjectKey, fetched: Fetched) {
        let key = (ns.clone(), name.clone());
        match fetched {
            Fetched::App(v) => drop(self.app_configurations.insert(key, v)),
            Fetched::Component(v) => drop(self.components.insert(key, v)),
            Fetched::Cw(v) => drop(self.containerized_workloads.insert(key, v)),
            Fetched::Scope(v) => drop(self.health_scopes.insert(key, v)),
        }
    }

    /// Records `key` as known absent.
    fn record_absent(&mut self, key: &ObjectKey) {
        let fetched = match key.0 {
            OamKind::ApplicationConfiguration => Fetched::App(None),
            OamKind::Component => Fetched::Component(None),
            OamKind::ContainerizedWorkload => Fetched::Cw(None),
            OamKind::HealthScope => Fetched::Scope(None),
        };
        self.insert(key, fetched);
    }
}
