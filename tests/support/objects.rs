//! The objects tests create, one version of each, and an in-memory lookup over them for the
//! health rules. Pure: no control plane, no `super::` imports, so the benchmarks (`bench/`) and
//! the fuzz targets (`fuzz/`) include this file too (`#[path = …] mod objects;`).
//!
//! Builders return typed objects (or JSON where a test sends the JSON itself: AdmissionReviews,
//! kubectl input, hand-made POSTs).
//!
//! - [`from`]: a JSON test object as its typed form; [`within`]: the same object in a namespace.
//! - Workloads: [`deployment`] (labels, replicas) over [`workload_spec`], [`deployment_status`]
//!   (what the absent Deployment controller writes), [`service`], [`endpoint_slice`] (a Pod
//!   endpoint listed by the EndpointSlice controller, so the probe may use it).
//! - OAM: [`containerized_workload`], [`health_scope`], [`component`], [`AppConfig`] /
//!   [`appconfig`] (scopes in the nested `scopeRef` form), [`scope_ref`], [`deployment_ref`],
//!   [`oam_labels`].
//! - Custom kinds: [`claim_crd`].
//! - Lookups: [`Workloads`], the health rules' view of one namespace (the e2e tests fill it from
//!   the API server: `Workloads::read` in builders.rs).
#![allow(dead_code)] // each includer uses a different part

use std::sync::Arc;

use healthscope::api::cached::{
    CachedDaemonSet, CachedDeployment, CachedReplicaSet, CachedStatefulSet,
};
use healthscope::api::{
    ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope, RuleTarget,
    WorkloadReference,
};
use healthscope::health::{CompiledRule, WorkloadLookup, belongs_to};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The port of the test app behind a [`service`] (its targetPort), as its [`endpoint_slice`]
/// lists it: where the test host's HTTP app listens.
pub const APP_PORT: u16 = 8080;

/// The apiVersion of the OAM kinds (HealthScope, Component, ApplicationConfiguration, …).
pub const OAM_API_VERSION: &str = "core.oam.dev/v1alpha2";

/// A JSON test object as its typed form; panics naming the type if it does not parse.
pub fn from<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| {
        panic!(
            "not a valid {} test object: {e}",
            std::any::type_name::<T>()
        )
    })
}

/// `object` in `namespace` (objects sent to the API server take the request's namespace; those
/// held in memory need their own).
pub fn within<K: kube::Resource>(mut object: K, namespace: &str) -> K {
    object.meta_mut().namespace = Some(namespace.to_string());
    object
}

// ---- workloads ----------------------------------------------------------------------------------

/// A workload's `spec` selecting and templating Pods labelled `app: <name>`, one container
/// (never run: a bare control plane has no kubelet). Deployments, StatefulSets, DaemonSets and
/// ReplicaSets share it.
pub fn workload_spec(name: &str) -> Value {
    json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]},
        },
    })
}

/// Deployment `name` with `labels` (a JSON object) and `replicas` (`None`: the API server's
/// default, 1). No status: see [`deployment_status`].
pub fn deployment(name: &str, labels: Value, replicas: Option<i32>) -> Deployment {
    let mut spec = workload_spec(name);
    if let Some(replicas) = replicas {
        spec["replicas"] = json!(replicas);
    }
    from(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
}

/// The labels the OAM runtime puts on what it renders for component `component` of AppConfig
/// `app`.
pub fn oam_labels(app: &str, component: &str) -> Value {
    json!({"app.oam.dev/name": app, "app.oam.dev/component": component})
}

/// A status patch (`{"status": …}`) as the absent Deployment controller would write it at
/// generation 1: `ready` of `replicas` ready and available, all updated, `Available` true only
/// when all are ready.
pub fn deployment_status(ready: i32, replicas: i32) -> Value {
    deployment_status_at(1, ready, replicas)
}

/// [`deployment_status`] having observed `generation`.
pub fn deployment_status_at(generation: i64, ready: i32, replicas: i32) -> Value {
    json!({"status": {
        "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
        "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": replicas - ready,
        "conditions": [
            {"type": "Available", "status": if ready == replicas { "True" } else { "False" },
             "reason": "MinimumReplicasAvailable", "message": "-"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "-"},
        ],
    }})
}

/// Service `name` with `labels`, selecting Pods labelled `app: <name>`; port `http` 80 to 8080.
pub fn service(name: &str, labels: Value) -> Service {
    from(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
}

/// EndpointSlice `<service>-a` of Service `service`, as the EndpointSlice controller makes it:
/// one ready endpoint at `address`, port `port_name` 8080 (the test host's app port, where
/// [`service`] sends its traffic), its Pod `<service>-0` as targetRef, and the managed-by label.
/// healthscope probes only such endpoints (a Pod, listed by that controller); it counts any
/// slice for the Service's health.
pub fn endpoint_slice(service: &str, port_name: &str, address: &str) -> EndpointSlice {
    from(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-a"), "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": APP_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": format!("{service}-0")}}],
    }))
}

