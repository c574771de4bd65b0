//! The per-kind health rules the controller applies to cached objects, kept behind one small
//! interface so the reconcile code does not depend on how each rule is written.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;

use crate::api::{ContainerizedWorkload, Health, WorkloadReference};

/// One workload's health with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadHealth {
    pub health: Health,
    pub diagnosis: String,
    pub workload_status: Option<String>,
}

impl WorkloadHealth {
    fn new(health: Health, diagnosis: impl Into<String>) -> Self {
        Self {
            health,
            diagnosis: diagnosis.into(),
            workload_status: None,
        }
    }
}

fn generation_gate(generation: Option<i64>, observed: Option<i64>) -> Option<WorkloadHealth> {
    match (generation, observed) {
        (Some(g), Some(o)) if o < g => Some(WorkloadHealth::new(
            Health::Unhealthy,
            format!("progressing: status describes generation {o}, spec is at {g}"),
        )),
        _ => None,
    }
}

fn replicas(ready: i32, desired: i32) -> WorkloadHealth {
    if ready >= desired {
        WorkloadHealth::new(
            Health::Healthy,
            format!("Ready: {ready}/{desired} replicas"),
        )
    } else {
        WorkloadHealth::new(
            Health::Unhealthy,
            format!("Ready: {ready}/{desired} replicas"),
        )
    }
}

pub fn deployment(d: &Deployment) -> WorkloadHealth {
    let status = d.status.clone().unwrap_or_default();
    if let Some(gate) = generation_gate(d.metadata.generation, status.observed_generation) {
        return gate;
    }
    let desired = d.spec.replicas.unwrap_or(1);
    replicas(status.ready_replicas.unwrap_or(0), desired)
}

pub fn statefulset(s: &StatefulSet) -> WorkloadHealth {
    let status = s.status.clone().unwrap_or_default();
    if let Some(gate) = generation_gate(s.metadata.generation, status.observed_generation) {
        return gate;
    }
    let desired = s.spec.replicas.unwrap_or(1);
    replicas(status.ready_replicas.unwrap_or(0), desired)
}

pub fn daemonset(d: &DaemonSet) -> WorkloadHealth {
    let Some(status) = d.status.clone() else {
        return WorkloadHealth::new(Health::Unknown, "no status yet");
    };
    if let Some(gate) = generation_gate(d.metadata.generation, status.observed_generation) {
        return gate;
    }
    let unavailable = status.number_unavailable.unwrap_or(0);
    if unavailable == 0 {
        WorkloadHealth::new(
            Health::Healthy,
            format!(
                "Ready: {}/{} pods",
                status.number_ready, status.desired_number_scheduled
            ),
        )
    } else {
        WorkloadHealth::new(
            Health::Unhealthy,
            format!(
                "{unavailable} of {} pods unavailable",
                status.desired_number_scheduled
            ),
        )
    }
}

pub fn replicaset(r: &ReplicaSet) -> WorkloadHealth {
    let status = r.status.clone().unwrap_or_default();
    if let Some(gate) = generation_gate(r.metadata.generation, status.observed_generation) {
        return gate;
    }
    let desired = r.spec.replicas.unwrap_or(1);
    replicas(status.ready_replicas.unwrap_or(0), desired)
}

/// Ready endpoint addresses across a Service's EndpointSlices.
pub fn ready_endpoints(slices: &[EndpointSlice]) -> usize {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .map(|e| e.addresses.len())
        .sum()
}

pub fn service(s: &Service, slices: &[EndpointSlice]) -> WorkloadHealth {
    if s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return WorkloadHealth::new(Health::Healthy, "ExternalName Service");
    }
    match ready_endpoints(slices) {
        0 => WorkloadHealth::new(Health::Unhealthy, "no ready endpoints"),
        n => WorkloadHealth::new(Health::Healthy, format!("{n} ready endpoints")),
    }
}

/// A ContainerizedWorkload through its Deployment and Service: `Err` names a listed child that
/// is missing; `None` means no such child is listed.
pub fn containerized_workload(
    _cw: &ContainerizedWorkload,
    deployment: Option<Result<Deployment, WorkloadReference>>,
    service: Option<Result<WorkloadHealth, WorkloadReference>>,
) -> WorkloadHealth {
    let mut parts = Vec::new();
    let mut health = Health::Healthy;
    let mut worst = |h: Health| {
        health = match (health, h) {
            (Health::Unhealthy, _) | (_, Health::Unhealthy) => Health::Unhealthy,
            (Health::Unknown, _) | (_, Health::Unknown) => Health::Unknown,
            _ => Health::Healthy,
        }
    };
    match deployment {
        Some(Ok(d)) => {
            let h = self::deployment(&d);
            worst(h.health);
            parts.push(format!(
                "Deployment {}: {}",
                d.metadata.name.unwrap_or_default(),
                h.diagnosis
            ));
        }
        Some(Err(missing)) => {
            worst(Health::Unhealthy);
            parts.push(format!("Deployment {} not found", missing.name));
        }
        None => {
            worst(Health::Unknown);
            parts.push("no Deployment listed in status.resources yet".to_string());
        }
    }
    match service {
        Some(Ok(h)) => {
            worst(h.health);
            parts.push(format!("Service: {}", h.diagnosis));
        }
        Some(Err(missing)) => {
            worst(Health::Unhealthy);
            parts.push(format!("Service {} not found", missing.name));
        }
        None => {}
    }
    WorkloadHealth::new(health, parts.join("; "))
}

pub fn generic(obj: &DynamicObject) -> WorkloadHealth {
    let conditions = obj
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    let status_json = obj.data.get("status").map(|s| s.to_string());
    for wanted in ["Ready", "Available"] {
        if let Some(c) = conditions
            .iter()
            .find(|c| c.get("type").and_then(|t| t.as_str()) == Some(wanted))
        {
            let status = c
                .get("status")
                .and_then(|s| s.as_str())
                .unwrap_or("Unknown");
            let health = match status {
                "True" => Health::Healthy,
                "False" => Health::Unhealthy,
                _ => Health::Unknown,
            };
            let reason = c.get("reason").and_then(|r| r.as_str()).unwrap_or_default();
            return WorkloadHealth {
                health,
                diagnosis: format!("{wanted}={status} {reason}").trim().to_string(),
                workload_status: status_json,
            };
        }
    }
    WorkloadHealth {
        health: Health::Unknown,
        diagnosis: "no Ready or Available condition".to_string(),
        workload_status: status_json,
    }
}

pub fn not_found(wref: &WorkloadReference) -> WorkloadHealth {
    WorkloadHealth::new(Health::Unhealthy, format!("{wref} not found"))
}

pub fn unknown(reason: impl Into<String>) -> WorkloadHealth {
    WorkloadHealth::new(Health::Unknown, reason)
}
