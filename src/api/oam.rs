//! The OAM v1alpha2 objects healthscope reads: only the fields it needs. The CRDs generated from
//! these types keep every other field (`x-kubernetes-preserve-unknown-fields`), so full OAM
//! manifests apply unchanged; healthscope never writes these objects back.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Labels the OAM runtime puts on every workload it renders.
pub mod labels {
    /// The ApplicationConfiguration that rendered the workload.
    pub const APP_NAME: &str = "app.oam.dev/name";
    /// The component the workload was rendered from.
    pub const COMPONENT: &str = "app.oam.dev/component";
    /// The ComponentRevision the workload was rendered from.
    pub const REVISION: &str = "app.oam.dev/revision";
    /// `WORKLOAD` or `TRAIT`.
    pub const RESOURCE_TYPE: &str = "app.oam.dev/resourceType";
}

pub const GROUP: &str = "core.oam.dev";
pub const VERSION: &str = "v1alpha2";
pub const API_VERSION: &str = "core.oam.dev/v1alpha2";

/// Schema of a value of any type, kept as it is.
fn any_value(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Schema of an object whose fields are all kept as they are.
fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// An application: components, each with parameter values, traits and scopes.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "core.oam.dev",
    version = "v1alpha2",
    kind = "ApplicationConfiguration",
    plural = "applicationconfigurations",
    shortname = "appconfig",
    category = "oam",
    namespaced,
    status = "PreservedStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ApplicationConfigurationSpec {
    #[serde(default)]
    pub components: Vec<ApplicationConfigurationComponent>,
}

/// One component of an ApplicationConfiguration.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ApplicationConfigurationComponent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_name: Option<String>,
    /// A ComponentRevision (`<component>-v<N>`), instead of componentName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameter_values: Vec<ParameterValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<ComponentScope>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ParameterValue {
    pub name: String,
    #[schemars(schema_with = "any_value")]
    pub value: Value,
}

/// A scope a component belongs to. The OAM runtime nests the reference under `scopeRef`; the
/// original HealthScope proposal wrote it flat. Both are accepted.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ComponentScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_ref: Option<ScopeReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A reference to a scope in the ApplicationConfiguration's namespace.
#[derive(
    Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ScopeReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

/// Anything the OAM runtime writes into status; kept as is.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct PreservedStatus {
    #[serde(flatten)]
    #[schemars(skip)]
    pub fields: BTreeMap<String, Value>,
}

/// A reusable template of a workload, with the parameters an ApplicationConfiguration may set.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "core.oam.dev",
    version = "v1alpha2",
    kind = "Component",
    plural = "components",
    shortname = "comp",
    category = "oam",
    namespaced,
    status = "PreservedStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ComponentSpec {
    /// The workload template: a whole Kubernetes object (apiVersion, kind, metadata, spec).
    #[schemars(schema_with = "any_object")]
    pub workload: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ComponentParameter>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ComponentParameter {
    pub name: String,
    #[serde(default)]
    pub field_paths: Vec<String>,
}

/// The OAM runtime's generic container workload; its controller renders a Deployment and a
/// Service and lists them in `status.resources`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "core.oam.dev",
    version = "v1alpha2",
    kind = "ContainerizedWorkload",
    plural = "containerizedworkloads",
    category = "oam",
    namespaced,
    status = "ContainerizedWorkloadStatus",
    derive = "Default",
    derive = "PartialEq"
)]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ContainerizedWorkloadSpec {
    #[serde(flatten)]
    #[schemars(skip)]
    pub fields: BTreeMap<String, Value>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ContainerizedWorkloadStatus {
    /// The children rendered for this workload: a Deployment and a Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ChildResource>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChildResource {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}
