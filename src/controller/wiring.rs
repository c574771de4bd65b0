//! The wiring loop: from the ApplicationConfigurations the API server stored, make every
//! HealthScope's `workloadRefs` and every workload's scope labels what membership says. It is
//! the only writer of refs (admission writes nothing). It is event-driven: every change to an
//! AppConfig, Component, ContainerizedWorkload, scope or workload marks its namespace, and the
//! marked namespaces are planned again moments later; every namespace is also planned
//! periodically, so nothing a missed event left behind stays wrong.
//!
//! It calls the pure functions of [`crate::membership`]: refs per (ApplicationConfiguration,
//! scope) by server-side apply, one field manager per AppConfig; an empty list for a manager
//! whose ApplicationConfiguration is gone, being deleted or no longer names the scope (read from
//! the cached scope's managedFields); labels by merge patch on the exact object. [`plan`] is
//! pure and decides everything from a snapshot of one namespace; [`Wiring`] only executes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::cache::{WorkloadCaches, store_ready};
use crate::api::{
    ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope, WorkloadReference,
};
use crate::leader::LeaderState;
use crate::membership::{
    self, ComponentLookup, WorkloadLookup, WorkloadScopes, desired_memberships, field_manager,
    refs_by_scope, scope_label_changes, workload_refs_apply,
};
use crate::metrics::Metrics;

/// How often every namespace is planned again when nothing changes.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
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
            } => {
                let appconfig = manager.strip_prefix(&manager_prefix()).unwrap_or(manager);
                format!(
                    "workloadRefs of ApplicationConfiguration {namespace}/{appconfig} in HealthScope {namespace}/{scope}: {} ref(s)",
                    refs.len()
                )
            }
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

