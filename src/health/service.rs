//! Service: healthy when traffic sent to it reaches at least one ready endpoint.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::{WorkloadHealth, lifecycle};

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Whether `slice` is one of Service `service`'s EndpointSlices (by the label its controller sets).
pub fn belongs_to(slice: &EndpointSlice, service: &str) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .is_some_and(|n| n == service)
}

/// Per the API: an absent `conditions.ready` means ready.
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint
        .conditions
        .as_ref()
        .and_then(|c| c.ready)
        .unwrap_or(true)
}

/// A Service's health:
/// - ExternalName: healthy, it is a DNS alias with no endpoints of its own;
/// - LoadBalancer without an ingress address: unhealthy, still progressing (as Argo CD);
/// - otherwise (ClusterIP, NodePort, headless, selector-less with hand-made slices): healthy
///   when at least one endpoint in its EndpointSlices is ready, else "no ready endpoints".
///
/// Slices not labelled for this Service are ignored; an endpoint listed in two slices (as
/// during a slice update) is counted once.
pub fn service<S: Borrow<EndpointSlice>>(svc: &Service, slices: &[S]) -> WorkloadHealth {
    if let Some(verdict) = lifecycle(&svc.metadata, None, false) {
        return verdict;
    }
    let spec = svc.spec.clone().unwrap_or_default();
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return WorkloadHealth::healthy(format!(
            "ExternalName: {}",
            spec.external_name.as_deref().unwrap_or("")
        ));
    }
    if type_ == "LoadBalancer" {
        let has_ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .is_some_and(|i| !i.is_empty());
        if !has_ingress {
            return WorkloadHealth::progressing("load balancer has no ingress address yet");
        }
    }
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let mut ready = BTreeSet::new();
    let mut all = BTreeSet::new();
    for slice in slices.iter().map(Borrow::borrow) {
        if !belongs_to(slice, name) {
            continue;
        }
        for endpoint in slice.endpoints.iter().flatten() {
            let key = endpoint.addresses.join(",");
            if is_ready(endpoint) {
                ready.insert(key.clone());
            }
            all.insert(key);
        }
    }
    if ready.is_empty() {
        return WorkloadHealth::unhealthy(if all.is_empty() {
            "no ready endpoints".to_string()
        } else {
            format!("no ready endpoints: 0/{} ready", all.len())
        });
    }
    WorkloadHealth::healthy(format!("Endpoints: {}/{} ready", ready.len(), all.len()))
}

/// The label naming who wrote an EndpointSlice, and the value of the Kubernetes controller that
/// derives slices from a Service's selector and its Pods.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Whether a probe may go to this endpoint: it is a Pod in the Service's own namespace, listed
/// by the EndpointSlice controller. Hand-written slices (and since Kubernetes 1.22 the `edit`
/// role cannot write them) still count for the Service's health, but are never probed, so
/// whoever can write a slice cannot point healthscope's probes at an address of their choosing.
fn is_probe_target(slice: &EndpointSlice, endpoint: &Endpoint, namespace: &str) -> bool {
    let by_controller = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|m| m == ENDPOINTSLICE_CONTROLLER);
    let pod_here = endpoint.target_ref.as_ref().is_some_and(|r| {
        r.kind.as_deref() == Some("Pod") && r.namespace.as_deref().is_none_or(|ns| ns == namespace)
    });
    by_controller && pod_here
}

