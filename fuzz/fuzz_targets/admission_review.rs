//! AdmissionReview decode → decide → patch, on arbitrary bytes. Whatever the input:
//! - nothing panics;
//! - every answer carries the request's uid;
//! - a patch applies cleanly to the object it was computed for, and reviewing the patched
//!   object again asks for no further change (the webhook is idempotent, as reinvocation needs).
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use healthscope::admission::{Snapshot, appconfig, healthscope as scope_review, workload};
use healthscope::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use libfuzzer_sys::fuzz_target;

/// The snapshot of bench/reviews: AppConfig bench/bench-app (components web-0..4 in HealthScope
/// bench-scope), plus whatever AppConfig or Component the input itself carries.
#[derive(Default)]
struct FixedSnapshot {
    apps: BTreeMap<(String, String), Arc<ApplicationConfiguration>>,
    components: BTreeMap<(String, String), Arc<Component>>,
    cws: BTreeMap<(String, String), Arc<ContainerizedWorkload>>,
    scopes: BTreeMap<(String, String), Arc<HealthScope>>,
}

impl Snapshot for FixedSnapshot {
    fn app_configuration(&self, ns: &str, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        self.apps.get(&(ns.into(), name.into())).cloned()
    }
    fn component(&self, ns: &str, name: &str) -> Option<Arc<Component>> {
        self.components.get(&(ns.into(), name.into())).cloned()
    }
    fn containerized_workload(&self, ns: &str, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        self.cws.get(&(ns.into(), name.into())).cloned()
    }
    fn health_scope(&self, ns: &str, name: &str) -> Option<Arc<HealthScope>> {
        self.scopes.get(&(ns.into(), name.into())).cloned()
    }
}

fn base_snapshot() -> FixedSnapshot {
    let mut snapshot = FixedSnapshot::default();
    for i in 0..5 {
        let component: Component = serde_json::from_value(serde_json::json!({
            "apiVersion": "core.oam.dev/v1alpha2", "kind": "Component",
            "metadata": {"name": format!("web-{i}"), "namespace": "bench"},
            "spec": {"workload": {"apiVersion": "apps/v1", "kind": "Deployment"}}
        }))
        .unwrap();
        snapshot
            .components
            .insert(("bench".into(), format!("web-{i}")), Arc::new(component));
    }
    let app: ApplicationConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "core.oam.dev/v1alpha2", "kind": "ApplicationConfiguration",
        "metadata": {"name": "bench-app", "namespace": "bench"},
        "spec": {"components": (0..5).map(|i| serde_json::json!({
            "componentName": format!("web-{i}"),
            "scopes": [{"scopeRef": {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope", "name": "bench-scope"}}]
        })).collect::<Vec<_>>()}
    }))
    .unwrap();
    snapshot
        .apps
        .insert(("bench".into(), "bench-app".into()), Arc::new(app));
    snapshot
}

/// Adds the request's own object to the snapshot when it is a kind the snapshot holds.
fn with_own_object(snapshot: &mut FixedSnapshot, request: &AdmissionRequest<DynamicObject>) {
    let Some(object) = &request.object else {
        return;
    };
    let Ok(value) = serde_json::to_value(object) else {
        return;
    };
    let ns = request.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    match request.kind.kind.as_str() {
        "ApplicationConfiguration" => {
            if let Ok(app) = serde_json::from_value(value) {
                snapshot.apps.insert((ns, name), Arc::new(app));
            }
        }
        "Component" => {
            if let Ok(c) = serde_json::from_value(value) {
                snapshot.components.insert((ns, name), Arc::new(c));
            }
        }
        "ContainerizedWorkload" => {
            if let Ok(cw) = serde_json::from_value(value) {
                snapshot.cws.insert((ns, name), Arc::new(cw));
            }
        }
        _ => {}
    }
}

fn check_answer<K: kube::Resource>(request: &AdmissionRequest<K>, response: &AdmissionResponse) {
    assert_eq!(response.uid, request.uid, "uid echoed");
    // The review the API server gets is well-formed: patch and patchType come together.
    let review = serde_json::to_value(response.clone().into_review()).expect("review serializes");
    let answer = &review["response"];
    assert_eq!(
        answer.get("patch").is_some_and(|p| !p.is_null()),
        answer.get("patchType").is_some_and(|p| !p.is_null()),
        "patch and patchType together: {answer}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = healthscope::webhook::decode_admission_review(data) else {
        return;
    };
    let mut snapshot = base_snapshot();
    with_own_object(&mut snapshot, &request);

    let scope_answer = scope_review::review(&request);
    check_answer(&request, &scope_answer);
    // The ApplicationConfiguration route reads the spec and status raw, typed when decided.
    if let Ok(app_request) =
        healthscope::webhook::decode_review::<appconfig::AppConfigObject>(data)
    {
        let app_answer = appconfig::review(&app_request, &snapshot);
        check_answer(&app_request, &app_answer);
        assert!(app_answer.patch.is_none(), "ApplicationConfigurations are never patched");
    }

    // The workload route reads only what it needs of the object (its metadata).
    let Ok(workload_request) =
        healthscope::webhook::decode_review::<workload::WorkloadObject>(data)
    else {
        return;
    };
    let response = workload::review(&workload_request, &snapshot);
    check_answer(&workload_request, &response);
    let (Some(patch), Some(object)) = (&response.patch, &request.object) else {
        return;
    };
    let patch: json_patch::Patch =
        serde_json::from_slice(patch).expect("the patch is a JSON patch");
    let mut patched = serde_json::to_value(object).expect("object serializes");
    json_patch::patch(&mut patched, &patch)
        .expect("the patch applies to the object it was made for");

    // Reviewing the patched object again changes nothing more.
    let Ok(patched_object) = serde_json::from_value::<workload::WorkloadObject>(patched) else {
        return;
    };
    let mut again = workload_request.clone();
    again.object = Some(patched_object);
    let second = workload::review(&again, &snapshot);
    if let Some(second_patch) = &second.patch {
        let ops: json_patch::Patch = serde_json::from_slice(second_patch).expect("JSON patch");
        assert!(ops.0.is_empty(), "second review still patches: {ops:?}");
    }
});
