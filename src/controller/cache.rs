//! The process's one cache layer: every kind healthscope reads is watched once (in `--namespace`
//! when given), trimmed to what decisions read, and each event fanned out to whoever needs it.
//! The reconcile and probe cycle, the wiring loop, the webhook and the admin API read these
//! stores and never GET or LIST.
//!
//! - Workloads: the built-in kinds from the start; any other kind on demand, the first time a
//!   scope references it (GVK resolved once through discovery).
//! - The OAM objects: ApplicationConfigurations, Components, ContainerizedWorkloads and
//!   HealthScopes.
//!
//! Fan-out: every event is mapped through the [`DependencyIndex`] to the scopes that read that
//! object in their last evaluation (queued for reconcile at once); marked for the wiring loop
//! ([`WiringFeed`], which also keeps its index of what each AppConfig names); and HealthScope
//! events drive the controller ([`ScopeEvents`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rules::RuleBook;
use super::wiring::WiringFeed;
use crate::api::cached::{CachedDaemonSet, CachedDeployment, CachedReplicaSet, CachedStatefulSet};
use crate::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};

pub use crate::health::SERVICE_NAME_LABEL;

/// How long a failed discovery of a kind is remembered before trying again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(30);
/// How long a reconcile waits for a newly started watch to list its objects.
const DYNAMIC_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// Something a scope's evaluation read: an object (by group, kind, namespace and name), or the
/// EndpointSlices of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DependencyKey {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl DependencyKey {
    pub fn new(group: &str, kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            group: group.to_string(),
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key every EndpointSlice of Service `name` maps to.
    pub fn endpoints_of(namespace: &str, service: &str) -> Self {
        Self::new("discovery.k8s.io", "EndpointSlice", namespace, service)
    }

    fn of<K: Resource>(obj: &K, dt: &K::DynamicType) -> Self {
        Self::new(
            &K::group(dt),
            &K::kind(dt),
            obj.meta().namespace.as_deref().unwrap_or_default(),
            obj.meta().name.as_deref().unwrap_or_default(),
        )
    }
}

/// Which scopes read which objects in their last evaluation. Each reconcile replaces its
/// scope's set, so the index follows refs, ContainerizedWorkload children and Services.
#[derive(Clone, Default)]
pub struct DependencyIndex {
    inner: Arc<RwLock<IndexInner>>,
}

#[derive(Default)]
struct IndexInner {
    /// Each key and each scope is allocated once and shared by both directions. A key is read
    /// by one scope or a few, so its readers are a short list rather than a set.
    by_key: HashMap<Arc<DependencyKey>, Vec<Arc<ObjectRef<HealthScope>>>>,
    by_scope: HashMap<Arc<ObjectRef<HealthScope>>, Vec<Arc<DependencyKey>>>,
}

