//! Any other kind: kstatus's generic rules over `status.conditions`, plus Argo CD's rules for
//! Ingress and PersistentVolumeClaim, which have no conditions to read.

use kube::core::DynamicObject;
use serde_json::Value;

use super::apps::describe_condition;
use super::{WorkloadHealth, lifecycle};

fn condition<'a>(conditions: &'a [Value], type_: &str) -> Option<&'a Value> {
    conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn field<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c.get(name).and_then(Value::as_str)
}

fn describe(c: &Value, type_: &str) -> String {
    describe_condition(
        type_,
        field(c, "status").unwrap_or("Unknown"),
        field(c, "reason"),
        field(c, "message"),
    )
}

/// The health of an object of any kind, in this order:
/// 1. being deleted → unhealthy; `status.observedGeneration` (when present) behind → progressing;
/// 2. Ingress: an ingress address → healthy, else progressing; PVC: Bound → healthy,
///    Pending → progressing, Lost → failed;
/// 3. `Stalled=True` → failed; `Reconciling=True` → progressing;
/// 4. `Ready`, else `Available`: True → healthy, False → unhealthy, Unknown → unknown;
/// 5. otherwise unknown, with the object's `.status` as JSON in `workload_status`.
pub fn generic(obj: &DynamicObject) -> WorkloadHealth {
    let status = obj.data.get("status");
    let observed = status
        .and_then(|s| s.get("observedGeneration"))
        .and_then(Value::as_i64);
    if let Some(verdict) = lifecycle(&obj.metadata, observed, false) {
        return verdict;
    }
    let kind = obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("");
    let group = obj
        .types
        .as_ref()
        .map_or("", |t| crate::api::group_of(&t.api_version));
    match (group, kind) {
        ("networking.k8s.io" | "extensions", "Ingress") => {
            let ingress = status
                .and_then(|s| s.pointer("/loadBalancer/ingress"))
                .and_then(Value::as_array)
                .filter(|i| !i.is_empty());
            return match ingress {
                Some(i) => {
                    WorkloadHealth::healthy(format!("load balancer: {} address(es)", i.len()))
                }
                None => WorkloadHealth::progressing("load balancer has no ingress address yet"),
            };
        }
        ("", "PersistentVolumeClaim") => {
            return match status.and_then(|s| s.get("phase")).and_then(Value::as_str) {
                Some("Bound") => WorkloadHealth::healthy("phase Bound"),
                Some("Lost") => WorkloadHealth::failed("phase Lost"),
                Some(phase) => WorkloadHealth::progressing(format!("phase {phase}")),
                None => WorkloadHealth::progressing("phase not reported yet"),
            };
        }
        _ => {}
    }
    let conditions = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let is_true = |c: &Value| field(c, "status") == Some("True");
    if let Some(c) = condition(conditions, "Stalled").filter(|c| is_true(c)) {
        return WorkloadHealth::failed(describe(c, "Stalled"));
    }
    if let Some(c) = condition(conditions, "Reconciling").filter(|c| is_true(c)) {
        return WorkloadHealth::progressing(describe(c, "Reconciling"));
    }
    for type_ in ["Ready", "Available"] {
        if let Some(c) = condition(conditions, type_) {
            let text = describe(c, type_);
            return match field(c, "status") {
                Some("True") => WorkloadHealth::healthy(text),
                Some("False") => WorkloadHealth::unhealthy(text),
                _ => WorkloadHealth::unknown(text),
            };
        }
    }
    let (diagnosis, workload_status) = match status {
        Some(s) => (
            format!("no Ready or Available condition in the status of {kind}"),
            Some(bounded_status(s)),
        ),
        None => (format!("{kind} has no status"), None),
    };
    WorkloadHealth {
        health: crate::api::Health::Unknown,
        diagnosis,
        workload_status,
    }
}

/// Most bytes of a workload's `.status` copied into the scope's status: a scope holds up to
/// thousands of workloads, and the whole object must stay far below etcd's 1.5 MiB limit.
pub const MAX_WORKLOAD_STATUS_BYTES: usize = 1024;

