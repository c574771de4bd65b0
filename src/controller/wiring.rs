//! The wiring loop: from the ApplicationConfigurations the API server stored, make every
//! HealthScope's `workloadRefs` and every workload's scope labels what membership says. It is
//! the only writer of refs (admission writes nothing). It is event-driven: every change to an
//! AppConfig, Component, ContainerizedWorkload, scope or workload marks that object, and what
//! the marked objects affect is planned moments later; every namespace is also planned whole
//! periodically, so nothing a missed event left behind stays wrong.
//!
//! It calls the pure functions of [`crate::membership`]. A scope's refs are the workloads of
//! every AppConfig naming it, written by server-side apply under one field manager
//! ([`WIRING_FIELD_MANAGER`]), so the entries of an AppConfig that is gone, being deleted or no
//! longer names the scope drop out of the next apply; labels are set by merge patch on the exact
//! object. [`plan`], [`plan_scope`] and [`plan_labels`] are pure; [`Wiring`] only executes, and
//! under load one write per scope carries every change made since the last.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cache::{WorkloadCaches, store_ready};
use crate::api::oam;
use crate::api::{
    ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope, WorkloadReference,
};
use crate::leader::LeaderState;
use crate::membership::{
    self, ComponentLookup, OamLookup, WIRING_FIELD_MANAGER, WorkloadScopes, desired_memberships,
    refs_by_scope, scope_label_changes, workload_refs_apply,
};
use crate::metrics::WiringMetrics;

/// How often every namespace is planned again when nothing changes. Every change is planned
/// from its watch event and every relist plans everything, so this pass only repairs what a
/// lost event could have left behind; at 100,000 workloads it costs a second of CPU.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(300);
/// The longest wait before a namespace whose writes keep failing is planned again.
const RETRY_CEILING: Duration = Duration::from_secs(30);
/// Changes arriving within this window after the first share one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// One write the wiring loop decided on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Make `manager` own exactly `refs` in the scope's workloadRefs (empty: give them up).
    ApplyRefs {
        namespace: String,
        scope: String,
        manager: String,
        refs: Vec<WorkloadReference>,
        /// The resourceVersion of the cached scope this was planned from.
        basis: Option<String>,
    },
    /// Set and remove scope labels on one workload object.
    Label {
        namespace: String,
        api_version: String,
        kind: String,
        name: String,
        resource_version: Option<String>,
        add: BTreeMap<String, String>,
        remove: BTreeSet<String>,
    },
}

impl Action {
    fn namespace(&self) -> &str {
        match self {
            Action::ApplyRefs { namespace, .. } | Action::Label { namespace, .. } => namespace,
        }
    }