/// The socket addresses of a Service's ready Pod endpoints, sorted and deduplicated: what the
/// scope's HTTP probe is sent to (only endpoints [`is_probe_target`] allows). The port is the
/// slice's port named like the Service's first port (its main one), else the slice's first TCP
/// port. FQDN slices and unparsable addresses are skipped.
pub fn ready_endpoints<S: Borrow<EndpointSlice>>(svc: &Service, slices: &[S]) -> Vec<SocketAddr> {
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let main_port_name = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .and_then(|p| p.name.clone());
    let mut out = BTreeSet::new();
    for slice in slices.iter().map(Borrow::borrow) {
        if !belongs_to(slice, name) || !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let ports = slice.ports.as_deref().unwrap_or_default();
        let tcp = |p: &&k8s_openapi::api::discovery::v1::EndpointPort| {
            p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        };
        let port = ports
            .iter()
            .filter(tcp)
            .find(|p| main_port_name.is_some() && p.name == main_port_name)
            .or_else(|| ports.iter().find(tcp))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        let probed = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| is_ready(e) && is_probe_target(slice, e, namespace));
        for endpoint in probed {
            if let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            {
                out.insert(SocketAddr::new(ip, port));
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::Health::{self, Healthy, Unhealthy};
    use crate::health::testing::{DocRow, from_json};
    use serde_json::{Value, json};

    struct Case {
        name: &'static str,
        service: Value,
        slices: Vec<Value>,
        health: Health,
        diagnosis: &'static str,
    }

    fn svc(spec: Value) -> Value {
        let mut s = json!({"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]});
        if let (Some(b), Value::Object(o)) = (s.as_object_mut(), spec) {
            b.extend(o);
        }
        json!({"metadata": {"name": "web", "namespace": "ns"}, "spec": s})
    }

    fn slice(name: &str, service: &str, endpoints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
    }

    fn service_cases() -> Vec<Case> {
        vec![
            Case {
                name: "ClusterIP with ready endpoints",
                service: svc(json!({})),
                slices: vec![slice(
                    "web-a",
                    "web",
                    json!([
                    {"addresses": ["10.1.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.1.0.6"], "conditions": {"ready": false}}]),
                )],
                health: Healthy,
                diagnosis: "Endpoints: 1/2 ready",
            },
            Case {
                name: "endpoint without a ready condition counts as ready",
                service: svc(json!({})),
                slices: vec![slice("web-a", "web", json!([{"addresses": ["10.1.0.5"]}]))],
                health: Healthy,
                diagnosis: "Endpoints: 1/1 ready",
            },
            Case {
                name: "endpoint in two slices counts once",
                service: svc(json!({})),
                slices: vec![
                    slice("web-a", "web", json!([{"addresses": ["10.1.0.5"]}])),
                    slice(
                        "web-b",
                        "web",
                        json!([{"addresses": ["10.1.0.5"]}, {"addresses": ["10.1.0.7"]}]),
                    ),
                ],
                health: Healthy,
                diagnosis: "Endpoints: 2/2 ready",
            },
            Case {
                name: "no EndpointSlices",
                service: svc(json!({})),
                slices: vec![],
                health: Unhealthy,
                diagnosis: "no ready endpoints",
            },
            Case {
                name: "no endpoint ready",
                service: svc(json!({})),
                slices: vec![slice(
                    "web-a",
                    "web",
                    json!([{"addresses": ["10.1.0.5"], "conditions": {"ready": false}}]),
                )],
                health: Unhealthy,
                diagnosis: "no ready endpoints: 0/1 ready",
            },
            Case {
                name: "slices of another Service are ignored",
                service: svc(json!({})),
                slices: vec![slice("api-a", "api", json!([{"addresses": ["10.1.0.9"]}]))],
                health: Unhealthy,
                diagnosis: "no ready endpoints",
            },
            Case {
                name: "selector-less Service with hand-made ready slice",
                service: svc(json!({"selector": null})),
                slices: vec![slice(
                    "web-manual",
                    "web",
                    json!([{"addresses": ["10.1.0.5"]}]),
                )],
                health: Healthy,
                diagnosis: "Endpoints: 1/1 ready",
            },
            Case {
                name: "ExternalName",
                service: svc(
                    json!({"type": "ExternalName", "externalName": "db.example.com", "selector": null}),
                ),
                slices: vec![],
                health: Healthy,
                diagnosis: "ExternalName: db.example.com",
            },
            Case {
                name: "LoadBalancer without an ingress address",
                service: svc(json!({"type": "LoadBalancer"})),
                slices: vec![slice("web-a", "web", json!([{"addresses": ["10.1.0.5"]}]))],
                health: Unhealthy,
                diagnosis: "progressing: load balancer has no ingress address yet",
            },
            Case {
                name: "LoadBalancer with an ingress address and ready endpoints",
                service: {
                    let mut s = svc(json!({"type": "LoadBalancer"}));
                    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
                    s
                },
                slices: vec![slice("web-a", "web", json!([{"addresses": ["10.1.0.5"]}]))],
                health: Healthy,
                diagnosis: "Endpoints: 1/1 ready",
            },
            Case {
                name: "being deleted",
                service: {
                    let mut s = svc(json!({}));
                    s["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    s
                },
                slices: vec![slice("web-a", "web", json!([{"addresses": ["10.1.0.5"]}]))],
                health: Unhealthy,
                diagnosis: "terminating: deletion requested",
            },
        ]
    }

    pub(crate) fn doc_tables() -> Vec<(&'static str, Vec<DocRow>)> {
        let rows = service_cases()
            .into_iter()
            .map(|c| DocRow::new(c.name, c.health, c.diagnosis))
            .collect();
        vec![("Service", rows)]
    }

    #[test]
    fn service_rules() {
        for case in service_cases() {
            let service: Service = from_json(case.service);
            let slices: Vec<EndpointSlice> = case.slices.into_iter().map(from_json).collect();
            let got = super::service(&service, &slices);
            assert_eq!(
                (got.health, got.diagnosis.as_str()),
                (case.health, case.diagnosis),
                "case {:?}",
                case.name
            );
        }
    }

    #[test]
    fn ready_endpoints_pick_the_main_port_of_ready_addresses() {
        let service: Service = from_json(svc(json!({"ports": [
            {"name": "metrics", "port": 9090}, {"name": "http", "port": 80}]})));
        let slices: Vec<EndpointSlice> = vec![
            from_json(
                json!({"metadata": {"name": "a", "labels": {"kubernetes.io/service-name": "web",
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}],
                "endpoints": [{"addresses": ["10.1.0.6"], "targetRef": pod("web-1")},
                              {"addresses": ["10.1.0.5"], "targetRef": pod("web-2")},
                              {"addresses": ["10.1.0.7"], "conditions": {"ready": false},
                               "targetRef": pod("web-3")}]}),
            ),
            from_json(
                json!({"metadata": {"name": "b", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "FQDN", "ports": [{"name": "metrics", "port": 9100}],
                "endpoints": [{"addresses": ["web.example.com"]}]}),
            ),
        ];
        let got = ready_endpoints(&service, &slices);
        let want: Vec<SocketAddr> = vec![
            "10.1.0.5:9100".parse().unwrap(),
            "10.1.0.6:9100".parse().unwrap(),
        ];
        assert_eq!(got, want);
    }

    fn pod(name: &str) -> Value {
        json!({"kind": "Pod", "namespace": "ns", "name": name})
    }

    #[test]
    fn probes_go_only_to_pods_the_endpointslice_controller_listed() {
        let service: Service = from_json(svc(json!({})));
        let slice = |managed_by: &str, endpoints: Value| -> EndpointSlice {
            from_json(json!({"metadata": {"name": "a", "labels": {
                    "kubernetes.io/service-name": "web",
                    "endpointslice.kubernetes.io/managed-by": managed_by}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": endpoints}))
        };
        let controller = "endpointslice-controller.k8s.io";
        let cases = [
            (
                "a Pod listed by the controller",
                slice(
                    controller,
                    json!([{"addresses": ["10.1.0.5"], "targetRef": pod("web-1")}]),
                ),
                1,
            ),
            (
                "a hand-written slice",
                slice(
                    "someone",
                    json!([{"addresses": ["169.254.169.254"], "targetRef": pod("web-1")}]),
                ),
                0,
            ),
            (
                "no targetRef",
                slice(controller, json!([{"addresses": ["10.1.0.5"]}])),
                0,
            ),
            (
                "a Node, not a Pod",
                slice(
                    controller,
                    json!([{"addresses": ["10.1.0.5"], "targetRef": {"kind": "Node", "name": "n"}}]),
                ),
                0,
            ),
            (
                "a Pod of another namespace",
                slice(
                    controller,
                    json!([{"addresses": ["10.1.0.5"], "targetRef": {"kind": "Pod", "namespace": "other", "name": "p"}}]),
                ),
                0,
            ),
        ];
        for (name, slice, probed) in cases {
            assert_eq!(ready_endpoints(&service, &[slice]).len(), probed, "{name}");
        }
    }
}