// ---- OAM ----------------------------------------------------------------------------------------

/// ContainerizedWorkload `name` with `labels`, no containers (no runtime renders it in these
/// tests: they write its `status.resources` and its children themselves when they need them).
pub fn containerized_workload(name: &str, labels: Value) -> ContainerizedWorkload {
    from(json!({
        "apiVersion": OAM_API_VERSION, "kind": "ContainerizedWorkload",
        "metadata": {"name": name, "labels": labels},
        "spec": {},
    }))
}

/// HealthScope `name` as JSON, with `spec` (its probe settings; `workloadRefs` empty unless
/// given).
pub fn health_scope_json(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    if spec.get("workloadRefs").is_none() {
        spec["workloadRefs"] = json!([]);
    }
    json!({"apiVersion": OAM_API_VERSION, "kind": "HealthScope",
           "metadata": {"name": name}, "spec": spec})
}

/// HealthScope `name` with `spec` (see [`health_scope_json`]).
pub fn health_scope(name: &str, spec: Value) -> HealthScope {
    from(health_scope_json(name, spec))
}

/// A reference to Deployment `name` (apps/v1), as a scope's `workloadRefs` holds it.
pub fn deployment_ref(name: &str) -> WorkloadReference {
    WorkloadReference::new("apps/v1", "Deployment", name)
}

/// Component `name` whose workload is a `kind` of `api_version`, named by the component's
/// `instance-name` parameter (bound to `metadata.name`); without a value for it, the workload
/// takes the component's name.
pub fn component(name: &str, api_version: &str, kind: &str) -> Component {
    from(json!({
        "apiVersion": OAM_API_VERSION, "kind": "Component",
        "metadata": {"name": name},
        "spec": {
            "workload": {"apiVersion": api_version, "kind": kind, "spec": {}},
            "parameters": [{"name": "instance-name", "fieldPaths": ["metadata.name"]}],
        },
    }))
}

/// A component entry's scope in the nested form the OAM runtime writes:
/// `{"scopeRef": {apiVersion, kind: HealthScope, name}}`.
pub fn scope_ref(scope: &str) -> Value {
    json!({"scopeRef": {"apiVersion": OAM_API_VERSION, "kind": "HealthScope", "name": scope}})
}

/// An ApplicationConfiguration, entry by entry. Scopes are named with [`scope_ref`].
#[derive(Clone, Debug)]
pub struct AppConfig {
    name: String,
    namespace: Option<String>,
    components: Vec<Value>,
}

impl AppConfig {
    /// AppConfig `name` with no components yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: None,
            components: Vec::new(),
        }
    }

    /// In `namespace` (for objects held in memory or sent in a review; the API server uses the
    /// request's namespace).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_string());
        self
    }

    /// An entry for `component` in `scopes`, with no parameter values: its workload is named
    /// by the Component itself.
    pub fn component(mut self, component: &str, scopes: &[&str]) -> Self {
        let scopes: Vec<Value> = scopes.iter().map(|s| scope_ref(s)).collect();
        self.components
            .push(json!({"componentName": component, "scopes": scopes}));
        self
    }

    /// An entry for `component` (as [`component`] builds it) rendered as `instance`, through
    /// its `instance-name` parameter, in `scopes`.
    pub fn rendered(mut self, component: &str, instance: &str, scopes: &[&str]) -> Self {
        let scopes: Vec<Value> = scopes.iter().map(|s| scope_ref(s)).collect();
        self.components.push(json!({
            "componentName": component,
            "parameterValues": [{"name": "instance-name", "value": instance}],
            "scopes": scopes,
        }));
        self
    }

    pub fn json(&self) -> Value {
        let mut metadata = json!({"name": self.name});
        if let Some(namespace) = &self.namespace {
            metadata["namespace"] = json!(namespace);
        }
        json!({
            "apiVersion": OAM_API_VERSION, "kind": "ApplicationConfiguration",
            "metadata": metadata,
            "spec": {"components": self.components},
        })
    }

    /// The manifest as text for `kubectl apply -f -` (JSON, which YAML includes).
    pub fn manifest(&self) -> String {
        self.json().to_string()
    }

    pub fn build(&self) -> ApplicationConfiguration {
        from(self.json())
    }
}