impl DependencyIndex {
    pub fn set(&self, scope: &ObjectRef<HealthScope>, keys: BTreeSet<DependencyKey>) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        // Most evaluations read what the last one did.
        let unchanged = inner.by_scope.get(scope).is_some_and(|old| {
            old.len() == keys.len() && old.iter().zip(&keys).all(|(a, b)| **a == *b)
        });
        if unchanged {
            return;
        }
        if let Some(old) = inner.by_scope.remove(scope) {
            for key in old {
                if let Some(readers) = inner.by_key.get_mut(&key) {
                    readers.retain(|reader| **reader != *scope);
                    if readers.is_empty() {
                        inner.by_key.remove(&key);
                    }
                }
            }
        }
        if keys.is_empty() {
            return;
        }
        let reader = Arc::new(scope.clone());
        let mut shared = Vec::with_capacity(keys.len());
        for key in keys {
            let key = match inner.by_key.get_key_value(&key) {
                Some((existing, _)) => existing.clone(),
                None => Arc::new(key),
            };
            inner
                .by_key
                .entry(key.clone())
                .or_default()
                .push(reader.clone());
            shared.push(key);
        }
        inner.by_scope.insert(reader, shared);
    }

    pub fn remove(&self, scope: &ObjectRef<HealthScope>) {
        self.set(scope, BTreeSet::new());
    }

    /// The scopes that read an object of this group and kind.
    pub fn scopes_for_kind(&self, group: &str, kind: &str) -> Vec<ObjectRef<HealthScope>> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        let mut scopes: HashSet<ObjectRef<HealthScope>> = HashSet::new();
        for (key, readers) in &inner.by_key {
            if key.group == group && key.kind == kind {
                scopes.extend(readers.iter().map(|reader| (**reader).clone()));
            }
        }
        scopes.into_iter().collect()
    }

    /// Every scope with a recorded dependency.
    pub fn all_scopes(&self) -> Vec<ObjectRef<HealthScope>> {
        self.inner
            .read()
            .map(|inner| {
                inner
                    .by_scope
                    .keys()
                    .map(|scope| (**scope).clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn scopes_for(&self, key: &DependencyKey) -> Vec<ObjectRef<HealthScope>> {
        self.inner
            .read()
            .map(|inner| {
                inner
                    .by_key
                    .get(key)
                    .map(|readers| readers.iter().map(|reader| (**reader).clone()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

/// Where cache events send the scopes to reconcile.
pub type Trigger = mpsc::UnboundedSender<ObjectRef<HealthScope>>;

/// Where the HealthScope watch sends the scopes it applied: the controller's input stream.
pub type ScopeEvents = mpsc::UnboundedSender<Result<HealthScope, watcher::Error>>;

/// Who hears about cache events.
pub struct Subscribers {
    /// Scopes that read a changed object are sent to `trigger`.
    pub index: DependencyIndex,
    pub trigger: Trigger,
    /// The wiring loop, when it runs.
    pub wiring: Option<WiringFeed>,
    /// The controller's HealthScope stream.
    pub scopes: ScopeEvents,
}

/// The watch caches the controller reads. Cheap to clone.
#[derive(Clone)]
pub struct WorkloadCaches {
    pub apps: Store<ApplicationConfiguration>,
    pub components: Store<Component>,
    pub scopes: Store<HealthScope>,
    pub deployments: Store<CachedDeployment>,
    pub statefulsets: Store<CachedStatefulSet>,
    pub daemonsets: Store<CachedDaemonSet>,
    pub replicasets: Store<CachedReplicaSet>,
    pub services: Store<Service>,
    pub endpointslices: Store<EndpointSlice>,
    pub containerized: Store<ContainerizedWorkload>,
    dynamic: Arc<DynamicCaches>,
}

struct DynamicCaches {
    client: Client,
    namespace: Option<String>,
    index: DependencyIndex,
    trigger: Trigger,
    /// Marks every cache event for the wiring loop.
    wiring: Option<WiringFeed>,
    shutdown: CancellationToken,
    allowed: AllowedKinds,
    entries: tokio::sync::Mutex<HashMap<GroupVersionKind, DynamicEntry>>,
}

enum DynamicEntry {
    /// A watch, stopped by cancelling its token.
    Watching(Store<DynamicObject>, CancellationToken),
    Failed {
        reason: String,
        at: Instant,
    },
}

/// Kinds without a built-in cache that scopes may hold, by kind and group (any version): each
/// costs a cluster-wide (or `--namespace`-wide) watch while a scope names it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ExtraKinds {
    /// None: such workloads are `unknown`, saying how to allow their kind.
    #[default]
    None,
    /// Only these (kind, group) pairs.
    Only(BTreeSet<(String, String)>),
    /// Every kind the API server serves.
    All,
}

impl ExtraKinds {
    /// Parses `Kind.group` entries (e.g. `Database.example.com`; a bare `Kind` is in the core
    /// group, e.g. `PersistentVolumeClaim`), or `*` for every kind.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut only = BTreeSet::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if entry == "*" {
                return Ok(ExtraKinds::All);
            }
            let (kind, group) = entry.split_once('.').unwrap_or((entry, ""));
            let well_formed = !kind.is_empty()
                && kind.chars().all(|c| c.is_ascii_alphanumeric())
                && !entry.ends_with('.');
            match well_formed {
                true => {
                    only.insert((kind.to_string(), group.to_string()));
                }
                false => {
                    return Err(format!(
                        "{entry:?} is not Kind.group (e.g. Database.example.com) or *"
                    ));
                }
            }
        }
        Ok(if only.is_empty() {
            ExtraKinds::None
        } else {
            ExtraKinds::Only(only)
        })
    }

    pub fn allows(&self, gvk: &GroupVersionKind) -> bool {
        match self {
            ExtraKinds::None => false,
            ExtraKinds::All => true,
            ExtraKinds::Only(only) => only.contains(&(gvk.kind.clone(), gvk.group.clone())),
        }
    }
}

/// The webhook answers from the same stores (`healthscope run`).
impl crate::admission::Snapshot for WorkloadCaches {
    fn app_configuration(&self, ns: &str, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        self.apps.get(&ObjectRef::new(name).within(ns))
    }
    fn component(&self, ns: &str, name: &str) -> Option<Arc<Component>> {
        self.components.get(&ObjectRef::new(name).within(ns))
    }
    fn containerized_workload(&self, ns: &str, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        self.containerized.get(&ObjectRef::new(name).within(ns))
    }
    fn health_scope(&self, ns: &str, name: &str) -> Option<Arc<HealthScope>> {
        self.scopes.get(&ObjectRef::new(name).within(ns))
    }
}

/// What a reconcile learns about a kind without a built-in cache.
pub enum DynamicLookup {
    Store(Store<DynamicObject>),
    /// The API server does not serve this kind (or discovery failed), with the reason.
    Unknown(String),
}

impl WorkloadCaches {
    /// Starts a watch per kind (in `namespace`, or all namespaces) on the current runtime; they
    /// stop when `shutdown` is cancelled. Every event goes to `subscribers`.
    pub fn spawn(
        client: Client,
        namespace: Option<String>,
        subscribers: Subscribers,
        allowed: AllowedKinds,
        shutdown: CancellationToken,
    ) -> Self {
        let Subscribers {
            index,
            trigger,
            wiring,
            scopes: scope_events,
        } = subscribers;
        let ctx = WatchCtx {
            index: index.clone(),
            trigger: trigger.clone(),
            wiring: wiring.clone(),
            shutdown: shutdown.clone(),
        };
        let apps = watch_apps(&client, &namespace, &ctx);
        let components = typed::<Component>(&client, &namespace, &ctx);
        let scopes = watch_scopes(&client, &namespace, scope_events, &shutdown);
        let deployments = typed::<CachedDeployment>(&client, &namespace, &ctx);
        let statefulsets = typed::<CachedStatefulSet>(&client, &namespace, &ctx);
        let daemonsets = typed::<CachedDaemonSet>(&client, &namespace, &ctx);
        let replicasets = typed::<CachedReplicaSet>(&client, &namespace, &ctx);
        let services = typed::<Service>(&client, &namespace, &ctx);
        let endpointslices = typed::<EndpointSlice>(&client, &namespace, &ctx);
        let containerized = typed::<ContainerizedWorkload>(&client, &namespace, &ctx);
        Self {
            apps,
            components,
            scopes,
            deployments,
            statefulsets,
            daemonsets,
            replicasets,
            services,
            endpointslices,
            containerized,
            dynamic: Arc::new(DynamicCaches {
                client,
                namespace,
                index,
                trigger,
                wiring,
                shutdown,
                allowed,
                entries: Default::default(),
            }),
        }
    }

    /// Resolves once every cache of a built-in kind has listed its objects (any number of
    /// callers).
    pub async fn wait_synced(&self) {
        futures::join!(
            store_ready(&self.apps),
            store_ready(&self.components),
            store_ready(&self.scopes),
            store_ready(&self.deployments),
            store_ready(&self.statefulsets),
            store_ready(&self.daemonsets),
            store_ready(&self.replicasets),
            store_ready(&self.services),
            store_ready(&self.endpointslices),
            store_ready(&self.containerized),
        );
    }

    /// The operator's HealthRules in force.
    pub fn rules(&self) -> &RuleBook {
        &self.dynamic.allowed.rules
    }

    /// The cache for a kind without a built-in one, starting its watch on first use.
    pub async fn dynamic(&self, gvk: &GroupVersionKind) -> DynamicLookup {
        self.dynamic.lookup(gvk).await
    }

    /// Stops the watches of kinds no scope names any more (`in_use`) or no longer allowed (its
    /// HealthRule deleted), and forgets discovery failures old enough to be tried again.
    pub async fn retain_dynamic(&self, in_use: &HashSet<GroupVersionKind>) {
        let mut entries = self.dynamic.entries.lock().await;
        entries.retain(|gvk, entry| match entry {
            DynamicEntry::Watching(_, stop) => {
                let keep = in_use.contains(gvk) && self.dynamic.allowed.allows(gvk);
                if !keep {
                    tracing::info!(kind = %api_version_kind(gvk), "no scope names this kind any more, or it is no longer allowed; its watch is stopped");
                    stop.cancel();
                }
                keep
            }
            DynamicEntry::Failed { at, .. } => at.elapsed() < DISCOVERY_RETRY,
        });
    }
}

struct WatchCtx {
    index: DependencyIndex,
    trigger: Trigger,
    wiring: Option<WiringFeed>,
    shutdown: CancellationToken,
}

fn typed<K>(client: &Client, namespace: &Option<String>, ctx: &WatchCtx) -> Store<K>
where
    K: TrimForCache,
{
    let (store, events) = reflect_typed::<K>(client, namespace, &ctx.shutdown);
    tokio::spawn(forward(
        events,
        (),
        ctx.index.clone(),
        ctx.trigger.clone(),
        ctx.wiring.clone(),
        ctx.shutdown.clone(),
    ));
    store
}

/// A watch of `K` (in `namespace`, or all namespaces), each object trimmed and reflected into
/// the returned store: the store, and the watch's events until `shutdown`.
fn reflect_typed<K>(
    client: &Client,
    namespace: &Option<String>,
    shutdown: &CancellationToken,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: TrimForCache,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let writer = reflector::store::Writer::new(());
    let store = writer.as_reader();
    let events = watcher(api, watcher::Config::default().page_size(100))
        .backoff(crate::cache::WatchBackoff::default())
        .modify(|obj: &mut K| obj.trim_for_cache())
        .reflect(writer)
        .take_until(shutdown.clone().cancelled_owned());
    (store, events)
}

/// What a cached object keeps: only what the health rules, the probes and the wiring loop read.
/// At 10,000 workloads the managedFields and last-applied annotations would be most of the
/// memory a cache holds (the workload kinds' pod templates are never even deserialized: see
/// [`crate::api::cached`]).
///
/// Every kind the caches watch implements it, so it also carries what a watch needs of a kind.
pub trait TrimForCache:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    fn trim_for_cache(&mut self) {
        self.managed_fields_mut().clear();
        if let Some(annotations) = self.meta_mut().annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
        }
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl TrimForCache for CachedDeployment {}
impl TrimForCache for CachedStatefulSet {}
impl TrimForCache for CachedDaemonSet {}
impl TrimForCache for CachedReplicaSet {}
impl TrimForCache for Service {}
impl TrimForCache for EndpointSlice {}
impl TrimForCache for ContainerizedWorkload {}
impl TrimForCache for Component {}
// The wiring loop reads which refs its own field managers own; the admin API reads the status.
impl TrimForCache for HealthScope {
    fn trim_for_cache(&mut self) {
        super::wiring::keep_wiring_fields(&mut self.metadata);
        if let Some(annotations) = self.meta_mut().annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
        }
    }
}
impl TrimForCache for ApplicationConfiguration {}

/// The ApplicationConfiguration watch: its events feed the wiring loop (and its index of what
/// each AppConfig names); nothing's health reads an AppConfig.
fn watch_apps(
    client: &Client,
    namespace: &Option<String>,
    ctx: &WatchCtx,
) -> Store<ApplicationConfiguration> {
    let (store, events) =
        reflect_typed::<ApplicationConfiguration>(client, namespace, &ctx.shutdown);
    let wiring = ctx.wiring.clone();
    let reader = store.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if let Some(wiring) = &wiring {
                        wiring.app_event(&reader, &event);
                    }
                }
                Err(error) => crate::cache::log_watch_error("ApplicationConfiguration", &error),
            }
        }
    });
    store
}