/// The status as JSON, cut at [`MAX_WORKLOAD_STATUS_BYTES`] (on a character boundary) with a
/// note saying how long it was.
fn bounded_status(status: &serde_json::Value) -> String {
    let text = status.to_string();
    if text.len() <= MAX_WORKLOAD_STATUS_BYTES {
        return text;
    }
    let mut end = MAX_WORKLOAD_STATUS_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes, cut)", &text[..end], text.len())
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn copied_status_is_bounded() {
        let big = serde_json::json!({"phase": "Running", "log": "é".repeat(5000)});
        let copied = super::bounded_status(&big);
        assert!(
            copied.len() < super::MAX_WORKLOAD_STATUS_BYTES + 40,
            "{}",
            copied.len()
        );
        assert!(copied.ends_with(&format!("({} bytes, cut)", big.to_string().len())));
        let small = serde_json::json!({"phase": "Running"});
        assert_eq!(super::bounded_status(&small), r#"{"phase":"Running"}"#);
    }

    use super::*;
    use crate::api::Health::{self, Healthy, Unhealthy, Unknown};
    use crate::health::testing::{DocRow, from_json};
    use serde_json::json;

    struct Case {
        name: &'static str,
        object: Value,
        health: Health,
        diagnosis: &'static str,
        workload_status: Option<&'static str>,
    }

    fn widget(status: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
               "metadata": {"name": "w", "generation": 2}, "spec": {}, "status": status})
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Value {
        json!({"observedGeneration": 2, "conditions": [
            {"type": type_, "status": status, "reason": reason, "message": ""}]})
    }

    fn generic_cases() -> Vec<Case> {
        vec![
            Case {
                name: "Ready True",
                object: widget(cond("Ready", "True", "Deployed")),
                health: Healthy,
                diagnosis: "Ready=True: Deployed",
                workload_status: None,
            },
            Case {
                name: "Ready False",
                object: widget(json!({"conditions": [{"type": "Ready", "status": "False",
                    "reason": "BackendDown", "message": "database unreachable"}]})),
                health: Unhealthy,
                diagnosis: "Ready=False: BackendDown: database unreachable",
                workload_status: None,
            },
            Case {
                name: "Ready Unknown",
                object: widget(cond("Ready", "Unknown", "Checking")),
                health: Unknown,
                diagnosis: "Ready=Unknown: Checking",
                workload_status: None,
            },
            Case {
                name: "Available True without Ready",
                object: widget(cond("Available", "True", "MinimumReplicasAvailable")),
                health: Healthy,
                diagnosis: "Available=True: MinimumReplicasAvailable",
                workload_status: None,
            },
            Case {
                name: "Stalled True",
                object: widget(json!({"conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "Stalled", "status": "True", "reason": "InvalidSpec"}]})),
                health: Unhealthy,
                diagnosis: "failed: Stalled=True: InvalidSpec",
                workload_status: None,
            },
            Case {
                name: "Reconciling True",
                object: widget(json!({"conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "Reconciling", "status": "True", "reason": "Updating"}]})),
                health: Unhealthy,
                diagnosis: "progressing: Reconciling=True: Updating",
                workload_status: None,
            },
            Case {
                name: "observedGeneration behind generation",
                object: widget(
                    json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}),
                ),
                health: Unhealthy,
                diagnosis: "progressing: generation 2 not yet observed",
                workload_status: None,
            },
            Case {
                name: "no conditions",
                object: widget(json!({"phase": "Running"})),
                health: Unknown,
                diagnosis: "no Ready or Available condition in the status of Widget",
                workload_status: Some(r#"{"phase":"Running"}"#),
            },
            Case {
                name: "no status",
                object: json!({"apiVersion": "example.com/v1", "kind": "Widget",
                               "metadata": {"name": "w"}, "spec": {}}),
                health: Unknown,
                diagnosis: "Widget has no status",
                workload_status: None,
            },
            Case {
                name: "Ingress without an address",
                object: json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                               "metadata": {"name": "i"}, "spec": {}, "status": {"loadBalancer": {}}}),
                health: Unhealthy,
                diagnosis: "progressing: load balancer has no ingress address yet",
                workload_status: None,
            },
            Case {
                name: "Ingress with an address",
                object: json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                               "metadata": {"name": "i"}, "spec": {},
                               "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}),
                health: Healthy,
                diagnosis: "load balancer: 1 address(es)",
                workload_status: None,
            },
            Case {
                name: "PVC Pending",
                object: json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                               "metadata": {"name": "data"}, "spec": {}, "status": {"phase": "Pending"}}),
                health: Unhealthy,
                diagnosis: "progressing: phase Pending",
                workload_status: None,
            },
            Case {
                name: "PVC Lost",
                object: json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                               "metadata": {"name": "data"}, "spec": {}, "status": {"phase": "Lost"}}),
                health: Unhealthy,
                diagnosis: "failed: phase Lost",
                workload_status: None,
            },
            Case {
                name: "being deleted",
                object: json!({"apiVersion": "example.com/v1", "kind": "Widget",
                               "metadata": {"name": "w", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                               "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                health: Unhealthy,
                diagnosis: "terminating: deletion requested",
                workload_status: None,
            },
        ]
    }

    pub(crate) fn doc_tables() -> Vec<(&'static str, Vec<DocRow>)> {
        let rows = generic_cases()
            .into_iter()
            .map(|c| DocRow::new(c.name, c.health, c.diagnosis))
            .collect();
        vec![("Other kinds", rows)]
    }

    #[test]
    fn generic_rules() {
        for case in generic_cases() {
            let obj: DynamicObject = from_json(case.object);
            let got = generic(&obj);
            assert_eq!(
                (
                    got.health,
                    got.diagnosis.as_str(),
                    got.workload_status.as_deref()
                ),
                (case.health, case.diagnosis, case.workload_status),
                "case {:?}",
                case.name
            );
        }
    }
}