    fn metric_target(&self) -> &'static str {
        match self {
            Action::ApplyRefs { .. } => "refs",
            Action::Label { .. } => "labels",
        }
    }

    /// The object written: (kind, name) within the namespace.
    fn target(&self) -> (String, String) {
        match self {
            Action::ApplyRefs {
                namespace, scope, ..
            } => (format!("HealthScope {namespace}"), scope.clone()),
            Action::Label {
                namespace,
                kind,
                name,
                ..
            } => (format!("{kind} {namespace}"), name.clone()),
        }
    }

    /// What the write does, for the log.
    fn describe(&self) -> String {
        match self {
            Action::ApplyRefs {
                namespace,
                scope,
                manager,
                refs,
                ..
            } if manager == WIRING_FIELD_MANAGER => format!(
                "workloadRefs of HealthScope {namespace}/{scope}: {} ref(s)",
                refs.len()
            ),
            Action::ApplyRefs {
                namespace,
                scope,
                manager,
                ..
            } => format!(
                "workloadRefs of HealthScope {namespace}/{scope}: the entries of an earlier \
                 version's field manager {manager} given up"
            ),
            Action::Label {
                namespace,
                kind,
                name,
                add,
                remove,
                ..
            } => format!(
                "scope labels of {kind} {namespace}/{name}: set [{}], removed [{}]",
                add.keys().cloned().collect::<Vec<_>>().join(", "),
                remove.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The workloadRefs keys (apiVersion, kind, name) a field manager owns, read from managedFields.
pub fn owned_refs(
    managed: &[ManagedFieldsEntry],
    manager: &str,
) -> BTreeSet<(String, String, String)> {
    managed
        .iter()
        .filter(|m| {
            m.manager.as_deref() == Some(manager) && m.operation.as_deref() == Some("Apply")
        })
        .filter_map(|m| m.fields_v1.as_ref())
        .filter_map(|f| f.0.get("f:spec")?.get("f:workloadRefs")?.as_object())
        .flat_map(|refs| refs.keys())
        .filter_map(|key| {
            let value: serde_json::Value = serde_json::from_str(key.strip_prefix("k:")?).ok()?;
            Some((
                value.get("apiVersion")?.as_str()?.to_string(),
                value.get("kind")?.as_str()?.to_string(),
                value.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Keeps of `managedFields` only what [`owned_refs`] reads: the `spec.workloadRefs` owned by
/// healthscope's field managers. The creator's and the status writer's entries are most of a
/// cached scope's size (about 12 KB each with ten refs and ten conditions).
pub fn keep_wiring_fields(meta: &mut ObjectMeta) {
    let Some(managed) = meta.managed_fields.as_mut() else {
        return;
    };
    managed.retain(|m| {
        m.operation.as_deref() == Some("Apply")
            && m.manager.as_deref().is_some_and(|manager| {
                manager == WIRING_FIELD_MANAGER || membership::is_per_appconfig_manager(manager)
            })
    });
    for entry in managed.iter_mut() {
        let refs = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:spec")?.get("f:workloadRefs").cloned());
        entry.fields_v1 = refs.map(|refs| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                serde_json::json!({ "f:spec": { "f:workloadRefs": refs } }),
            )
        });
        entry.time = None;
    }
}

/// Field managers of earlier versions (one per ApplicationConfiguration) that still own an
/// entry of the scope's workloadRefs.
fn per_appconfig_managers(meta: &ObjectMeta) -> BTreeSet<String> {
    let managed = meta.managed_fields.as_deref().unwrap_or_default();
    managed
        .iter()
        .filter_map(|m| m.manager.clone())
        .filter(|m| membership::is_per_appconfig_manager(m))
        .filter(|m| !owned_refs(managed, m).is_empty())
        .collect()
}

/// What the wiring loop reads about one namespace.
#[derive(Default)]
pub struct NamespaceSnapshot {
    pub namespace: String,
    pub apps: BTreeMap<String, Arc<ApplicationConfiguration>>,
    pub components: BTreeMap<String, Arc<Component>>,
    pub containerized: BTreeMap<String, Arc<ContainerizedWorkload>>,
    pub scopes: BTreeMap<String, Arc<HealthScope>>,
    /// Workload objects that may carry scope labels.
    pub workloads: Vec<CachedWorkload>,
}

/// A cached object that may carry scope labels, shared with its cache (planning every namespace
/// copies no metadata): its apiVersion and kind, and the object for its metadata.
#[derive(Clone)]
pub struct CachedWorkload {
    pub api_version: &'static str,
    pub kind: &'static str,
    object: Arc<dyn HasMeta>,
}

/// Any cached object, for its metadata.
trait HasMeta: Send + Sync {
    fn object_meta(&self) -> &ObjectMeta;
}

impl<K: Resource + Send + Sync> HasMeta for K {
    fn object_meta(&self) -> &ObjectMeta {
        self.meta()
    }
}

impl CachedWorkload {
    pub fn new<K: Resource + Send + Sync + 'static>(
        api_version: &'static str,
        kind: &'static str,
        object: Arc<K>,
    ) -> Self {
        Self {
            api_version,
            kind,
            object,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        self.object.object_meta()
    }
}

impl ComponentLookup for NamespaceSnapshot {
    fn component(&self, name: &str) -> Option<Arc<Component>> {
        self.components.get(name).cloned()
    }
}

impl OamLookup for NamespaceSnapshot {
    fn app_configuration(&self, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        self.apps.get(name).cloned()
    }
    fn containerized_workload(&self, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        self.containerized.get(name).cloned()
    }
}

fn key(r: &WorkloadReference) -> (String, String, String) {
    (r.api_version.clone(), r.kind.clone(), r.name.clone())
}

/// What the wiring decisions read about one namespace: its ApplicationConfigurations,
/// Components and ContainerizedWorkloads (by name) and its HealthScopes.
pub trait NamespaceView: OamLookup {
    fn namespace(&self) -> &str;
    fn scopes(&self) -> Vec<Arc<HealthScope>>;
    /// The ApplicationConfigurations that name `scope`.
    fn apps_naming(&self, scope: &str) -> Vec<Arc<ApplicationConfiguration>>;
}

impl NamespaceView for NamespaceSnapshot {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn scopes(&self) -> Vec<Arc<HealthScope>> {
        self.scopes.values().cloned().collect()
    }
    fn apps_naming(&self, scope: &str) -> Vec<Arc<ApplicationConfiguration>> {
        self.apps
            .values()
            .filter(|app| membership::referenced_scopes(app).contains(scope))
            .cloned()
            .collect()
    }
}

/// Every write needed to make one namespace right; empty when it already is.
pub fn plan(snapshot: &NamespaceSnapshot) -> Vec<Action> {
    let mut by_scope: BTreeMap<String, Vec<Arc<ApplicationConfiguration>>> = BTreeMap::new();
    for app in snapshot.apps.values() {
        for scope in membership::referenced_scopes(app) {
            by_scope.entry(scope).or_default().push(app.clone());
        }
    }
    let mut actions = Vec::new();
    for (name, scope) in &snapshot.scopes {
        let apps = by_scope.remove(name).unwrap_or_default();
        actions.extend(plan_scope(snapshot, scope, &apps));
    }
    for workload in &snapshot.workloads {
        actions.extend(plan_labels(
            snapshot,
            workload.api_version,
            workload.kind,
            workload.meta(),
        ));
    }
    actions
}

/// The refs writes of one scope, given the ApplicationConfigurations that name it: the
/// workloads they render (or will, by the names predicted from their spec), owned by
/// [`WIRING_FIELD_MANAGER`], written when that differs from what it owns or an entry is
/// missing; an AppConfig being deleted (the OAM runtime's finalizer is removing it) contributes
/// nothing. Entries of earlier versions' per-AppConfig managers are given up.
pub fn plan_scope(
    view: &dyn OamLookup,
    scope: &HealthScope,
    apps: &[Arc<ApplicationConfiguration>],
) -> Vec<Action> {
    let scope_name = scope.name_any();
    let namespace = scope.namespace().unwrap_or_default();
    let mut wanted: BTreeSet<WorkloadReference> = BTreeSet::new();
    for app in apps {
        if app.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut by_scope = refs_by_scope(&desired_memberships(app, view).members);
        wanted.extend(by_scope.remove(&scope_name).unwrap_or_default());
    }
    let managed = scope.meta().managed_fields.as_deref().unwrap_or_default();
    let owned = owned_refs(managed, WIRING_FIELD_MANAGER);
    let keys: BTreeSet<_> = wanted.iter().map(key).collect();
    let present: BTreeSet<_> = scope.spec.workload_refs.iter().map(key).collect();
    let basis = scope.meta().resource_version.clone();
    let mut actions = Vec::new();
    if owned != keys || !keys.is_subset(&present) {
        actions.push(Action::ApplyRefs {
            namespace: namespace.clone(),
            scope: scope_name.clone(),
            manager: WIRING_FIELD_MANAGER.to_string(),
            refs: wanted.into_iter().collect(),
            basis: basis.clone(),
        });
    }
    for manager in per_appconfig_managers(scope.meta()) {
        actions.push(Action::ApplyRefs {
            namespace: namespace.clone(),
            scope: scope_name.clone(),
            manager,
            refs: Vec::new(),
            basis: basis.clone(),
        });
    }
    actions
}

/// The label write one workload needs, if any.
pub fn plan_labels(
    view: &dyn NamespaceView,
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
) -> Option<Action> {
    let WorkloadScopes::Scopes(scopes) = membership::workload_scopes(api_version, kind, meta, view)
    else {
        return None;
    };
    let labels = meta.labels.clone().unwrap_or_default();
    let changes = scope_label_changes(&labels, &scopes);
    if changes.is_empty() {
        return None;
    }
    Some(Action::Label {
        namespace: view.namespace().to_string(),
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone(),
        add: changes.add,
        remove: changes.remove,
    })
}

/// The merge patch for a label action: set `add`, delete `remove`, guarded by resourceVersion.
pub fn label_merge_patch(
    resource_version: Option<&str>,
    add: &BTreeMap<String, String>,
    remove: &BTreeSet<String>,
) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in add {
        labels.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    for k in remove {
        labels.insert(k.clone(), serde_json::Value::Null);
    }
    let mut metadata = serde_json::json!({ "labels": labels });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = serde_json::Value::String(rv.to_string());
    }
    serde_json::json!({ "metadata": metadata })
}

/// An object whose change may change the wiring: its apiVersion, kind, namespace and name.
/// An empty kind stands for the whole namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChangedObject {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// The objects changed since the wiring loop last planned, and its wake-up. Every watch event
/// of an AppConfig, Component, HealthScope, ContainerizedWorkload or workload is marked here;
/// cheap to clone.
#[derive(Clone, Default)]
pub struct ChangedObjects {
    inner: Arc<ChangedInner>,
}

#[derive(Default)]
struct ChangedInner {
    objects: std::sync::Mutex<HashSet<ChangedObject>>,
    /// Set when a watch relisted: it cannot say what was deleted meanwhile.
    everything: std::sync::atomic::AtomicBool,
    wake: Notify,
}

impl ChangedObjects {
    /// Marks one object for the next plan.
    pub fn mark<K: Resource>(&self, obj: &K, dt: &K::DynamicType) {
        let changed = ChangedObject {
            api_version: K::api_version(dt).into_owned(),
            kind: K::kind(dt).into_owned(),
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
        };
        if let Ok(mut objects) = self.inner.objects.lock() {
            objects.insert(changed);
        }
        // A permit is kept when the loop is busy, so no mark is ever missed.
        self.inner.wake.notify_one();
    }

    /// Marks a whole namespace to be planned again (after a failed write).
    pub fn mark_namespace(&self, namespace: &str) {
        if let Ok(mut objects) = self.inner.objects.lock() {
            objects.insert(ChangedObject {
                namespace: namespace.to_string(),
                ..Default::default()
            });
        }
        self.inner.wake.notify_one();
    }

    /// Marks everything to be planned again (a watch relisted).
    pub fn mark_everything(&self) {
        self.inner
            .everything
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.wake.notify_one();
    }

    fn take_everything(&self) -> bool {
        self.inner
            .everything
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    fn take(&self) -> HashSet<ChangedObject> {
        self.inner
            .objects
            .lock()
            .map(|mut objects| std::mem::take(&mut *objects))
            .unwrap_or_default()
    }

    async fn marked(&self) {
        self.inner.wake.notified().await
    }
}

/// Why the ApplicationConfigurations naming a scope add no member for some component (a
/// Component that does not exist), per scope, as the wiring loop last planned it; the
/// controller reports a scope with no workloads but such reasons as unknown. Cheap to clone.
#[derive(Clone, Default)]
pub struct UnresolvedMembers {
    scopes: Arc<std::sync::Mutex<HashMap<ObjectRef<HealthScope>, Vec<String>>>>,
}

impl UnresolvedMembers {
    pub fn get(&self, scope: &ObjectRef<HealthScope>) -> Vec<String> {
        self.scopes
            .lock()
            .ok()
            .and_then(|scopes| scopes.get(scope).cloned())
            .unwrap_or_default()
    }

    /// Records the reasons for one scope; true when they changed.
    fn set(&self, scope: ObjectRef<HealthScope>, reasons: Vec<String>) -> bool {
        let Ok(mut scopes) = self.scopes.lock() else {
            return false;
        };
        let before = if reasons.is_empty() {
            scopes.remove(&scope)
        } else {
            scopes.insert(scope, reasons.clone())
        };
        before.unwrap_or_default() != reasons
    }

    /// Forgets the scopes `keep` says are gone.
    fn retain(&self, keep: impl Fn(&ObjectRef<HealthScope>) -> bool) {
        if let Ok(mut scopes) = self.scopes.lock() {
            scopes.retain(|scope, _| keep(scope));
        }
    }
}

/// Why `apps` add no member to `scope` for some of their components.
pub fn unresolved_members(
    view: &dyn OamLookup,
    scope: &str,
    apps: &[Arc<ApplicationConfiguration>],
) -> Vec<String> {
    let mut reasons = Vec::new();
    for app in apps {
        if app.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut desired = desired_memberships(app, view);
        for why in desired
            .unresolved_by_scope
            .remove(scope)
            .unwrap_or_default()
        {
            reasons.push(format!(
                "ApplicationConfiguration {}: {why}",
                app.name_any()
            ));
        }
    }
    reasons.sort();
    reasons
}

/// Writes in flight at once. Objects are written in parallel; one object's writes go one after
/// another (applies to one object at the same moment only conflict and retry inside the API
/// server).
const WRITE_CONCURRENCY: usize = 16;
/// A failed write's namespace is planned again after this long, doubling while its writes
/// keep failing.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a write that succeeded is not repeated while the cache still shows the object as
/// it was planned from (the watch event of the write itself is a moment behind).
const WRITTEN_MEMORY: Duration = Duration::from_secs(10);

/// How long after the `failures`-th failed write in a row in a namespace it is planned again:
/// [`RETRY_AFTER`], doubling, at most `ceiling`.
fn retry_delay(failures: u32, ceiling: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_AFTER * 2u32.pow(doublings)).min(ceiling.max(RETRY_AFTER))
}

/// The running wiring loop over the shared caches (with an index of what each AppConfig names,
/// kept from their AppConfig watch); its writes go through a [`Writer`].
pub struct Wiring {
    apps: Store<ApplicationConfiguration>,
    components: Store<Component>,
    scopes: Store<HealthScope>,
    caches: WorkloadCaches,
    index: AppIndex,
    leader: LeaderState,
    changed: ChangedObjects,
    resync: Duration,
    repair_labels: bool,
    writer: Arc<Writer>,
    unresolved: UnresolvedMembers,
    /// Scopes whose unresolved members changed are re-evaluated through here.
    trigger: super::cache::Trigger,
}

impl Wiring {
    /// The loop over the shared caches (their AppConfig and Component watches feed `feed`); call
    /// [`Wiring::run`] to drive it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        caches: WorkloadCaches,
        feed: WiringFeed,
        leader: LeaderState,
        resync: Duration,
        repair_labels: bool,
        metrics: WiringMetrics,
        unresolved: UnresolvedMembers,
        trigger: super::cache::Trigger,
    ) -> Self {
        let changed = feed.changed.clone();
        let index = feed.index.clone();
        let apps = caches.apps.clone();
        let components = caches.components.clone();
        let scopes = caches.scopes.clone();
        let writer = Arc::new(Writer {
            client,
            metrics,
            changed: changed.clone(),
            retry_ceiling: resync.min(RETRY_CEILING),
            slots: Arc::new(tokio::sync::Semaphore::new(WRITE_CONCURRENCY)),
            state: Default::default(),
        });
        Self {
            apps,
            components,
            scopes,
            caches,
            index,
            leader,
            changed,
            resync,
            repair_labels,
            writer,
            unresolved,
            trigger,
        }
    }

    /// While leading: plans what the changed objects affect (changes within [`DEBOUNCE`] share
    /// a plan), every namespace each `resync` and on gaining leadership, and hands the writes to
    /// the writer without waiting for them; until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let synced = async {
            store_ready(&self.apps).await;
            store_ready(&self.components).await;
            store_ready(&self.scopes).await;
            self.caches.wait_synced().await;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = synced => {}
        }
        let mut everything = true;
        let mut was_leader = false;
        let mut next_resync = Instant::now() + self.resync;
        loop {
            let changed = self.changed.take();
            everything |= self.changed.take_everything();
            let leading = self.leader.is_leader();
            if leading {
                self.writer.forget_old();
                let started = Instant::now();
                let (pass, actions) = if everything || !was_leader {
                    ("everything", self.plan_everything())
                } else {
                    ("changes", self.plan_changes(changed))
                };
                self.writer.metrics.observe_plan(pass, started.elapsed());
                for action in actions {
                    if self.repair_labels || !matches!(action, Action::Label { .. }) {
                        self.writer.submit(action);
                    }
                }
            }
            was_leader = leading;
            everything = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.changed.marked() => {}
                _ = tokio::time::sleep_until(next_resync.into()) => {
                    everything = true;
                    next_resync = Instant::now() + self.resync;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
        }
    }

    /// Every write every namespace needs, and every scope's unresolved members.
    fn plan_everything(&self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut seen = HashSet::new();
        for snapshot in self.snapshots(None) {
            actions.extend(plan(&snapshot));
            for scope in snapshot.scopes.values() {
                let apps = snapshot.apps_naming(&scope.name_any());
                self.note_unresolved(&snapshot, scope, &apps);
                seen.insert(ObjectRef::from_obj(&**scope));
            }
        }
        self.unresolved.retain(|scope| seen.contains(scope));
        actions
    }

    /// Records why the scope misses members; a change re-evaluates the scope.
    fn note_unresolved(
        &self,
        view: &dyn OamLookup,
        scope: &HealthScope,
        apps: &[Arc<ApplicationConfiguration>],
    ) {
        let key = ObjectRef::from_obj(scope);
        let reasons = unresolved_members(view, &scope.name_any(), apps);
        if self.unresolved.set(key.clone(), reasons) {
            let _ = self.trigger.send(key);
        }
    }

    /// The writes the changed objects call for, planning only what they affect: a changed
    /// AppConfig's refs in every scope and its workloads' labels; the AppConfigs naming a changed
    /// Component; the AppConfigs naming a changed scope, and the managers owning refs in it, in
    /// that scope only; a changed ContainerizedWorkload's children and a changed workload's
    /// labels. A namespace marked whole is planned whole.
    fn plan_changes(&self, changed: HashSet<ChangedObject>) -> Vec<Action> {
        let mut by_ns: BTreeMap<String, Vec<ChangedObject>> = BTreeMap::new();
        for object in changed {
            by_ns
                .entry(object.namespace.clone())
                .or_default()
                .push(object);
        }
        let whole: HashSet<String> = by_ns
            .iter()
            .filter(|(_, objects)| objects.iter().any(|o| o.kind.is_empty()))
            .map(|(ns, _)| ns.clone())
            .collect();
        let mut actions: Vec<Action> = if whole.is_empty() {
            Vec::new()
        } else {
            self.snapshots(Some(&whole)).iter().flat_map(plan).collect()
        };
        let mut scopes_by_ns: HashMap<String, Vec<Arc<HealthScope>>> = HashMap::new();
        for scope in self.scopes.state() {
            let ns = scope.namespace().unwrap_or_default();
            if by_ns.contains_key(&ns) && !whole.contains(&ns) {
                scopes_by_ns.entry(ns).or_default().push(scope);
            }
        }
        for (ns, objects) in by_ns {
            if whole.contains(&ns) {
                continue;
            }
            let view = StoreView {
                namespace: ns.clone(),
                index: &self.index,
                apps: &self.apps,
                components: &self.components,
                containerized: &self.caches.containerized,
                scopes: scopes_by_ns.remove(&ns).unwrap_or_default(),
            };
            actions.extend(self.plan_namespace_changes(&view, objects));
        }
        actions
    }

    fn plan_namespace_changes(&self, view: &StoreView, objects: Vec<ChangedObject>) -> Vec<Action> {
        let ns = view.namespace.as_str();
        let mut apps: BTreeSet<String> = BTreeSet::new();
        let mut scopes: BTreeSet<String> = BTreeSet::new();
        let mut containerized: BTreeSet<String> = BTreeSet::new();
        let mut workloads: Vec<ChangedObject> = Vec::new();
        for object in objects {
            let group = crate::api::group_of(&object.api_version);
            match (group, object.kind.as_str()) {
                (oam::GROUP, "ApplicationConfiguration") => {
                    // The scopes it names now; those it named before were marked by its watch.
                    scopes.extend(self.index.scopes_of(ns, &object.name));
                    apps.insert(object.name);
                }
                (oam::GROUP, "Component") => {
                    for app in self.index.naming_component(ns, &object.name) {
                        scopes.extend(self.index.scopes_of(ns, &app));
                        apps.insert(app);
                    }
                }
                (oam::GROUP, "HealthScope") => {
                    scopes.insert(object.name);
                }
                (oam::GROUP, "ContainerizedWorkload") => {
                    containerized.insert(object.name);
                }
                _ => workloads.push(object),
            }
        }
        let mut actions = Vec::new();
        for scope in view
            .scopes
            .iter()
            .filter(|s| scopes.contains(&s.name_any()))
        {
            let apps = view.apps_naming(&scope.name_any());
            actions.extend(plan_scope(view, scope, &apps));
            self.note_unresolved(view, scope, &apps);
        }
        // Labels: the workloads rendered from a changed AppConfig or ContainerizedWorkload,
        // and the changed workloads themselves.
        let related = |meta: &ObjectMeta| {
            membership::owning_app(meta).is_some_and(|app| apps.contains(&app))
                || membership::owning_containerized_workload(meta).is_some_and(|cw| {
                    containerized.contains(cw)
                        || view
                            .containerized_workload(cw)
                            .and_then(|cw| membership::owning_app(&cw.metadata))
                            .is_some_and(|app| apps.contains(&app))
                })
        };
        let changed = |api_version: &str, kind: &str, meta: &ObjectMeta| {
            workloads.iter().any(|w| {
                w.kind == kind
                    && w.api_version == api_version
                    && meta.name.as_deref() == Some(w.name.as_str())
            })
        };
        let whole_workload_scan = !apps.is_empty() || !containerized.is_empty();
        if whole_workload_scan || !workloads.is_empty() {
            self.for_each_workload(|workload| {
                let (api_version, kind, meta) =
                    (workload.api_version, workload.kind, workload.meta());
                let here = meta.namespace.as_deref() == Some(ns);
                if here
                    && ((whole_workload_scan && related(meta)) || changed(api_version, kind, meta))
                {
                    actions.extend(plan_labels(view, api_version, kind, meta));
                }
            });
        }
        actions
    }

    /// Calls `f` with every cached object that may carry scope labels (a ContainerizedWorkload
    /// never gets any; membership says so), with its apiVersion and kind.
    fn for_each_workload(&self, mut f: impl FnMut(CachedWorkload)) {
        let caches = &self.caches;
        for d in caches.deployments.state() {
            f(CachedWorkload::new("apps/v1", "Deployment", d));
        }
        for s in caches.statefulsets.state() {
            f(CachedWorkload::new("apps/v1", "StatefulSet", s));
        }
        for d in caches.daemonsets.state() {
            f(CachedWorkload::new("apps/v1", "DaemonSet", d));
        }
        for r in caches.replicasets.state() {
            f(CachedWorkload::new("apps/v1", "ReplicaSet", r));
        }
        for s in caches.services.state() {
            f(CachedWorkload::new("v1", "Service", s));
        }
        for c in caches.containerized.state() {
            f(CachedWorkload::new(
                oam::API_VERSION,
                "ContainerizedWorkload",
                c,
            ));
        }
    }

    fn snapshots(&self, only: Option<&HashSet<String>>) -> Vec<NamespaceSnapshot> {
        let wanted = |ns: &str| only.is_none_or(|only| only.contains(ns));
        let mut by_ns: BTreeMap<String, NamespaceSnapshot> = BTreeMap::new();
        macro_rules! add {
            ($store:expr, $field:ident) => {
                for obj in $store.state() {
                    let ns = obj.namespace().unwrap_or_default();
                    if !wanted(&ns) {
                        continue;
                    }
                    by_ns
                        .entry(ns.clone())
                        .or_insert_with(|| NamespaceSnapshot {
                            namespace: ns,
                            ..Default::default()
                        })
                        .$field
                        .insert(obj.name_any(), obj.clone());
                }
            };
        }
        add!(self.apps, apps);
        add!(self.components, components);
        add!(self.caches.containerized, containerized);
        add!(self.scopes, scopes);
        // Only namespaces with OAM objects can have memberships; other workloads are left alone.
        self.for_each_workload(|workload| {
            let ns = workload.meta().namespace.as_deref().unwrap_or_default();
            if let Some(snapshot) = by_ns.get_mut(ns) {
                snapshot.workloads.push(workload);
            }
        });
        by_ns.into_values().collect()
    }
}

/// One namespace read straight from the caches, for planning what changed.
struct StoreView<'a> {
    namespace: String,
    index: &'a AppIndex,
    apps: &'a Store<ApplicationConfiguration>,
    components: &'a Store<Component>,
    containerized: &'a Store<ContainerizedWorkload>,
    scopes: Vec<Arc<HealthScope>>,
}

impl StoreView<'_> {
    fn key<K: Resource<DynamicType = ()>>(&self, name: &str) -> ObjectRef<K> {
        ObjectRef::new(name).within(&self.namespace)
    }
}

impl ComponentLookup for StoreView<'_> {
    fn component(&self, name: &str) -> Option<Arc<Component>> {
        self.components.get(&self.key(name))
    }
}

