//! Reads one workload reference from the watch caches and judges its health. The rules are the
//! pure functions of the health module; this file only finds the objects they need and records
//! what was read, so a change to any of them re-evaluates the scope.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::GroupVersionKind;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::cache::{DependencyKey, DynamicLookup, SERVICE_NAME_LABEL, WorkloadCaches};
use super::rules::{self, WorkloadHealth};
use crate::api::{ContainerizedWorkload, WorkloadReference, oam};

/// The outcome for one reference: its health, the component it came from, and the Services
/// (direct or a ContainerizedWorkload's child) whose endpoints get HTTP probes.
pub struct Evaluated {
    pub health: WorkloadHealth,
    pub component: Option<String>,
    pub services: Vec<String>,
}

impl Evaluated {
    fn of(health: WorkloadHealth) -> Self {
        Self {
            health,
            component: None,
            services: Vec::new(),
        }
    }
}

fn component_of<K: Resource>(obj: &K) -> Option<String> {
    obj.labels().get(oam::labels::COMPONENT).cloned()
}

fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<std::sync::Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// The ready EndpointSlices of a Service, from the cache.
pub fn slices_of(caches: &WorkloadCaches, namespace: &str, service: &str) -> Vec<EndpointSlice> {
    caches
        .endpointslices
        .state_filter(|s| {
            s.namespace().as_deref() == Some(namespace)
                && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
        })
        .into_iter()
        .map(|s| (*s).clone())
        .collect()
}

fn service_health(
    caches: &WorkloadCaches,
    namespace: &str,
    service: &Service,
    deps: &mut BTreeSet<DependencyKey>,
) -> WorkloadHealth {
    let name = service.name_any();
    deps.insert(DependencyKey::endpoints_of(namespace, &name));
    rules::service(service, &slices_of(caches, namespace, &name))
}

/// Evaluates one reference of a scope in `namespace`, adding everything it read to `deps`.
pub async fn evaluate(
    caches: &WorkloadCaches,
    namespace: &str,
    wref: &WorkloadReference,
    deps: &mut BTreeSet<DependencyKey>,
) -> Evaluated {
    let group = wref.group();
    deps.insert(DependencyKey::new(group, &wref.kind, namespace, &wref.name));
    let name = wref.name.as_str();
    match (group, wref.kind.as_str()) {
        ("apps", "Deployment") => match get(&caches.deployments, namespace, name) {
            Some(d) => Evaluated {
                health: rules::deployment(&d),
                component: component_of(&*d),
                services: Vec::new(),
            },
            None => Evaluated::of(rules::not_found(wref)),
        },
        ("apps", "StatefulSet") => match get(&caches.statefulsets, namespace, name) {
            Some(s) => Evaluated {
                health: rules::statefulset(&s),
                component: component_of(&*s),
                services: Vec::new(),
            },
            None => Evaluated::of(rules::not_found(wref)),
        },
        ("apps", "DaemonSet") => match get(&caches.daemonsets, namespace, name) {
            Some(d) => Evaluated {
                health: rules::daemonset(&d),
                component: component_of(&*d),
                services: Vec::new(),
            },
            None => Evaluated::of(rules::not_found(wref)),
        },
        ("apps", "ReplicaSet") => match get(&caches.replicasets, namespace, name) {
            Some(r) => Evaluated {
                health: rules::replicaset(&r),
                component: component_of(&*r),
                services: Vec::new(),
            },
            None => Evaluated::of(rules::not_found(wref)),
        },
        ("", "Service") => match get(&caches.services, namespace, name) {
            Some(s) => Evaluated {
                health: service_health(caches, namespace, &s, deps),
                component: component_of(&*s),
                services: vec![name.to_string()],
            },
            None => Evaluated::of(rules::not_found(wref)),
        },
        (oam::GROUP, "ContainerizedWorkload") => {
            match get(&caches.containerized, namespace, name) {
                Some(cw) => containerized(caches, namespace, &cw, deps),
                None => Evaluated::of(rules::not_found(wref)),
            }
        }
        _ => generic(caches, namespace, wref).await,
    }
}

/// A ContainerizedWorkload through its children: the Deployment and the Service its controller
/// listed in `status.resources`.
fn containerized(
    caches: &WorkloadCaches,
    namespace: &str,
    cw: &ContainerizedWorkload,
    deps: &mut BTreeSet<DependencyKey>,
) -> Evaluated {
    let children = cw
        .status
        .as_ref()
        .map(|s| s.resources.clone())
        .unwrap_or_default();
    let mut deployment = None;
    let mut service = None;
    let mut services = Vec::new();
    for child in &children {
        let child_ref = WorkloadReference::new(
            child.api_version.clone(),
            child.kind.clone(),
            child.name.clone(),
        );
        deps.insert(DependencyKey::new(
            child_ref.group(),
            &child.kind,
            namespace,
            &child.name,
        ));
        match (child_ref.group(), child.kind.as_str()) {
            ("apps", "Deployment") => {
                deployment = Some(
                    get(&caches.deployments, namespace, &child.name)
                        .map(|d| (*d).clone())
                        .ok_or(child_ref),
                )
            }
            ("", "Service") => {
                services.push(child.name.clone());
                service = Some(match get(&caches.services, namespace, &child.name) {
                    Some(s) => Ok(service_health(caches, namespace, &s, deps)),
                    None => Err(child_ref),
                })
            }
            _ => {}
        }
    }
    Evaluated {
        health: rules::containerized_workload(cw, deployment, service),
        component: component_of(cw),
        services,
    }
}

async fn generic(caches: &WorkloadCaches, namespace: &str, wref: &WorkloadReference) -> Evaluated {
    let Some(gvk) = gvk_of(wref) else {
        return Evaluated::of(rules::unknown(format!(
            "apiVersion {:?} of {} is not group/version",
            wref.api_version, wref.name
        )));
    };
    match caches.dynamic(&gvk).await {
        DynamicLookup::Unknown(reason) => Evaluated::of(rules::unknown(reason)),
        DynamicLookup::Store(store) => {
            let found = store.find(|o| {
                o.metadata.name.as_deref() == Some(wref.name.as_str())
                    && o.metadata.namespace.as_deref() == Some(namespace)
            });
            match found {
                Some(obj) => Evaluated {
                    health: rules::generic(&obj),
                    component: component_of(&*obj),
                    services: Vec::new(),
                },
                None => Evaluated::of(rules::not_found(wref)),
            }
        }
    }
}

/// The group, version and kind of a reference (`apps/v1` or `v1`).
pub fn gvk_of(wref: &WorkloadReference) -> Option<GroupVersionKind> {
    let (group, version) = match wref.api_version.split_once('/') {
        Some((g, v)) if !g.is_empty() && !v.is_empty() && !v.contains('/') => (g, v),
        None if !wref.api_version.is_empty() => ("", wref.api_version.as_str()),
        _ => return None,
    };
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
}