/// The HealthScope watch (trimmed to what the wiring loop and the admin API read): every scope
/// applied goes to the controller's stream.
fn watch_scopes(
    client: &Client,
    namespace: &Option<String>,
    scope_events: ScopeEvents,
    shutdown: &CancellationToken,
) -> Store<HealthScope> {
    let (store, events) = reflect_typed::<HealthScope>(client, namespace, shutdown);
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(scope) | watcher::Event::InitApply(scope)) => {
                    let _ = scope_events.send(Ok(scope));
                }
                Ok(_) => {}
                Err(error) => {
                    crate::cache::log_watch_error("HealthScope", &error);
                    let _ = scope_events.send(Err(error));
                }
            }
        }
    });
    store
}

/// Drives one watch and maps each touched object to the scopes that depend on it. A relist
/// (after the watch expired) does not say which objects were deleted meanwhile, so its end
/// re-evaluates every scope and marks everything for the wiring loop.
async fn forward<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    dt: K::DynamicType,
    index: DependencyIndex,
    trigger: Trigger,
    wiring: Option<WiringFeed>,
    shutdown: CancellationToken,
) where
    K: Resource + Send,
{
    let mut events = std::pin::pin!(events.take_until(shutdown.cancelled_owned()));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                for scope in index.all_scopes() {
                    let _ = trigger.send(scope);
                }
                if let Some(wiring) = &wiring {
                    wiring.mark_everything();
                }
            }
            Ok(watcher::Event::Init) => {}
            Ok(
                watcher::Event::Apply(obj)
                | watcher::Event::InitApply(obj)
                | watcher::Event::Delete(obj),
            ) => {
                for key in keys_touched(&obj, &dt) {
                    for scope in index.scopes_for(&key) {
                        let _ = trigger.send(scope);
                    }
                }
                if let Some(wiring) = &wiring {
                    wiring.mark(&obj, &dt);
                }
            }
            Err(error) => crate::cache::log_watch_error(&K::kind(&dt), &error),
        }
    }
}