impl OamLookup for StoreView<'_> {
    fn app_configuration(&self, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        self.apps.get(&self.key(name))
    }
    fn containerized_workload(&self, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        self.containerized.get(&self.key(name))
    }
}

impl NamespaceView for StoreView<'_> {
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn scopes(&self) -> Vec<Arc<HealthScope>> {
        self.scopes.clone()
    }
    fn apps_naming(&self, scope: &str) -> Vec<Arc<ApplicationConfiguration>> {
        self.index
            .naming_scope(&self.namespace, scope)
            .iter()
            .filter_map(|app| self.app_configuration(app))
            .collect()
    }
}

/// What each stored ApplicationConfiguration names, by namespace: its scopes, its Components
/// and its field manager, so a changed scope or Component finds the AppConfigs it affects
/// without reading them all. Kept by the AppConfig watch; cheap to clone.
#[derive(Clone, Default)]
struct AppIndex {
    namespaces: Arc<std::sync::Mutex<HashMap<String, NamespaceIndex>>>,
}

#[derive(Default)]
struct NamespaceIndex {
    /// AppConfig → (scopes, components) it names.
    names: HashMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    naming_scope: HashMap<String, BTreeSet<String>>,
    naming_component: HashMap<String, BTreeSet<String>>,
}

impl AppIndex {
    /// Records what `app` names; returns the scopes it named before and names no more.
    fn apply(&self, app: &ApplicationConfiguration) -> BTreeSet<String> {
        let name = app.name_any();
        let scopes = membership::referenced_scopes(app);
        let components: BTreeSet<String> = app
            .spec
            .components
            .iter()
            .filter_map(|c| c.component_name.clone())
            .collect();
        let Ok(mut namespaces) = self.namespaces.lock() else {
            return BTreeSet::new();
        };
        let index = namespaces
            .entry(app.namespace().unwrap_or_default())
            .or_default();
        let before = index.forget(&name);
        let dropped = before.difference(&scopes).cloned().collect();
        for scope in &scopes {
            index
                .naming_scope
                .entry(scope.clone())
                .or_default()
                .insert(name.clone());
        }
        for component in &components {
            index
                .naming_component
                .entry(component.clone())
                .or_default()
                .insert(name.clone());
        }
        index.names.insert(name, (scopes, components));
        dropped
    }

