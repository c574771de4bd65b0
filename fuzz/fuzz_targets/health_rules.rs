//! Arbitrary JSON into the typed objects the health rules judge: whatever decodes must be judged
//! without a panic, and a scope built from the verdicts must aggregate consistently.
#![no_main]

#[path = "../../tests/support/objects.rs"]
mod objects;

use std::sync::Arc;

use healthscope::api::cached::{
    CachedDaemonSet, CachedDeployment, CachedReplicaSet, CachedStatefulSet,
};
use healthscope::api::{ContainerizedWorkload, HealthStatus, WorkloadReference};
use healthscope::health::{self, ScopeStatusInput};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DynamicObject;
use libfuzzer_sys::fuzz_target;
use objects::Workloads;
use serde_json::Value;

fn name_of(value: &Value) -> String {
    value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Files one JSON object under its `kind` (served to `health::evaluate` the way the caches
/// would be), judging it directly with its kind's rule too.
fn add(objects: &mut Workloads, refs: &mut Vec<WorkloadReference>, value: Value) {
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    let api_version = value["apiVersion"]
        .as_str()
        .unwrap_or("apps/v1")
        .to_string();
    let name = name_of(&value);
    macro_rules! typed {
        ($map:ident, $ty:ty, $rule:expr) => {
            if let Ok(obj) = serde_json::from_value::<$ty>(value.clone()) {
                let _ = $rule(&obj);
                objects.$map.push(Arc::new(obj));
            }
        };
    }
    match kind.as_str() {
        "Deployment" => typed!(deployments, CachedDeployment, health::deployment),
        "StatefulSet" => typed!(statefulsets, CachedStatefulSet, health::statefulset),
        "DaemonSet" => typed!(daemonsets, CachedDaemonSet, health::daemonset),
        "ReplicaSet" => typed!(replicasets, CachedReplicaSet, health::replicaset),
        "Service" => {
            if let Ok(svc) = serde_json::from_value::<Service>(value.clone()) {
                let _ = health::service(&svc, &objects.slices);
                let _ = health::ready_endpoints(&svc, &objects.slices);
                objects.services.push(Arc::new(svc));
            }
        }
        "EndpointSlice" => {
            if let Ok(slice) = serde_json::from_value::<EndpointSlice>(value) {
                objects.slices.push(Arc::new(slice));
            }
            return;
        }
        "ContainerizedWorkload" => {
            if let Ok(cw) = serde_json::from_value::<ContainerizedWorkload>(value.clone()) {
                objects.cws.push(Arc::new(cw));
            }
        }
        _ => {
            if let Ok(obj) = serde_json::from_value::<DynamicObject>(value.clone()) {
                let _ = health::generic(&obj);
                objects.others.get_or_insert_default().push(Arc::new(obj));
            }
        }
    }
    refs.push(WorkloadReference::new(api_version, kind, name));
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // Any kind is watched: an object of a kind without a built-in rule is judged generically.
    let mut objects = Workloads {
        others: Some(Vec::new()),
        ..Default::default()
    };
    let mut refs = Vec::new();
    match value {
        Value::Array(items) => items
            .into_iter()
            .for_each(|v| add(&mut objects, &mut refs, v)),
        other => add(&mut objects, &mut refs, other),
    }
    // A reference to something absent is judged too (not found).
    refs.push(WorkloadReference::new("apps/v1", "Deployment", "absent"));

    let conditions: Vec<_> = refs
        .iter()
        .map(|r| {
            let _ = health::probe_addresses("fuzz", r, &objects);
            health::evaluate("fuzz", r, &objects)
        })
        .collect();
    let (_, summary) = health::aggregate(&conditions);
    let count = |s: HealthStatus| conditions.iter().filter(|c| c.health_status == s).count() as i64;
    assert_eq!(summary.total, conditions.len() as i64);
    assert_eq!(
        summary.healthy_workloads + summary.unhealthy_workloads + summary.unknown_workloads,
        summary.total
    );
    assert_eq!(summary.healthy_workloads, count(HealthStatus::Healthy));

    // Equal inputs give an equal status, so the controller can skip unchanged writes.
    let build = |conditions: Vec<_>| {
        health::scope_status(ScopeStatusInput {
            generation: Some(1),
            workloads: conditions,
            probes: &[],
            previous: None,
            now: Time(Default::default()),
            unresolved: &[],
        })
    };
    assert_eq!(build(conditions.clone()), build(conditions));
});