/// Waits until `store` has listed once (or its writer is gone, at shutdown); see
/// [`crate::cache::store_ready`] for why this never awaits `Store::wait_until_ready` directly.
pub async fn store_ready<K>(store: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let _ = crate::cache::store_ready(store).await;
}

/// The dependency keys an object change touches: itself, and for an EndpointSlice the
/// Service it belongs to.
fn keys_touched<K: Resource>(obj: &K, dt: &K::DynamicType) -> Vec<DependencyKey> {
    let mut keys = vec![DependencyKey::of(obj, dt)];
    if K::kind(dt) == "EndpointSlice"
        && let Some(service) = obj.labels().get(SERVICE_NAME_LABEL)
    {
        keys.push(DependencyKey::endpoints_of(
            obj.meta().namespace.as_deref().unwrap_or_default(),
            service,
        ));
    }
    keys
}

/// The kinds without a built-in cache that may be watched: those an operator lists
/// (`--extra-kinds`) and those a HealthRule names.
#[derive(Clone, Default)]
pub struct AllowedKinds {
    pub listed: ExtraKinds,
    pub rules: RuleBook,
}

impl AllowedKinds {
    pub fn allows(&self, gvk: &GroupVersionKind) -> bool {
        self.listed.allows(gvk) || self.rules.current().names(&gvk.group, &gvk.kind)
    }
}