/// The prefix of every membership field manager (`healthscope/appconfig/`).
fn manager_prefix() -> String {
    field_manager("")
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

/// Membership managers that own at least one entry of the scope's workloadRefs.
fn ref_managers(meta: &ObjectMeta) -> BTreeSet<String> {
    let prefix = manager_prefix();
    let managed = meta.managed_fields.as_deref().unwrap_or_default();
    managed
        .iter()
        .filter_map(|m| m.manager.clone())
        .filter(|m| m.starts_with(&prefix))
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
    /// Workload objects that may carry scope labels: (apiVersion, kind, metadata).
    pub workloads: Vec<(String, String, ObjectMeta)>,
}

impl ComponentLookup for NamespaceSnapshot {
    fn component(&self, name: &str) -> Option<Component> {
        self.components.get(name).map(|c| (**c).clone())
    }
}

impl WorkloadLookup for NamespaceSnapshot {
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

/// Every write needed to make one namespace right; empty when it already is.
pub fn plan(snapshot: &NamespaceSnapshot) -> Vec<Action> {
    let ns = snapshot.namespace.as_str();
    let mut actions = Vec::new();
    // Which (manager → scopes) the existing ApplicationConfigurations keep, whether or not
    // their workloads resolve yet: those are never given up here.
    let mut kept: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (name, app) in &snapshot.apps {
        // Being deleted (the OAM runtime's finalizer is removing its refs): it wants nothing,
        // and its manager gives up what it owns below.
        if app.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let manager = field_manager(name);
        let desired = desired_memberships(app, snapshot);
        let referenced = membership::referenced_scopes(app);
        kept.insert(manager.clone(), referenced.clone());
        let by_scope = refs_by_scope(&desired.members);
        for (scope_name, refs) in by_scope {
            // Never create a scope by applying to it: only scopes that exist get refs.
            let Some(scope) = snapshot.scopes.get(&scope_name) else {
                continue;
            };
            let owned = owned_refs(
                scope.meta().managed_fields.as_deref().unwrap_or_default(),
                &manager,
            );
            let wanted: BTreeSet<_> = refs.iter().map(key).collect();
            let present = || {
                scope
                    .spec
                    .workload_refs
                    .iter()
                    .map(key)
                    .collect::<BTreeSet<_>>()
            };
            if owned == wanted && wanted.is_subset(&present()) {
                continue;
            }
            actions.push(Action::ApplyRefs {
                namespace: ns.to_string(),
                scope: scope_name,
                manager: manager.clone(),
                refs,
                basis: scope.meta().resource_version.clone(),
            });
        }
    }
    // Managers whose ApplicationConfiguration no longer names the scope, is being deleted, or is
    // gone. Refs are only ever written for AppConfigs in the cache (admission writes nothing),
    // so a manager without one has nothing left to keep.
    for (scope_name, scope) in &snapshot.scopes {
        for manager in ref_managers(scope.meta()) {
            let release = kept
                .get(&manager)
                .is_none_or(|scopes| !scopes.contains(scope_name));
            if release {
                actions.push(Action::ApplyRefs {
                    namespace: ns.to_string(),
                    scope: scope_name.clone(),
                    manager,
                    refs: Vec::new(),
                    basis: scope.meta().resource_version.clone(),
                });
            }
        }
    }
    for (api_version, kind, meta) in &snapshot.workloads {
        let WorkloadScopes::Scopes(scopes) =
            membership::workload_scopes(api_version, kind, meta, snapshot)
        else {
            continue;
        };
        let labels = meta.labels.clone().unwrap_or_default();
        let changes = scope_label_changes(&labels, &scopes);
        if changes.is_empty() {
            continue;
        }
        actions.push(Action::Label {
            namespace: ns.to_string(),
            api_version: api_version.clone(),
            kind: kind.clone(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone(),
            add: changes.add,
            remove: changes.remove,
        });
    }
    actions
}

/// The merge patch for a label action: set `add`, delete `remove`, guarded by resourceVersion.
pub fn label_patch(
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

/// Namespaces whose wiring may be out of date, and the wake-up of the loop that makes them
/// right. Every watch event marks its object's namespace; cheap to clone.
#[derive(Clone, Default)]
pub struct DirtyNamespaces {
    inner: Arc<DirtyInner>,
}

#[derive(Default)]
struct DirtyInner {
    namespaces: std::sync::Mutex<HashSet<String>>,
    wake: Notify,
}

impl DirtyNamespaces {
    /// Marks one namespace for the next pass.
    pub fn mark(&self, namespace: &str) {
        if let Ok(mut dirty) = self.inner.namespaces.lock()
            && !dirty.contains(namespace)
        {
            dirty.insert(namespace.to_string());
        }
        // A permit is kept when the loop is busy, so no mark is ever missed.
        self.inner.wake.notify_one();
    }

    fn take(&self) -> HashSet<String> {
        self.inner
            .namespaces
            .lock()
            .map(|mut dirty| std::mem::take(&mut *dirty))
            .unwrap_or_default()
    }

    async fn marked(&self) {
        self.inner.wake.notified().await
    }
}

/// Writes in flight at once: scopes and workloads in parallel, one scope's applies in order
/// (applies to one object at the same moment only conflict and retry inside the API server).
const WRITE_CONCURRENCY: usize = 16;
/// A failed write is retried (its namespace re-planned) after this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a write that succeeded is not repeated while the cache still shows the object as
/// it was planned from (the watch event of the write itself is a moment behind).
const WRITTEN_MEMORY: Duration = Duration::from_secs(10);

/// The running wiring loop: the AppConfig and Component watches, plus the controller's scope
/// and workload caches.
pub struct Wiring {
    client: Client,
    apps: Store<ApplicationConfiguration>,
    components: Store<Component>,
    scopes: Store<HealthScope>,
    caches: WorkloadCaches,
    leader: LeaderState,
    dirty: DirtyNamespaces,
    resync: Duration,
    repair_labels: bool,
    metrics: Option<Metrics>,
    /// Writes that succeeded, by what they wrote and the object version they were planned
    /// from, so a pass planned before their watch event arrives does not send them again.
    written: std::sync::Mutex<HashMap<Action, Instant>>,
}

impl Wiring {
    /// Starts the ApplicationConfiguration and Component watches (marking `dirty`) and returns
    /// the loop; call [`Wiring::run`] to drive it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        namespace: Option<String>,
        scopes: Store<HealthScope>,
        caches: WorkloadCaches,
        leader: LeaderState,
        dirty: DirtyNamespaces,
        resync: Duration,
        repair_labels: bool,
        metrics: Option<Metrics>,
        shutdown: &CancellationToken,
    ) -> Self {
        let apps = watch_all::<ApplicationConfiguration>(&client, &namespace, &dirty, shutdown);
        let components = watch_all::<Component>(&client, &namespace, &dirty, shutdown);
        Self {
            client,
            apps,
            components,
            scopes,
            caches,
            leader,
            dirty,
            resync,
            repair_labels,
            metrics,
            written: Default::default(),
        }
    }

    /// While leading: a pass over the marked namespaces on every change (changes within
    /// [`DEBOUNCE`] share a pass), over every namespace each `resync`; until shutdown.
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
        let mut retry: HashSet<String> = HashSet::new();
        let mut next_resync = Instant::now() + self.resync;
        loop {
            let marked = self.dirty.take();
            if self.leader.is_leader() {
                let only = (!everything).then_some(&marked);
                retry = self.pass(only).await;
            }
            everything = false;
            let retry_in = if retry.is_empty() {
                self.resync
            } else {
                RETRY_AFTER
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.dirty.marked() => {}
                _ = tokio::time::sleep_until(next_resync.into()) => {
                    everything = true;
                    next_resync = Instant::now() + self.resync;
                }
                _ = tokio::time::sleep(retry_in) => {}
            }
            for namespace in retry.drain() {
                self.dirty.mark(&namespace);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
        }
    }

    /// One pass over `only` these namespaces (every namespace when `None`). Returns the
    /// namespaces where a write failed, to be planned again.
    pub async fn pass(&self, only: Option<&HashSet<String>>) -> HashSet<String> {
        let actions: Vec<Action> = self
            .snapshots(only)
            .iter()
            .flat_map(plan)
            .filter(|action| self.repair_labels || !matches!(action, Action::Label { .. }))
            .filter(|action| !self.recently_written(action))
            .collect();
        // One queue per object: a scope's applies go one after another.
        let mut queues: BTreeMap<(String, String), Vec<Action>> = BTreeMap::new();
        for action in actions {
            queues.entry(action.target()).or_default().push(action);
        }
        let outcomes: Vec<(Action, Result<(), kube::Error>)> =
            futures::stream::iter(queues.into_values())
                .map(|queue| async move {
                    let mut outcomes = Vec::with_capacity(queue.len());
                    for action in queue {
                        let result = self.execute(&action).await;
                        outcomes.push((action, result));
                    }
                    futures::stream::iter(outcomes)
                })
                .buffer_unordered(WRITE_CONCURRENCY)
                .flatten()
                .collect()
                .await;
        let mut failed = HashSet::new();
        let now = Instant::now();
        if let Ok(mut written) = self.written.lock() {
            written.retain(|_, at| now.duration_since(*at) < WRITTEN_MEMORY);
            for (action, result) in outcomes {
                if let Some(metrics) = &self.metrics {
                    metrics.wiring_write(action.metric_target(), result.is_ok());
                }
                match result {
                    Ok(()) => {
                        written.insert(action, now);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "{}; retrying in {}s", action.describe(), RETRY_AFTER.as_secs());
                        failed.insert(action.namespace().to_string());
                    }
                }
            }
        }
        failed
    }

    fn recently_written(&self, action: &Action) -> bool {
        self.written
            .lock()
            .map(|written| {
                written
                    .get(action)
                    .is_some_and(|at| at.elapsed() < WRITTEN_MEMORY)
            })
            .unwrap_or(false)
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
        let mut workload = |api_version: &str, kind: &str, meta: &ObjectMeta| {
            // Only namespaces with OAM objects can have memberships; other workloads are left alone.
            let ns = meta.namespace.as_deref().unwrap_or_default();
            if let Some(snapshot) = by_ns.get_mut(ns) {
                snapshot
                    .workloads
                    .push((api_version.to_string(), kind.to_string(), meta.clone()));
            }
        };
        for d in self.caches.deployments.state() {
            workload("apps/v1", "Deployment", &d.metadata);
        }
        for s in self.caches.statefulsets.state() {
            workload("apps/v1", "StatefulSet", &s.metadata);
        }
        for d in self.caches.daemonsets.state() {
            workload("apps/v1", "DaemonSet", &d.metadata);
        }
        for r in self.caches.replicasets.state() {
            workload("apps/v1", "ReplicaSet", &r.metadata);
        }
        for s in self.caches.services.state() {
            workload("v1", "Service", &s.metadata);
        }
        for c in self.caches.containerized.state() {
            workload(
                crate::api::oam::API_VERSION,
                "ContainerizedWorkload",
                &c.metadata,
            );
        }
        by_ns.into_values().collect()
    }

    async fn execute(&self, action: &Action) -> Result<(), kube::Error> {
        match action {
            Action::ApplyRefs {
                namespace,
                scope,
                manager,
                refs,
                ..
            } => {
                let api: Api<HealthScope> = Api::namespaced(self.client.clone(), namespace);
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
                let (group, version) = match api_version.split_once('/') {
                    Some((g, v)) => (g, v),
                    None => ("", api_version.as_str()),
                };
                let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
                let resource = ApiResource::from_gvk(&gvk);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), namespace, &resource);
                let patch = label_patch(resource_version.as_deref(), add, remove);
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        tracing::info!("{}", action.describe());
        Ok(())
    }
}

fn watch_all<K>(
    client: &Client,
    namespace: &Option<String>,
    dirty: &DirtyNamespaces,
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let writer = reflector::store::Writer::new(());
    let store = writer.as_reader();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects()
        .take_until(shutdown.clone().cancelled_owned());
    let dirty = dirty.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(obj) => dirty.mark(obj.meta().namespace.as_deref().unwrap_or_default()),
                Err(error) => {
                    tracing::warn!(kind = %K::kind(&()), %error, "watch error; retrying with backoff")
                }
            }
        }
    });
    store
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

    fn deployment(name: &str, app: &str, labels: &[(&str, &str)]) -> (String, String, ObjectMeta) {
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
        ("apps/v1".into(), "Deployment".into(), meta)
    }

    fn snapshot() -> NamespaceSnapshot {
        NamespaceSnapshot {
            namespace: "ns".into(),
            components: [("web".to_string(), component("web"))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn refs_of_a_gone_appconfig_are_given_up_at_once() {
        let manager = field_manager("gone");
        let mut s = snapshot();
        s.scopes.insert(
            "health".into(),
            scope("health", &["web-1"], vec![owned_by(&manager, &["web-1"])]),
        );
        assert_eq!(
            plan(&s),
            vec![Action::ApplyRefs {
                namespace: "ns".into(),
                scope: "health".into(),
                manager,
                refs: vec![],
                basis: Some("3".into()),
            }]
        );
    }

    #[test]
    fn missing_refs_and_labels_are_planned_with_the_appconfig_field_manager() {
        let mut s = snapshot();
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["health"]));
        s.scopes
            .insert("health".into(), scope("health", &[], vec![]));
        s.workloads.push(deployment("web-1", "shop", &[]));
        let actions = plan(&s);
        assert_eq!(
            actions[0],
            Action::ApplyRefs {
                namespace: "ns".into(),
                scope: "health".into(),
                manager: field_manager("shop"),
                refs: vec![WorkloadReference::new("apps/v1", "Deployment", "web-1")],
                basis: Some("3".into()),
            }
        );
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
    fn a_terminating_appconfig_wants_nothing_and_gives_up_its_refs() {
        let mut s = snapshot();
        let mut app = (*appconfig("shop", "web-1", &["health"])).clone();
        app.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        s.apps.insert("shop".into(), Arc::new(app));
        // Its refs are still there (its finalizer is pending), owned by its manager.
        let manager = field_manager("shop");
        s.scopes.insert(
            "health".into(),
            scope("health", &["web-1"], vec![owned_by(&manager, &["web-1"])]),
        );
        assert_eq!(
            plan(&s),
            vec![Action::ApplyRefs {
                namespace: "ns".into(),
                scope: "health".into(),
                manager,
                refs: vec![],
                basis: Some("3".into()),
            }]
        );
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
                vec![owned_by(&field_manager("shop"), &["web-1"])],
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
    fn a_dropped_scope_loses_exactly_that_appconfigs_refs_and_labels() {
        let mut s = snapshot();
        // shop now names only "other"; its manager still owns web-1 in "health", next to
        // another AppConfig's entry that must stay.
        s.apps
            .insert("shop".into(), appconfig("shop", "web-1", &["other"]));
        s.apps
            .insert("blog".into(), appconfig("blog", "web-2", &["health"]));
        s.scopes.insert(
            "health".into(),
            scope(
                "health",
                &["web-1", "web-2"],
                vec![
                    owned_by(&field_manager("shop"), &["web-1"]),
                    owned_by(&field_manager("blog"), &["web-2"]),
                ],
            ),
        );
        s.scopes.insert(
            "other".into(),
            scope(
                "other",
                &["web-1"],
                vec![owned_by(&field_manager("shop"), &["web-1"])],
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
                Action::ApplyRefs {
                    namespace: "ns".into(),
                    scope: "health".into(),
                    manager: field_manager("shop"),
                    refs: vec![],
                    basis: Some("3".into()),
                },
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
    fn a_deleted_appconfig_gives_up_its_refs() {
        let mut s = snapshot();
        s.scopes.insert(
            "health".into(),
            scope(
                "health",
                &["web-1"],
                vec![owned_by(&field_manager("gone"), &["web-1"])],
            ),
        );
        assert_eq!(
            plan(&s),
            vec![Action::ApplyRefs {
                namespace: "ns".into(),
                scope: "health".into(),
                manager: field_manager("gone"),
                refs: vec![],
                basis: Some("3".into()),
            }]
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
    fn label_patch_sets_and_deletes_under_a_resource_version() {
        let patch = label_patch(
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