    /// Forgets `app`; returns the scopes it named.
    fn delete(&self, app: &ApplicationConfiguration) -> BTreeSet<String> {
        let Ok(mut namespaces) = self.namespaces.lock() else {
            return BTreeSet::new();
        };
        namespaces
            .get_mut(&app.namespace().unwrap_or_default())
            .map(|index| index.forget(&app.name_any()))
            .unwrap_or_default()
    }

    /// Keeps only the AppConfigs `keep(namespace, name)` says still exist (after a relist).
    fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        if let Ok(mut namespaces) = self.namespaces.lock() {
            for (ns, index) in namespaces.iter_mut() {
                let gone: Vec<String> = index
                    .names
                    .keys()
                    .filter(|name| !keep(ns, name))
                    .cloned()
                    .collect();
                for name in gone {
                    index.forget(&name);
                }
            }
        }
    }

    fn scopes_of(&self, ns: &str, app: &str) -> BTreeSet<String> {
        self.read(ns, |index| {
            index.names.get(app).map(|(scopes, _)| scopes.clone())
        })
    }

    fn naming_scope(&self, ns: &str, scope: &str) -> BTreeSet<String> {
        self.read(ns, |index| index.naming_scope.get(scope).cloned())
    }

    fn naming_component(&self, ns: &str, component: &str) -> BTreeSet<String> {
        self.read(ns, |index| index.naming_component.get(component).cloned())
    }

    fn read<T: Default>(&self, ns: &str, f: impl FnOnce(&NamespaceIndex) -> Option<T>) -> T {
        self.namespaces
            .lock()
            .ok()
            .and_then(|namespaces| f(namespaces.get(ns)?))
            .unwrap_or_default()
    }
}

