//! Workload admission: a JSON patch that gives a workload one
//! `healthscope.core.oam.dev/<scope>: "true"` label per scope it belongs to and removes stale
//! ones. Which scopes: [`crate::membership::workload_scopes`]. Objects OAM did not render are
//! left alone; a workload whose ApplicationConfiguration or parent cannot be found keeps its
//! labels, with a warning. Feeding the patched object back gives no patch.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde::Deserialize;
use serde_json::Value;

use super::{InNamespace, Snapshot, allow, api_version_of, deny, object_name, with_warnings};
use crate::membership::{LabelChanges, WorkloadScopes, scope_label_changes, workload_scopes};

/// Labels a workload CREATE or UPDATE; any other operation is allowed unchanged.
/// What admission reads of a workload: its name, namespace, labels and owners. The route decodes
/// the AdmissionReview's objects into this rather than into whole objects, so a workload's spec,
/// status and managed fields are skipped by the JSON reader without being built.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "WorkloadWire")]
pub struct WorkloadObject {
    pub metadata: ObjectMeta,
}

#[derive(Deserialize)]
struct WorkloadWire {
    #[serde(default)]
    metadata: MetadataWire,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataWire {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

impl From<WorkloadWire> for WorkloadObject {
    fn from(wire: WorkloadWire) -> Self {
        let MetadataWire {
            name,
            namespace,
            labels,
            owner_references,
        } = wire.metadata;
        Self {
            metadata: ObjectMeta {
                name,
                namespace,
                labels,
                owner_references,
                ..ObjectMeta::default()
            },
        }
    }
}

/// Any workload kind: the kind is the request's, not the object's.
impl kube::Resource for WorkloadObject {
    type DynamicType = ();
    type Scope = kube::core::DynamicResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

pub fn review(
    request: &AdmissionRequest<WorkloadObject>,
    snapshot: &dyn Snapshot,
) -> AdmissionResponse {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return allow(request);
    }
    let Some(object) = &request.object else {
        return deny(request, "the request carries no object");
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(object.metadata.namespace.as_deref())
        .unwrap_or_default();
    let lookup = InNamespace {
        snapshot,
        namespace,
    };
    let api_version = api_version_of(&request.kind);
    // On CREATE with generateName the name is not known yet; the request carries what is.
    let named;
    let meta = if object.metadata.name.is_none() && !request.name.is_empty() {
        named = ObjectMeta {
            name: Some(request.name.clone()),
            ..object.metadata.clone()
        };
        &named
    } else {
        &object.metadata
    };
    let scopes = match workload_scopes(&api_version, &request.kind.kind, meta, &lookup) {
        WorkloadScopes::NotOam => return allow(request),
        WorkloadScopes::Unresolved(why) => {
            return with_warnings(
                allow(request),
                vec![format!(
                    "healthscope left the scope labels of {} {} unchanged: {why}",
                    request.kind.kind,
                    object_name(request)
                )],
            );
        }
        WorkloadScopes::Scopes(scopes) => scopes,
    };
    let no_labels = BTreeMap::new();
    let current = object.metadata.labels.as_ref().unwrap_or(&no_labels);
    let changes = scope_label_changes(current, &scopes);
    if changes.is_empty() {
        return allow(request);
    }
    let patch = label_json_patch(object.metadata.labels.is_some(), &changes);
    match allow(request).with_patch(patch) {
        Ok(response) => response,
        Err(e) => deny(request, format!("could not encode the label patch: {e}")),
    }
}

/// The JSON patch for `changes`. `metadata.labels` is created whole when the object has none
/// (adding `/metadata/labels/<key>` to a missing map fails); `/` in keys is escaped as `~1`.
pub fn label_json_patch(has_labels: bool, changes: &LabelChanges) -> Patch {
    let mut operations = Vec::new();
    if !has_labels {
        let labels: BTreeMap<&String, &String> = changes.add.iter().collect();
        operations.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels"]),
            value: serde_json::to_value(labels).unwrap_or(Value::Null),
        }));
        return Patch(operations);
    }
    for key in &changes.remove {
        operations.push(PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["metadata", "labels", key.as_str()]),
        }));
    }
    for (key, value) in &changes.add {
        operations.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels", key.as_str()]),
            value: Value::String(value.clone()),
        }));
    }
    Patch(operations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Overlay;
    use crate::admission::tests::request;
    use crate::api::{
        ApplicationConfiguration, Component, ComponentSpec, ContainerizedWorkload,
        ContainerizedWorkloadSpec,
    };
    use crate::membership::scope_label_key;
    use serde_json::json;

    fn snapshot() -> Overlay {
        let mut overlay = Overlay::default();
        let mut web = Component::new(
            "web",
            ComponentSpec {
                workload: json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload"}),
                parameters: vec![],
            },
        );
        web.metadata.namespace = Some("ns".into());
        let mut api = Component::new(
            "api",
            ComponentSpec {
                workload: json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                parameters: vec![],
            },
        );
        api.metadata.namespace = Some("ns".into());
        let scope = |name: &str| json!({"scopeRef": {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope", "name": name}});
        let app: ApplicationConfiguration = serde_json::from_value(json!({
            "apiVersion": "core.oam.dev/v1alpha2", "kind": "ApplicationConfiguration",
            "metadata": {"name": "shop", "namespace": "ns"},
            "spec": {"components": [
                {"componentName": "web", "scopes": [scope("front"), scope("all")]},
                {"componentName": "api", "scopes": [scope("all")]},
            ]},
        }))
        .unwrap();
        let mut cw = ContainerizedWorkload::new("web", ContainerizedWorkloadSpec::default());
        cw.metadata.namespace = Some("ns".into());
        cw.metadata.labels = Some([("app.oam.dev/name".to_string(), "shop".to_string())].into());
        overlay.add(web).add(api).add(app).add(cw);
        overlay
    }

    fn deployment(metadata: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
               "spec": {"selector": {}, "template": {}}})
    }

    const DEPLOYMENT: (&str, &str, &str) = ("apps", "v1", "Deployment");

    /// Reviews `object`, applies the patch, and returns the patched object and the response.
    fn admit(kind: (&str, &str, &str), object: Value) -> (Value, AdmissionResponse) {
        let req = request(kind, "CREATE", Some(object.clone()), None, false);
        let response = review(&req, &snapshot());
        assert!(response.allowed, "{:?}", response.result);
        let mut patched = object;
        if let Some(bytes) = &response.patch {
            let patch: Patch = serde_json::from_slice(bytes).unwrap();
            json_patch::patch(&mut patched, &patch).unwrap();
        }
        (patched, response)
    }

    fn labels(object: &Value) -> BTreeMap<String, String> {
        serde_json::from_value(object["metadata"]["labels"].clone()).unwrap_or_default()
    }

    #[test]
    fn creates_labels_when_absent_and_patch_is_idempotent() {
        let object = deployment(json!({"name": "api", "namespace": "ns",
            "ownerReferences": [{"apiVersion": "core.oam.dev/v1alpha2",
                "kind": "ApplicationConfiguration", "name": "shop", "uid": "u"}]}));
        let (patched, response) = admit(DEPLOYMENT, object);
        let patch: Value = serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
        assert_eq!(patch[0]["path"], "/metadata/labels");
        assert_eq!(
            labels(&patched),
            BTreeMap::from([(scope_label_key("all"), "true".to_string())])
        );
        let (again, response) = admit(DEPLOYMENT, patched.clone());
        assert!(response.patch.is_none(), "second pass patches nothing");
        assert_eq!(again, patched);
    }

    #[test]
    fn adds_missing_and_removes_stale_labels_with_escaped_keys() {
        let object = deployment(json!({"name": "api", "namespace": "ns", "labels": {
            "app.oam.dev/name": "shop", "keep": "me",
            scope_label_key("old"): "true",
        }}));
        let (patched, response) = admit(DEPLOYMENT, object);
        let patch: Value = serde_json::from_slice(response.patch.as_ref().unwrap()).unwrap();
        let paths: Vec<&str> = patch
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "/metadata/labels/healthscope.core.oam.dev~1old",
                "/metadata/labels/healthscope.core.oam.dev~1all",
            ]
        );
        assert_eq!(
            labels(&patched),
            BTreeMap::from([
                ("app.oam.dev/name".to_string(), "shop".to_string()),
                ("keep".to_string(), "me".to_string()),
                (scope_label_key("all"), "true".to_string()),
            ])
        );
        assert!(admit(DEPLOYMENT, patched).1.patch.is_none());
    }

    #[test]
    fn containerized_workload_is_left_alone_and_its_children_get_its_scopes() {
        let both = BTreeMap::from([
            (scope_label_key("all"), "true".to_string()),
            (scope_label_key("front"), "true".to_string()),
        ]);
        // The runtime copies a ContainerizedWorkload's labels into its pods: never label it.
        let cw = json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload",
            "metadata": {"name": "web", "namespace": "ns", "labels": {"app.oam.dev/name": "shop"}}});
        let (patched, response) = admit(
            ("core.oam.dev", "v1alpha2", "ContainerizedWorkload"),
            cw.clone(),
        );
        assert_eq!(patched, cw);
        assert!(response.patch.is_none() && response.warnings.is_none());

        let owner = json!([{"apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload",
                            "name": "web", "uid": "u", "controller": true}]);
        let child = deployment(json!({"name": "web", "namespace": "ns", "ownerReferences": owner}));
        assert_eq!(labels(&admit(DEPLOYMENT, child).0), both);
        let service = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "ns", "ownerReferences": owner}, "spec": {}});
        let (patched, _) = admit(("", "v1", "Service"), service);
        assert_eq!(labels(&patched), both);
        assert!(admit(("", "v1", "Service"), patched).1.patch.is_none());
    }

    #[test]
    fn non_oam_objects_are_untouched_and_unresolved_ones_warned() {
        let plain = deployment(json!({"name": "plain", "namespace": "ns",
            "labels": {scope_label_key("mine"): "true"}}));
        let (patched, response) = admit(DEPLOYMENT, plain.clone());
        assert_eq!(patched, plain);
        assert!(response.warnings.is_none());

        let orphan = deployment(json!({"name": "o", "namespace": "ns",
            "labels": {"app.oam.dev/name": "gone"}}));
        let (patched, response) = admit(DEPLOYMENT, orphan.clone());
        assert_eq!(patched, orphan);
        assert!(response.warnings.unwrap()[0].contains("\"gone\" not found"));
    }

    #[test]
    fn delete_is_allowed_and_missing_object_denied() {
        let delete = request(
            DEPLOYMENT,
            "DELETE",
            None,
            Some(deployment(json!({"name": "d"}))),
            false,
        );
        let response = review(&delete, &snapshot());
        assert!(response.allowed && response.patch.is_none());
        let missing = request(DEPLOYMENT, "CREATE", None, None, false);
        let response = review(&missing, &snapshot());
        assert!(!response.allowed);
        assert!(response.result.message.contains("no object"));
    }
}
