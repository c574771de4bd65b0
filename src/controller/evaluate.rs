//! The health rules ([`crate::health`]) read objects through a lookup; this one answers from the
//! watch caches and records every object it was asked for, so a change to any of them
//! re-evaluates the scope at once (including objects that did not exist yet).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::api::cached::{CachedDaemonSet, CachedDeployment, CachedReplicaSet, CachedStatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::cache::{DependencyKey, DynamicLookup, SERVICE_NAME_LABEL, WorkloadCaches};
use crate::api::{ContainerizedWorkload, WorkloadHealthCondition, WorkloadReference};
use crate::health;

/// A [`health::WorkloadLookup`] over the caches that remembers what it was asked for.
pub struct CacheLookup<'a> {
    caches: &'a WorkloadCaches,
    /// Stores of the kinds without a built-in cache, resolved before evaluation (discovery and
    /// the first list are the only awaits, and happen once per kind).
    dynamic: HashMap<GroupVersionKind, Result<Store<DynamicObject>, String>>,
    /// The operator's rules in force when the evaluation started.
    rules: Arc<health::RuleSet>,
    read: Mutex<BTreeSet<DependencyKey>>,
}

impl<'a> CacheLookup<'a> {
    /// A lookup for evaluating `refs`: starts (or finds) the watch of every kind they name that
    /// has no built-in cache.
    pub async fn for_refs(caches: &'a WorkloadCaches, refs: &[WorkloadReference]) -> Self {
        let mut dynamic = HashMap::new();
        for wref in refs {
            let Some(gvk) = extra_kind(wref) else {
                continue;
            };
            if dynamic.contains_key(&gvk) {
                continue;
            }
            let store = match caches.dynamic(&gvk).await {
                DynamicLookup::Store(store) => Ok(store),
                DynamicLookup::Unknown(reason) => Err(reason),
            };
            dynamic.insert(gvk, store);
        }
        Self {
            caches,
            dynamic,
            rules: caches.rules().current(),
            read: Mutex::new(BTreeSet::new()),
        }
    }

    /// Everything read so far.
    pub fn into_dependencies(self) -> BTreeSet<DependencyKey> {
        self.read.into_inner().unwrap_or_default()
    }

    fn record(&self, key: DependencyKey) {
        if let Ok(mut read) = self.read.lock() {
            read.insert(key);
        }
    }

    fn typed<K>(&self, store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone,
    {
        self.record(DependencyKey::new(
            &K::group(&()),
            &K::kind(&()),
            namespace,
            name,
        ));
        store.get(&ObjectRef::new(name).within(namespace))
    }
}

impl health::WorkloadLookup for CacheLookup<'_> {
    fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<CachedDeployment>> {
        self.typed(&self.caches.deployments, namespace, name)
    }
    fn statefulset(&self, namespace: &str, name: &str) -> Option<Arc<CachedStatefulSet>> {
        self.typed(&self.caches.statefulsets, namespace, name)
    }
    fn daemonset(&self, namespace: &str, name: &str) -> Option<Arc<CachedDaemonSet>> {
        self.typed(&self.caches.daemonsets, namespace, name)
    }
    fn replicaset(&self, namespace: &str, name: &str) -> Option<Arc<CachedReplicaSet>> {
        self.typed(&self.caches.replicasets, namespace, name)
    }
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.typed(&self.caches.services, namespace, name)
    }
    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.record(DependencyKey::endpoints_of(namespace, service));
        self.caches.endpointslices.state_filter(|s| {
            s.namespace().as_deref() == Some(namespace)
                && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
        })
    }
    fn containerized_workload(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ContainerizedWorkload>> {
        self.typed(&self.caches.containerized, namespace, name)
    }
    fn rule(&self, reference: &WorkloadReference) -> Option<Arc<health::CompiledRule>> {
        self.rules
            .for_kind(&reference.api_version, &reference.kind)
            .cloned()
    }
    fn dynamic(
        &self,
        namespace: &str,
        reference: &WorkloadReference,
    ) -> Result<Option<Arc<DynamicObject>>, String> {
        self.record(DependencyKey::new(
            reference.group(),
            &reference.kind,
            namespace,
            &reference.name,
        ));
        let gvk = gvk_of(reference).ok_or_else(|| {
            format!(
                "apiVersion {:?} is not of the form group/version",
                reference.api_version
            )
        })?;
        let store = match self.dynamic.get(&gvk) {
            Some(Ok(store)) => store,
            Some(Err(reason)) => return Err(reason.clone()),
            None => return Err("kind not resolved yet".to_string()),
        };
        Ok(store.find(|o| {
            o.metadata.name.as_deref() == Some(reference.name.as_str())
                && o.metadata.namespace.as_deref() == Some(namespace)
        }))
    }
}

/// One workload's verdict and the endpoints its HTTP probe goes to.
pub struct Evaluated {
    pub condition: WorkloadHealthCondition,
    pub probe_addresses: Vec<SocketAddr>,
}

/// Judges one reference with the health rules, reading through `lookup`.
pub fn evaluate(namespace: &str, wref: &WorkloadReference, lookup: &CacheLookup<'_>) -> Evaluated {
    Evaluated {
        condition: health::evaluate(namespace, wref, lookup),
        probe_addresses: health::probe_addresses(namespace, wref, lookup),
    }
}

/// The kind of a reference that has no built-in cache (one watched on demand).
pub fn extra_kind(wref: &WorkloadReference) -> Option<GroupVersionKind> {
    if health::has_builtin_rule(wref) {
        None
    } else {
        gvk_of(wref)
    }
}

/// The group, version and kind of a reference (`apps/v1` or `v1`).
pub fn gvk_of(wref: &WorkloadReference) -> Option<GroupVersionKind> {
    let (group, version) = crate::api::group_version(&wref.api_version)?;
    if wref.kind.is_empty() {
        return None;
    }
    Some(GroupVersionKind::gvk(group, version, &wref.kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvk_of_core_and_grouped_refs() {
        let core = gvk_of(&WorkloadReference::new("v1", "Service", "s")).unwrap();
        assert_eq!((core.group.as_str(), core.version.as_str()), ("", "v1"));
        let apps = gvk_of(&WorkloadReference::new("apps/v1", "Deployment", "d")).unwrap();
        assert_eq!((apps.group.as_str(), apps.version.as_str()), ("apps", "v1"));
        assert!(gvk_of(&WorkloadReference::new("a/b/c", "X", "x")).is_none());
        assert!(gvk_of(&WorkloadReference::new("", "X", "x")).is_none());
    }

    #[test]
    fn builtin_kinds_need_no_discovery() {
        let builtin = |api_version: &str, kind: &str| {
            extra_kind(&WorkloadReference::new(api_version, kind, "x")).is_none()
        };
        assert!(builtin("apps/v1", "Deployment"));
        assert!(builtin("v1", "Service"));
        assert!(builtin("core.oam.dev/v1alpha2", "ContainerizedWorkload"));
        assert!(!builtin("batch/v1", "Job"));
    }
}
