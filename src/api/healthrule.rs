//! The HealthRule: an operator's health rule for one workload kind, written in CEL.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of healthscope's own resources.
pub const HEALTHSCOPE_GROUP: &str = "healthscope.oam.dev";
/// Longest CEL expression a rule may hold.
pub const MAX_EXPRESSION_LENGTH: usize = 2048;
/// The condition a HealthRule's status carries: whether its expressions compiled.
pub const COMPILED_CONDITION: &str = "Compiled";

/// A health rule for one workload kind: CEL expressions over the workload (`object`) say
/// whether it is healthy, when its health cannot be told, and what to report.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "healthscope.oam.dev",
    version = "v1alpha1",
    kind = "HealthRule",
    plural = "healthrules",
    singular = "healthrule",
    status = "HealthRuleStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "A health rule for one workload kind, written in CEL over the workload (object). The healthscope controller judges every workload of the target kind by it, in place of its built-in judgement; deleting the rule brings the built-in judgement back.",
    printcolumn(name = "KIND", type_ = "string", json_path = ".spec.target.kind"),
    printcolumn(
        name = "API VERSION",
        type_ = "string",
        json_path = ".spec.target.apiVersion"
    ),
    printcolumn(
        name = "COMPILED",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Compiled\")].status"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct HealthRuleSpec {
    /// The workload kind this rule judges. Only workloads of exactly this apiVersion and kind
    /// are judged by it; a kind healthscope has no built-in rule for is watched while a scope
    /// holds one.
    pub target: RuleTarget,

    /// CEL expression over `object` (the workload, as the API server returns it) giving a
    /// bool: true when the workload is healthy, false when unhealthy. For example
    /// `object.status.readyInstances == object.spec.instances`. A field that is absent makes
    /// the evaluation fail (the workload is then unknown): test it with `has(...)` first.
    #[schemars(length(min = 1, max = 2048))]
    pub healthy: String,

    /// CEL expression over `object` giving a bool, checked before `healthy`: true when the
    /// workload's health cannot be told yet (for example while its status is not reported),
    /// which makes it unknown. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub unknown: Option<String>,

    /// CEL expression over `object` giving a string: the reason shown in the workload's
    /// diagnosis, such as `'ready ' + string(object.status.readyInstances)`. Optional; without
    /// it the diagnosis says which expression decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub message: Option<String>,
}

/// The kind a HealthRule judges.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RuleTarget {
    /// The workload's apiVersion, `group/version` (or `v1` for the core group), such as
    /// `database.example.com/v1`.
    #[serde(rename = "apiVersion")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^([a-z0-9.-]+/)?v[0-9a-z]+$")
    )]
    pub api_version: String,

    /// The workload's kind, such as `PostgresClaim`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z][A-Za-z0-9]*$"))]
    pub kind: String,
}

impl RuleTarget {
    /// The API group (empty for the core group).
    pub fn group(&self) -> &str {
        super::group_of(&self.api_version)
    }
}

/// What the controller observed of a HealthRule.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct HealthRuleStatus {
    /// The rule's metadata.generation these conditions describe.
    #[serde(
        rename = "observedGeneration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub observed_generation: Option<i64>,

    /// `Compiled`: True when every expression compiled and the controller judges the target
    /// kind by this rule; False with the CEL error (and its position) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