impl DynamicCaches {
    async fn lookup(&self, gvk: &GroupVersionKind) -> DynamicLookup {
        if !self.allowed.allows(gvk) {
            let entry = match gvk.group.as_str() {
                "" => gvk.kind.clone(),
                group => format!("{}.{group}", gvk.kind),
            };
            return DynamicLookup::Unknown(format!(
                "kind {} is not watched: an operator allows it with --extra-kinds {entry} \
                 (chart value extraKinds) or a HealthRule for it",
                api_version_kind(gvk),
            ));
        }
        let mut entries = self.entries.lock().await;
        match entries.get(gvk) {
            Some(DynamicEntry::Watching(store, _)) => return listed(store.clone(), gvk),
            Some(DynamicEntry::Failed { reason, at }) if at.elapsed() < DISCOVERY_RETRY => {
                return DynamicLookup::Unknown(reason.clone());
            }
            _ => {}
        }
        // One discovery call per kind, not per cycle: the result is kept.
        let resource = match kube::discovery::pinned_kind(&self.client, gvk).await {
            Ok((resource, caps)) => {
                if caps.scope == kube::discovery::Scope::Cluster {
                    let reason = format!(
                        "{}/{} {} is cluster-scoped; a scope holds namespaced workloads only",
                        gvk.group, gvk.version, gvk.kind
                    );
                    entries.insert(
                        gvk.clone(),
                        DynamicEntry::Failed {
                            reason: reason.clone(),
                            at: Instant::now(),
                        },
                    );
                    return DynamicLookup::Unknown(reason);
                }
                resource
            }
            Err(error) => {
                let reason = format!(
                    "kind {} is not served by the API server ({})",
                    api_version_kind(gvk),
                    error
                );
                entries.insert(
                    gvk.clone(),
                    DynamicEntry::Failed {
                        reason: reason.clone(),
                        at: Instant::now(),
                    },
                );
                return DynamicLookup::Unknown(reason);
            }
        };
        let stop = self.shutdown.child_token();
        let store = self.watch(resource, stop.clone());
        entries.insert(gvk.clone(), DynamicEntry::Watching(store.clone(), stop));
        drop(entries);
        let _ = tokio::time::timeout(DYNAMIC_SYNC_TIMEOUT, store_ready(&store)).await;
        listed(store, gvk)
    }