impl NamespaceIndex {
    /// Forgets `app`; returns the scopes it named.
    fn forget(&mut self, app: &str) -> BTreeSet<String> {
        let Some((scopes, components)) = self.names.remove(app) else {
            return BTreeSet::new();
        };
        for scope in &scopes {
            if let Some(apps) = self.naming_scope.get_mut(scope) {
                apps.remove(app);
                if apps.is_empty() {
                    self.naming_scope.remove(scope);
                }
            }
        }
        for component in components {
            if let Some(apps) = self.naming_component.get_mut(&component) {
                apps.remove(app);
                if apps.is_empty() {
                    self.naming_component.remove(&component);
                }
            }
        }
        scopes
    }
}

/// Performs the wiring loop's writes in the background, one worker per object written: each
/// object's writes in order, and while one is in flight only the latest plan for that object
/// waits (a scope changed by many AppConfigs at once gets one write with all of them). A write
/// that succeeded is not sent again while the cache still shows the version it was planned
/// from. At most [`WRITE_CONCURRENCY`] writes at once; a namespace whose write failed is
/// marked again after [`retry_delay`].
struct Writer {
    client: Client,
    metrics: WiringMetrics,
    changed: ChangedObjects,
    retry_ceiling: Duration,
    slots: Arc<tokio::sync::Semaphore>,
    state: std::sync::Mutex<WriterState>,
}

