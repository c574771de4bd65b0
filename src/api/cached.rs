//! What healthscope keeps of the apps/v1 workloads: their metadata, the few `spec` fields the
//! health rules read, and their whole `status`. The caches deserialize the API server's objects
//! straight into these (serde skips the rest unbuilt), so a cached Deployment costs about a
//! fifth of a `k8s_openapi` one: its pod template and selector are never held.
//!
//! Each type has the same JSON shape as its Kubernetes kind without the dropped fields, so an
//! operator's HealthRule reads `object.spec.replicas` or `object.status` as in the served object.
//! `From` turns a full object into its cached form (tests and benchmarks build full ones).

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetStatus, DaemonSetUpdateStrategy, Deployment, DeploymentStatus,
    DeploymentStrategy, ReplicaSet, ReplicaSetStatus, StatefulSet, StatefulSetStatus,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// The `k8s_openapi` traits that give a cached type kube's `Resource` (and so an `Api`, a
/// watch and a store) under its kind's own URL.
macro_rules! workload_resource {
    ($cached:ty, $kind:literal, $plural:literal) => {
        impl k8s_openapi::Resource for $cached {
            const API_VERSION: &'static str = "apps/v1";
            const GROUP: &'static str = "apps";
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $cached {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A Deployment as cached: no pod template, no selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedDeployment {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CachedDeploymentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedDeploymentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
}

workload_resource!(CachedDeployment, "Deployment", "deployments");

impl From<Deployment> for CachedDeployment {
    fn from(d: Deployment) -> Self {
        Self {
            metadata: d.metadata,
            spec: CachedDeploymentSpec {
                replicas: d.spec.replicas,
                paused: d.spec.paused,
                min_ready_seconds: d.spec.min_ready_seconds,
                progress_deadline_seconds: d.spec.progress_deadline_seconds,
                strategy: d.spec.strategy,
            },
            status: d.status,
        }
    }
}

/// A StatefulSet as cached: no pod template, selector or volume claim templates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedStatefulSet {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CachedStatefulSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatefulSetStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedStatefulSetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<StatefulSetUpdateStrategy>,
}

workload_resource!(CachedStatefulSet, "StatefulSet", "statefulsets");

impl From<StatefulSet> for CachedStatefulSet {
    fn from(s: StatefulSet) -> Self {
        Self {
            metadata: s.metadata,
            spec: CachedStatefulSetSpec {
                replicas: s.spec.replicas,
                min_ready_seconds: s.spec.min_ready_seconds,
                update_strategy: s.spec.update_strategy,
            },
            status: s.status,
        }
    }
}

/// A DaemonSet as cached: no pod template, no selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedDaemonSet {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CachedDaemonSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonSetStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedDaemonSetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<DaemonSetUpdateStrategy>,
}

workload_resource!(CachedDaemonSet, "DaemonSet", "daemonsets");

impl From<DaemonSet> for CachedDaemonSet {
    fn from(ds: DaemonSet) -> Self {
        Self {
            metadata: ds.metadata,
            spec: CachedDaemonSetSpec {
                min_ready_seconds: ds.spec.min_ready_seconds,
                update_strategy: ds.spec.update_strategy,
            },
            status: ds.status,
        }
    }
}

/// A ReplicaSet as cached: no pod template, no selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedReplicaSet {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CachedReplicaSetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReplicaSetStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedReplicaSetSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
}

workload_resource!(CachedReplicaSet, "ReplicaSet", "replicasets");

impl From<ReplicaSet> for CachedReplicaSet {
    fn from(rs: ReplicaSet) -> Self {
        Self {
            metadata: rs.metadata,
            spec: CachedReplicaSetSpec {
                replicas: rs.spec.replicas,
                min_ready_seconds: rs.spec.min_ready_seconds,
            },
            status: rs.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_deployment_is_the_served_one_without_template_and_selector() {
        let served = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns", "generation": 2,
                "labels": {"app": "web"}},
            "spec": {"replicas": 3, "paused": true, "minReadySeconds": 5,
                "progressDeadlineSeconds": 600, "revisionHistoryLimit": 10,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "web:1"}]}}},
            "status": {"observedGeneration": 2, "replicas": 3, "readyReplicas": 3},
        });
        let cached: CachedDeployment = serde_json::from_value(served.clone()).unwrap();
        let mut expected = served.clone();
        for field in ["apiVersion", "kind"] {
            expected.as_object_mut().unwrap().remove(field);
        }
        for field in ["selector", "template", "revisionHistoryLimit"] {
            expected["spec"].as_object_mut().unwrap().remove(field);
        }
        assert_eq!(serde_json::to_value(&cached).unwrap(), expected);

        let full: Deployment = serde_json::from_value(served).unwrap();
        assert_eq!(CachedDeployment::from(full), cached);
    }

    #[test]
    fn every_cached_kind_keeps_the_spec_fields_health_reads() {
        let sts: CachedStatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db"},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}},
        }))
        .unwrap();
        assert_eq!(sts.spec.replicas, Some(2));
        let partition = sts
            .spec
            .update_strategy
            .and_then(|s| s.rolling_update?.partition);
        assert_eq!(partition, Some(1));

        let ds: CachedDaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {}, "updateStrategy": {"type": "OnDelete"}},
        }))
        .unwrap();
        let strategy = ds.spec.update_strategy.and_then(|s| s.type_);
        assert_eq!(strategy.as_deref(), Some("OnDelete"));

        let rs: CachedReplicaSet =
            serde_json::from_value(json!({"metadata": {"name": "web-1"}, "spec": {"replicas": 4}}))
                .unwrap();
        assert_eq!(rs.spec.replicas, Some(4));
        assert_eq!(
            <CachedReplicaSet as kube::Resource>::plural(&()),
            "replicasets"
        );
    }
}