/// AppConfig `name` with one entry: `component` rendered as `instance`, in `scopes`.
pub fn appconfig(
    name: &str,
    component: &str,
    instance: &str,
    scopes: &[&str],
) -> ApplicationConfiguration {
    AppConfig::new(name)
        .rendered(component, instance, scopes)
        .build()
}

// ---- custom kinds -------------------------------------------------------------------------------

/// The CRD of a namespaced kind `Claim` (plural `claims`, version v1, a status subresource, any
/// fields) in `group`. Rules are cluster-scoped, so each test names the group after its
/// namespace.
pub fn claim_crd(group: &str) -> CustomResourceDefinition {
    from(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("claims.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "claims", "singular": "claim", "kind": "Claim", "listKind": "ClaimList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}],
        },
    }))
}

// ---- in-memory lookups --------------------------------------------------------------------------

/// Workloads of one namespace as the controller's caches would hold them, and the HealthRules in
/// force. Each kind is found by name (the first of that name); a kind left empty misses.
#[derive(Default)]
pub struct Workloads {
    pub deployments: Vec<Arc<CachedDeployment>>,
    pub statefulsets: Vec<Arc<CachedStatefulSet>>,
    pub daemonsets: Vec<Arc<CachedDaemonSet>>,
    pub replicasets: Vec<Arc<CachedReplicaSet>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub cws: Vec<Arc<ContainerizedWorkload>>,
    /// Objects of any other kind, found by name. `None`: no other kind is watched, so looking
    /// one up fails (the workload is unknown, as for a kind the controller may not watch).
    pub others: Option<Vec<Arc<DynamicObject>>>,
    /// The rules in force, each for its target apiVersion and kind.
    pub rules: Vec<(RuleTarget, Arc<CompiledRule>)>,
}

fn named<K: kube::Resource>(objects: &[Arc<K>], name: &str) -> Option<Arc<K>> {
    objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .cloned()
}

impl WorkloadLookup for Workloads {
    fn deployment(&self, _: &str, name: &str) -> Option<Arc<CachedDeployment>> {
        named(&self.deployments, name)
    }
    fn statefulset(&self, _: &str, name: &str) -> Option<Arc<CachedStatefulSet>> {
        named(&self.statefulsets, name)
    }
    fn daemonset(&self, _: &str, name: &str) -> Option<Arc<CachedDaemonSet>> {
        named(&self.daemonsets, name)
    }
    fn replicaset(&self, _: &str, name: &str) -> Option<Arc<CachedReplicaSet>> {
        named(&self.replicasets, name)
    }
    fn service(&self, _: &str, name: &str) -> Option<Arc<Service>> {
        named(&self.services, name)
    }
    fn endpoint_slices(&self, _: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .iter()
            .filter(|s| belongs_to(s, service))
            .cloned()
            .collect()
    }
    fn containerized_workload(&self, _: &str, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        named(&self.cws, name)
    }
    fn dynamic(
        &self,
        _: &str,
        reference: &WorkloadReference,
    ) -> Result<Option<Arc<DynamicObject>>, String> {
        match &self.others {
            Some(others) => Ok(named(others, &reference.name)),
            None => Err(format!("{} is not watched in this test", reference.kind)),
        }
    }
    fn rule(&self, reference: &WorkloadReference) -> Option<Arc<CompiledRule>> {
        self.rules
            .iter()
            .find(|(target, _)| {
                target.api_version == reference.api_version && target.kind == reference.kind
            })
            .map(|(_, rule)| rule.clone())
    }
}