/// An object written: its kind (with namespace) and name.
type Target = (String, String);

#[derive(Default)]
struct WriterState {
    /// The next write per object, waiting for the one in flight.
    pending: HashMap<(Target, String), Action>,
    /// The write in flight per object (and manager: one object's managers are independent).
    in_flight: HashMap<(Target, String), Action>,
    /// Writes that succeeded, by what they wrote and the object version they were planned from.
    written: HashMap<Action, Instant>,
    /// Failed writes in a row, per namespace.
    failures: HashMap<String, u32>,
}

impl Action {
    /// What a write replaces: the same object, under the same field manager.
    fn slot(&self) -> (Target, String) {
        let manager = match self {
            Action::ApplyRefs { manager, .. } => manager.clone(),
            Action::Label { .. } => String::new(),
        };
        (self.target(), manager)
    }
}

impl Writer {
    fn submit(self: &Arc<Self>, action: Action) {
        let slot = action.slot();
        {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let recent = state
                .written
                .get(&action)
                .is_some_and(|at| at.elapsed() < WRITTEN_MEMORY);
            if recent || state.in_flight.get(&slot) == Some(&action) {
                // Already written or being written; a stale pending plan is dropped.
                state.pending.remove(&slot);
                return;
            }
            let idle = !state.in_flight.contains_key(&slot);
            state.pending.insert(slot.clone(), action);
            if !idle {
                return;
            }
            // Claim the object for a worker before it starts, so only one runs per object.
            let Some(first) = state.pending.remove(&slot) else {
                return;
            };
            state.in_flight.insert(slot.clone(), first);
        }
        let writer = self.clone();
        tokio::spawn(async move { writer.work(slot).await });
    }

    /// Writes the object's in-flight action, then whatever was planned for it meanwhile.
    async fn work(self: Arc<Self>, slot: (Target, String)) {
        loop {
            let Some(action) = self
                .state
                .lock()
                .ok()
                .and_then(|state| state.in_flight.get(&slot).cloned())
            else {
                return;
            };
            let result = match self.slots.acquire().await {
                Ok(_permit) => execute(&self.client, &action).await,
                Err(_) => return,
            };
            self.finish(&action, result);
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            match state.pending.remove(&slot) {
                Some(next) => {
                    state.in_flight.insert(slot.clone(), next);
                }
                None => {
                    state.in_flight.remove(&slot);
                    return;
                }
            }
        }
    }

    fn finish(&self, action: &Action, result: Result<(), kube::Error>) {
        self.metrics.write(action.metric_target(), result.is_ok());
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let namespace = action.namespace().to_string();
        match result {
            Ok(()) => {
                tracing::info!("{}", action.describe());
                state.failures.remove(&namespace);
                state.written.insert(action.clone(), Instant::now());
            }
            Err(error) => {
                let failures = state.failures.entry(namespace.clone()).or_default();
                *failures = failures.saturating_add(1);
                let delay = retry_delay(*failures, self.retry_ceiling);
                tracing::warn!(%error, "{} failed; planning namespace {namespace} again in {delay:?}", action.describe());
                let changed = self.changed.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    changed.mark_namespace(&namespace);
                });
            }
        }
    }

    /// Drops writes older than [`WRITTEN_MEMORY`].
    fn forget_old(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.written.retain(|_, at| at.elapsed() < WRITTEN_MEMORY);
        }
    }
}