    fn watch(&self, resource: ApiResource, stop: CancellationToken) -> Store<DynamicObject> {
        tracing::info!(kind = %resource.kind, group = %resource.group, "watching a kind referenced by a scope");
        let api: Api<DynamicObject> = match &self.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            None => Api::all_with(self.client.clone(), &resource),
        };
        let ctx = WatchCtx {
            index: self.index.clone(),
            trigger: self.trigger.clone(),
            wiring: self.wiring.clone(),
            shutdown: stop,
        };
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let types = resource.clone();
        let events = watcher(api, watcher::Config::default().page_size(100))
            .backoff(crate::cache::WatchBackoff::default())
            .modify(move |obj: &mut DynamicObject| {
                obj.managed_fields_mut().clear();
                // List items may come without apiVersion/kind; the rules read them.
                if obj.types.is_none() {
                    obj.types = Some(kube::api::TypeMeta {
                        api_version: types.api_version.clone(),
                        kind: types.kind.clone(),
                    });
                }
            })
            .reflect(writer);
        tokio::spawn(forward(
            events,
            resource,
            ctx.index,
            ctx.trigger,
            ctx.wiring,
            ctx.shutdown,
        ));
        store
    }
}

/// A dynamic store that has not listed yet cannot say an object is missing: the kind is
/// unknown until it has (e.g. while list/watch of that kind is forbidden).
fn listed(store: Store<DynamicObject>, gvk: &GroupVersionKind) -> DynamicLookup {
    use futures::FutureExt;
    if store.wait_until_ready().now_or_never().is_some() {
        DynamicLookup::Store(store)
    } else {
        DynamicLookup::Unknown(format!(
            "the watch of {} has not listed its objects yet (is list/watch of this kind allowed?)",
            api_version_kind(gvk)
        ))
    }
}

