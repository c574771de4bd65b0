//! ContainerizedWorkload: judged through the Deployment and Service its controller renders.

use crate::api::{ContainerizedWorkload, Health};

use super::{WorkloadHealth, WorkloadLookup, deployment, lifecycle, service};

/// A ContainerizedWorkload is as healthy as its worst child among those listed in
/// `status.resources`: the Deployment (required) and the Service (if rendered), each by its own
/// rule. A listed child missing from the caches is unhealthy ("not found"); a workload with no
/// Deployment listed yet is still progressing. Children of other kinds are not judged.
pub fn containerized_workload(
    cw: &ContainerizedWorkload,
    lookup: &dyn WorkloadLookup,
) -> WorkloadHealth {
    if let Some(verdict) = lifecycle(&cw.metadata, None, false) {
        return verdict;
    }
    let namespace = cw.metadata.namespace.as_deref().unwrap_or_default();
    let children = cw
        .status
        .as_ref()
        .map(|s| s.resources.as_slice())
        .unwrap_or_default();
    let mut health = Health::Healthy;
    let mut parts = Vec::new();
    let mut has_deployment = false;
    for child in children {
        let group = crate::api::group_of(&child.api_version);
        let verdict = match (group, child.kind.as_str()) {
            ("apps", "Deployment") => {
                has_deployment = true;
                match lookup.deployment(namespace, &child.name) {
                    Some(d) => deployment(&d),
                    None => WorkloadHealth::unhealthy("not found"),
                }
            }
            ("", "Service") => match lookup.service(namespace, &child.name) {
                Some(s) => service(&s, &lookup.endpoint_slices(namespace, &child.name)),
                None => WorkloadHealth::unhealthy("not found"),
            },
            _ => continue,
        };
        health = worse(health, verdict.health);
        parts.push(format!(
            "{} {}: {}",
            child.kind, child.name, verdict.diagnosis
        ));
    }
    if !has_deployment {
        return WorkloadHealth::progressing("no Deployment rendered yet (status.resources)");
    }
    WorkloadHealth {
        health,
        diagnosis: parts.join("; "),
        workload_status: None,
    }
}

/// Unhealthy beats unknown beats healthy.
pub(super) fn worse(a: Health, b: Health) -> Health {
    match (a, b) {
        (Health::Unhealthy, _) | (_, Health::Unhealthy) => Health::Unhealthy,
        (Health::Unknown, _) | (_, Health::Unknown) => Health::Unknown,
        _ => Health::Healthy,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::Health::{Healthy, Unhealthy};
    use crate::health::testing::{DocRow, Objects, from_json};
    use serde_json::{Value, json};

    struct Case {
        name: &'static str,
        resources: Value,
        objects: Objects,
        health: Health,
        diagnosis: &'static str,
    }

    fn both() -> Value {
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
               {"apiVersion": "v1", "kind": "Service", "name": "web"}])
    }

    fn objects(ready: i32, with_service: bool, endpoints: Value) -> Objects {
        let mut o = Objects::default();
        o.deployments.insert(
            "web".into(),
            Arc::new(from_json(json!({
                "metadata": {"name": "web", "generation": 1},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                           "readyReplicas": ready, "availableReplicas": ready}}))),
        );
        if with_service {
            o.services.insert(
                "web".into(),
                Arc::new(from_json(json!({"metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))),
            );
        }
        o.slices.push(Arc::new(from_json(json!({
            "metadata": {"name": "web-a", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"port": 8080}], "endpoints": endpoints}))));
        o
    }

    fn containerized_workload_cases() -> Vec<Case> {
        let two_ready = json!([{"addresses": ["10.1.0.5"]}, {"addresses": ["10.1.0.6"]}]);
        vec![
            Case {
                name: "Deployment and Service both healthy",
                resources: both(),
                objects: objects(2, true, two_ready.clone()),
                health: Healthy,
                diagnosis: "Deployment web: Ready: 2/2 replicas; Service web: Endpoints: 2/2 ready",
            },
            Case {
                name: "Deployment not ready",
                resources: both(),
                objects: objects(1, true, json!([{"addresses": ["10.1.0.5"]}])),
                health: Unhealthy,
                diagnosis: "Deployment web: Ready: 1/2 replicas; Service web: Endpoints: 1/1 ready",
            },
            Case {
                name: "Service without ready endpoints",
                resources: both(),
                objects: objects(2, true, json!([])),
                health: Unhealthy,
                diagnosis: "Deployment web: Ready: 2/2 replicas; Service web: no ready endpoints",
            },
            Case {
                name: "listed Service missing",
                resources: both(),
                objects: objects(2, false, two_ready.clone()),
                health: Unhealthy,
                diagnosis: "Deployment web: Ready: 2/2 replicas; Service web: not found",
            },
            Case {
                name: "Deployment only (no ports, no Service)",
                resources: json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}]),
                objects: objects(2, false, json!([])),
                health: Healthy,
                diagnosis: "Deployment web: Ready: 2/2 replicas",
            },
            Case {
                name: "no children listed yet",
                resources: json!([]),
                objects: Objects::default(),
                health: Unhealthy,
                diagnosis: "progressing: no Deployment rendered yet (status.resources)",
            },
        ]
    }

    pub(crate) fn doc_tables() -> Vec<(&'static str, Vec<DocRow>)> {
        let rows = containerized_workload_cases()
            .into_iter()
            .map(|c| DocRow::new(c.name, c.health, c.diagnosis))
            .collect();
        vec![("ContainerizedWorkload", rows)]
    }

    #[test]
    fn containerized_workload_rules() {
        for case in containerized_workload_cases() {
            let cw: ContainerizedWorkload = from_json(json!({
                "metadata": {"name": "app", "namespace": "ns"}, "spec": {},
                "status": {"resources": case.resources}}));
            let got = containerized_workload(&cw, &case.objects);
            assert_eq!(
                (got.health, got.diagnosis.as_str()),
                (case.health, case.diagnosis),
                "case {:?}",
                case.name
            );
        }
    }

    #[test]
    fn worse_orders_unhealthy_unknown_healthy() {
        use crate::api::Health::Unknown;
        assert_eq!(worse(Healthy, Unknown), Unknown);
        assert_eq!(worse(Unknown, Unhealthy), Unhealthy);
        assert_eq!(worse(Healthy, Healthy), Healthy);
    }
}