async fn execute(client: &Client, action: &Action) -> Result<(), kube::Error> {
    match action {
        Action::ApplyRefs {
            namespace,
            scope,
            manager,
            refs,
            ..
        } => {
            let api: Api<HealthScope> = Api::namespaced(client.clone(), namespace);
            let body = workload_refs_apply(namespace, scope, refs);
            api.patch(
                scope,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&body),
            )
            .await?;
        }
        Action::Label {
            namespace,
            api_version,
            kind,
            name,
            resource_version,
            add,
            remove,
        } => {
            let (group, version) =
                crate::api::group_version(api_version).unwrap_or(("", api_version.as_str()));
            let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
            let resource = ApiResource::from_gvk(&gvk);
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            let patch = label_merge_patch(resource_version.as_deref(), add, remove);
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    tracing::info!("{}", action.describe());
    Ok(())
}

/// What the wiring loop learns from the shared watches ([`super::cache::WorkloadCaches`]):
/// each changed object is marked, and the index of what each AppConfig names is kept. Cheap to
/// clone; one per process.
#[derive(Clone, Default)]
pub struct WiringFeed {
    changed: ChangedObjects,
    index: AppIndex,
}

impl WiringFeed {
    pub fn new(changed: ChangedObjects) -> Self {
        Self {
            changed,
            index: AppIndex::default(),
        }
    }

    /// An object of any watched kind changed.
    pub fn mark<K: Resource>(&self, obj: &K, dt: &K::DynamicType) {
        self.changed.mark(obj, dt);
    }

    /// A watch listed again: it cannot say what was deleted meanwhile.
    pub fn mark_everything(&self) {
        self.changed.mark_everything();
    }

    /// An AppConfig watch event: the index follows it, and the AppConfig and the scopes it
    /// names (or named until now) are marked. `store` already holds the change.
    pub fn app_event(
        &self,
        store: &Store<ApplicationConfiguration>,
        event: &watcher::Event<ApplicationConfiguration>,
    ) {
        match event {
            watcher::Event::Apply(app) | watcher::Event::InitApply(app) => {
                let dropped = self.index.apply(app);
                self.changed.mark(app, &());
                mark_scopes(&self.changed, app, dropped);
            }
            watcher::Event::Delete(app) => {
                let named = self.index.delete(app);
                self.changed.mark(app, &());
                mark_scopes(&self.changed, app, named);
            }
            watcher::Event::InitDone => {
                self.index
                    .retain(|ns, name| store.get(&ObjectRef::new(name).within(ns)).is_some());
                self.changed.mark_everything();
            }
            watcher::Event::Init => {}
        }
    }
}

/// Marks `scopes` of the AppConfig's namespace as changed (scopes it no longer names).
fn mark_scopes(changed: &ChangedObjects, app: &ApplicationConfiguration, scopes: BTreeSet<String>) {
    for scope in scopes {
        let mut marker = HealthScope::new(&scope, Default::default());
        marker.metadata.namespace = app.namespace();
        changed.mark(&marker, &());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn component(name: &str) -> Arc<Component> {
        Arc::new(from(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "workload": {"apiVersion": "apps/v1", "kind": "Deployment"},
                "parameters": [{"name": "instance-name", "fieldPaths": ["metadata.name"]}],
            },
        })))
    }

    fn appconfig(name: &str, instance: &str, scopes: &[&str]) -> Arc<ApplicationConfiguration> {
        let scopes: Vec<_> = scopes
            .iter()
            .map(|s| json!({"scopeRef": {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope", "name": s}}))
            .collect();
        Arc::new(from(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"components": [{
                "componentName": "web",
                "parameterValues": [{"name": "instance-name", "value": instance}],
                "scopes": scopes,
            }]},
        })))
    }

    fn owned_by(manager: &str, names: &[&str]) -> ManagedFieldsEntry {
        let refs: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|n| {
                (
                    format!(r#"k:{{"apiVersion":"apps/v1","kind":"Deployment","name":"{n}"}}"#),
                    json!({".": {}}),
                )
            })
            .collect();
        ManagedFieldsEntry {
            manager: Some(manager.to_string()),
            operation: Some("Apply".to_string()),
            api_version: Some("core.oam.dev/v1alpha2".to_string()),
            fields_type: Some("FieldsV1".to_string()),
            fields_v1: Some(FieldsV1(json!({"f:spec": {"f:workloadRefs": refs}}))),
            ..Default::default()
        }
    }

    fn scope(name: &str, refs: &[&str], managed: Vec<ManagedFieldsEntry>) -> Arc<HealthScope> {
        let mut scope = HealthScope::new(name, Default::default());
        scope.metadata.namespace = Some("ns".into());
        scope.metadata.managed_fields = Some(managed);
        scope.metadata.resource_version = Some("3".into());
        scope.spec.workload_refs = refs
            .iter()
            .map(|n| WorkloadReference::new("apps/v1", "Deployment", *n))
            .collect();
        Arc::new(scope)
    }

    fn deployment(name: &str, app: &str, labels: &[(&str, &str)]) -> CachedWorkload {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("app.oam.dev/name".into(), app.into());
        all.insert("app.oam.dev/component".into(), "web".into());
        let meta = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            labels: Some(all),
            resource_version: Some("7".into()),
            ..Default::default()
        };
        let deployment = crate::api::cached::CachedDeployment {
            metadata: meta,
            ..Default::default()
        };
        CachedWorkload::new("apps/v1", "Deployment", Arc::new(deployment))
    }

    fn snapshot() -> NamespaceSnapshot {
        NamespaceSnapshot {
            namespace: "ns".into(),
            components: [("web".to_string(), component("web"))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn failed_writes_are_retried_after_a_doubling_delay() {
        let ceiling = Duration::from_secs(30);
        let delays: Vec<u64> = (1..=7).map(|n| retry_delay(n, ceiling).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_delay(u32::MAX, ceiling), ceiling);
    }

    fn refs(names: &[&str]) -> Vec<WorkloadReference> {
        names
            .iter()
            .map(|n| WorkloadReference::new("apps/v1", "Deployment", *n))
            .collect()
    }

    fn apply(scope: &str, names: &[&str]) -> Action {
        Action::ApplyRefs {
            namespace: "ns".into(),
            scope: scope.into(),
            manager: WIRING_FIELD_MANAGER.into(),
            refs: refs(names),
            basis: Some("3".into()),
        }
    }

    #[test]
    fn refs_of_a_gone_appconfig_are_given_up_at_once() {
        let mut s = snapshot();
        s.scopes.insert(
            "health".into(),
            scope(
                "health",
                &["web-1"],
                vec![owned_by(WIRING_FIELD_MANAGER, &["web-1"])],
            ),
        );
        assert_eq!(plan(&s), vec![apply("health", &[])]);
    }

    #[test]
    fn missing_refs_and_labels_are_planned() {
        let mut s = snapshot();
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["health"]));
        s.scopes
            .insert("health".into(), scope("health", &[], vec![]));
        s.workloads.push(deployment("web-1", "shop", &[]));
        let actions = plan(&s);
        assert_eq!(actions[0], apply("health", &["web-1"]));
        let Action::Label {
            name,
            add,
            remove,
            resource_version,
            ..
        } = &actions[1]
        else {
            panic!("expected a label action: {actions:?}")
        };
        assert_eq!(name, "web-1");
        assert_eq!(resource_version.as_deref(), Some("7"));
        assert_eq!(
            add.keys().collect::<Vec<_>>(),
            vec!["healthscope.core.oam.dev/health"]
        );
        assert!(remove.is_empty());
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn one_write_per_scope_carries_every_appconfig_naming_it() {
        let mut s = snapshot();
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["health"]));
        s.apps.insert(
            "blog".into(),
            appconfig("blog", "web-2", &["health", "blog"]),
        );
        s.scopes.insert(
            "health".into(),
            scope(
                "health",
                &["web-1"],
                vec![owned_by(WIRING_FIELD_MANAGER, &["web-1"])],
            ),
        );
        s.scopes.insert("blog".into(), scope("blog", &[], vec![]));
        assert_eq!(
            plan(&s),
            vec![
                apply("blog", &["web-2"]),
                apply("health", &["web-1", "web-2"])
            ]
        );
    }

    #[test]
    fn a_terminating_appconfig_wants_nothing_and_gives_up_its_refs() {
        let mut s = snapshot();
        let mut app = (*appconfig("shop", "web-1", &["health"])).clone();
        app.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        s.apps.insert("shop".into(), Arc::new(app));
        // Its refs are still there (its finalizer is pending).
        s.scopes.insert(
            "health".into(),
            scope(
                "health",
                &["web-1"],
                vec![owned_by(WIRING_FIELD_MANAGER, &["web-1"])],
            ),
        );
        assert_eq!(plan(&s), vec![apply("health", &[])]);
        // Once given up (the runtime removed the entry too), nothing is re-added.
        s.scopes
            .insert("health".into(), scope("health", &[], vec![]));
        assert_eq!(plan(&s), vec![]);
    }

    #[test]
    fn nothing_is_planned_when_the_cluster_is_right() {
        let mut s = snapshot();
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["health"]));
        s.scopes.insert(
            "health".into(),
            scope(
                "health",
                &["web-1"],
                vec![owned_by(WIRING_FIELD_MANAGER, &["web-1"])],
            ),
        );
        s.workloads.push(deployment(
            "web-1",
            "shop",
            &[("healthscope.core.oam.dev/health", "true")],
        ));
        assert_eq!(plan(&s), vec![]);
    }

    #[test]
    fn a_scope_that_does_not_exist_is_never_written() {
        let mut s = snapshot();
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["missing"]));
        assert!(
            plan(&s)
                .iter()
                .all(|a| !matches!(a, Action::ApplyRefs { .. }))
        );
    }

    #[test]
    fn entries_of_earlier_per_appconfig_managers_are_given_up() {
        let mut s = snapshot();
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["health"]));
        let old = crate::membership::field_manager("shop");
        s.scopes.insert(
            "health".into(),
            scope("health", &["web-1"], vec![owned_by(&old, &["web-1"])]),
        );
        assert_eq!(
            plan(&s),
            vec![
                apply("health", &["web-1"]),
                Action::ApplyRefs {
                    namespace: "ns".into(),
                    scope: "health".into(),
                    manager: old,
                    refs: vec![],
                    basis: Some("3".into()),
                },
            ]
        );
    }

    #[test]
    fn the_app_index_finds_appconfigs_by_scope_and_component() {
        let index = AppIndex::default();
        let shop = appconfig("shop", "web-1", &["a", "b"]);
        let blog = appconfig("blog", "web-2", &["b"]);
        index.apply(&shop);
        index.apply(&blog);
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(index.naming_scope("ns", "a"), set(&["shop"]));
        assert_eq!(index.naming_scope("ns", "b"), set(&["blog", "shop"]));
        assert_eq!(index.naming_component("ns", "web"), set(&["blog", "shop"]));
        assert_eq!(index.scopes_of("ns", "shop"), set(&["a", "b"]));
        assert!(index.naming_scope("other", "b").is_empty());
        // An update that drops a scope says so, and forgets it; so does a delete.
        let dropped = index.apply(&appconfig("shop", "web-1", &["b"]));
        assert_eq!(dropped, set(&["a"]));
        assert!(index.naming_scope("ns", "a").is_empty());
        assert_eq!(index.delete(&blog), set(&["b"]));
        assert_eq!(index.naming_scope("ns", "b"), set(&["shop"]));
        assert!(index.scopes_of("ns", "blog").is_empty());
    }

    #[test]
    fn a_dropped_scope_loses_exactly_that_appconfigs_refs_and_labels() {
        let mut s = snapshot();
        // shop now names only "other"; web-1 is still in "health", next to another
        // AppConfig's entry that must stay.
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["other"]));
        s.apps
            .insert("blog".into(), appconfig("blog", "web-2", &["health"]));
        s.scopes.insert(
            "health".into(),
            scope(
                "health",
                &["web-1", "web-2"],
                vec![owned_by(WIRING_FIELD_MANAGER, &["web-1", "web-2"])],
            ),
        );
        s.scopes.insert(
            "other".into(),
            scope(
                "other",
                &["web-1"],
                vec![owned_by(WIRING_FIELD_MANAGER, &["web-1"])],
            ),
        );
        s.workloads.push(deployment(
            "web-1",
            "shop",
            &[
                ("healthscope.core.oam.dev/health", "true"),
                ("healthscope.core.oam.dev/other", "true"),
            ],
        ));
        s.workloads.push(deployment(
            "web-2",
            "blog",
            &[("healthscope.core.oam.dev/health", "true")],
        ));
        let actions = plan(&s);
        assert_eq!(
            actions,
            vec![
                apply("health", &["web-2"]),
                Action::Label {
                    namespace: "ns".into(),
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "web-1".into(),
                    resource_version: Some("7".into()),
                    add: BTreeMap::new(),
                    remove: ["healthscope.core.oam.dev/health".to_string()].into(),
                },
            ]
        );
    }

    #[test]
    fn other_managers_are_left_alone() {
        let mut s = snapshot();
        s.scopes.insert(
            "health".into(),
            scope("health", &["web-1"], vec![owned_by("kubectl", &["web-1"])]),
        );
        assert_eq!(plan(&s), vec![]);
    }

    #[test]
    fn cached_scopes_keep_only_the_refs_healthscope_owns() {
        let old_manager = membership::field_manager("shop");
        let mut creator = owned_by("kubectl", &["web-9"]);
        creator.operation = Some("Update".into());
        let mut wiring = owned_by(WIRING_FIELD_MANAGER, &["web-1", "web-2"]);
        if let Some(FieldsV1(fields)) = wiring.fields_v1.as_mut() {
            fields["f:spec"]["f:probe-interval"] = json!({});
            fields["f:metadata"] = json!({"f:labels": {}});
        }
        let status = ManagedFieldsEntry {
            manager: Some("healthscope/status".into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(json!({"f:status": {"f:conditions": {}}}))),
            ..Default::default()
        };
        let scope = scope(
            "health",
            &["web-1", "web-2", "web-3"],
            vec![creator, wiring, owned_by(&old_manager, &["web-3"]), status],
        );
        let mut meta = scope.metadata.clone();
        keep_wiring_fields(&mut meta);
        let kept = meta.managed_fields.clone().unwrap_or_default();
        let managers: Vec<_> = kept.iter().filter_map(|m| m.manager.as_deref()).collect();
        assert_eq!(managers, [WIRING_FIELD_MANAGER, old_manager.as_str()]);
        for manager in [WIRING_FIELD_MANAGER, old_manager.as_str()] {
            let before = scope.metadata.managed_fields.as_deref().unwrap_or_default();
            assert_eq!(owned_refs(&kept, manager), owned_refs(before, manager));
        }
        let fields = kept[0].fields_v1.as_ref().map(|f| f.0.clone());
        assert_eq!(
            fields.as_ref().and_then(|f| f.as_object()).map(|f| f.len()),
            Some(1),
            "only f:spec is kept: {fields:?}"
        );
        assert!(fields.is_some_and(|f| f["f:spec"].get("f:probe-interval").is_none()));
    }

    #[test]
    fn label_patch_sets_and_deletes_under_a_resource_version() {
        let patch = label_merge_patch(
            Some("9"),
            &[("a".to_string(), "true".to_string())].into(),
            &["b".to_string()].into(),
        );
        assert_eq!(
            patch,
            json!({"metadata": {"resourceVersion": "9", "labels": {"a": "true", "b": null}}})
        );
    }
}