pub fn api_version_kind(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        format!("{}/{}", gvk.version, gvk.kind)
    } else {
        format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_kinds_are_kind_dot_group_or_a_star() {
        let parse = |entries: &[&str]| {
            ExtraKinds::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        let allowed = parse(&["Database.example.com", " PersistentVolumeClaim "]).unwrap();
        assert!(allowed.allows(&GroupVersionKind::gvk("example.com", "v1", "Database")));
        assert!(allowed.allows(&GroupVersionKind::gvk("example.com", "v2", "Database")));
        assert!(allowed.allows(&GroupVersionKind::gvk("", "v1", "PersistentVolumeClaim")));
        assert!(!allowed.allows(&GroupVersionKind::gvk("example.org", "v1", "Database")));
        assert_eq!(parse(&[]).unwrap(), ExtraKinds::None);
        assert_eq!(parse(&["*"]).unwrap(), ExtraKinds::All);
        for bad in [".example.com", "Data base.example.com", "Database.", "a/b"] {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn trimmed_workloads_keep_what_health_reads() {
        let mut deployment: CachedDeployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": 2,
                "labels": {"healthscope.core.oam.dev/app": "true"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"replicas": 3, "selector": {}, "paused": true,
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web:1"}]}}},
            "status": {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3,
                "readyReplicas": 3, "availableReplicas": 3},
        }))
        .unwrap();
        let before = crate::health::deployment(&deployment);
        deployment.trim_for_cache();
        assert_eq!(crate::health::deployment(&deployment), before);
        assert!(
            deployment
                .metadata
                .managed_fields
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        );
        let annotations = deployment.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!(deployment.labels()["healthscope.core.oam.dev/app"], "true");
    }

    #[test]
    fn index_follows_the_latest_evaluation_of_each_scope() {
        let index = DependencyIndex::default();
        let a = ObjectRef::<HealthScope>::new("a").within("ns");
        let b = ObjectRef::<HealthScope>::new("b").within("ns");
        let web = DependencyKey::new("apps", "Deployment", "ns", "web");
        let db = DependencyKey::new("apps", "StatefulSet", "ns", "db");
        index.set(&a, [web.clone(), db.clone()].into());
        index.set(&b, [web.clone()].into());
        let both: HashSet<_> = index.scopes_for(&web).into_iter().collect();
        assert_eq!(both, [a.clone(), b.clone()].into());

        // a no longer reads web: only b is triggered by it.
        index.set(&a, [db.clone()].into());
        assert_eq!(index.scopes_for(&web), vec![b.clone()]);
        assert_eq!(index.scopes_for(&db), vec![a.clone()]);

        index.remove(&a);
        assert!(index.scopes_for(&db).is_empty());
    }

    #[test]
    fn endpointslice_touches_its_service() {
        let mut slice = EndpointSlice::default();
        slice.metadata.name = Some("web-abc".into());
        slice.metadata.namespace = Some("ns".into());
        slice.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into());
        let keys = keys_touched(&slice, &());
        assert!(keys.contains(&DependencyKey::endpoints_of("ns", "web")));
    }
}
