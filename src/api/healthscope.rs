//! The OAM v1alpha2 HealthScope, wire-compatible with existing OAM manifests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Probe timeout when `probe-timeout` is absent (seconds), as in the OAM runtime.
pub const DEFAULT_PROBE_TIMEOUT_SECONDS: i32 = 10;
/// Probe interval when `probe-interval` is absent (seconds), as in the OAM runtime.
pub const DEFAULT_PROBE_INTERVAL_SECONDS: i32 = 10;
/// HTTP method used when `probe-method` is absent.
pub const DEFAULT_PROBE_METHOD: &str = "GET";

/// A group of workloads whose health is reported together.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "core.oam.dev",
    version = "v1alpha2",
    kind = "HealthScope",
    plural = "healthscopes",
    singular = "healthscope",
    shortname = "hs",
    category = "crossplane",
    category = "oam",
    namespaced,
    status = "HealthScopeStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "A group of workloads whose health is reported together: healthscope fills spec.workloadRefs from the ApplicationConfigurations that name the scope, and writes their health into status (HEALTH: healthy, unhealthy or unknown; the Ready condition is True only while healthy).",
    printcolumn(name = "HEALTH", type_ = "string", json_path = ".status.health"),
    printcolumn(
        name = "HEALTHY",
        type_ = "string",
        json_path = ".status.healthyOfTotal"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "UNKNOWN",
        type_ = "integer",
        json_path = ".status.scopeHealthCondition.unknownWorkloads",
        description = "Workloads whose health could not be told",
        priority = "1"
    ),
    printcolumn(
        name = "CHANGED",
        type_ = "date",
        json_path = ".status.conditions[0].lastTransitionTime",
        description = "When the Ready condition (healthy or not) last changed",
        priority = "1"
    ),
    printcolumn(
        name = "PROBE",
        type_ = "string",
        json_path = ".spec.probe-endpoint",
        description = "The path probed on the scope's Service endpoints",
        priority = "1"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.probe__dash__timeout) || !has(self.probe__dash__interval) || self.probe__dash__timeout <= self.probe__dash__interval",
    "message": "probe-timeout may not exceed probe-interval: one probe round must end before the next is due"
}]))]
pub struct HealthScopeSpec {
    /// HTTP method of the probe sent to every ready Pod endpoint of the Services in the scope:
    /// GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS, in upper case. Defaults to GET. The
    /// controller sends only the methods its operator enabled (GET and HEAD by default).
    #[serde(
        rename = "probe-method",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(extend("enum" = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))]
    pub probe_method: Option<String>,

    /// Path (and optional query) probed on every ready Pod endpoint of the Services in the
    /// scope, such as `/health`: it starts with a single `/` and has no scheme, host, port,
    /// whitespace, `\` or `#`; at most 1024 characters. Without it, no HTTP probe is sent.
    #[serde(
        rename = "probe-endpoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 1024), regex(pattern = r"^/([^/\s#\\][^\s#\\]*)?$"))]
    pub probe_endpoint: Option<String>,

    /// Seconds one probe may take, 1 to 300; at most probe-interval. Defaults to 10, or to
    /// probe-interval when that is shorter.
    #[serde(
        rename = "probe-timeout",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 300))]
    pub probe_timeout: Option<i32>,

    /// Seconds between probe cycles, 2 to 3600. Defaults to 10, or to probe-timeout when that
    /// is longer. The controller may raise it to its floor (--min-probe-interval).
    #[serde(
        rename = "probe-interval",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 2, max = 3600))]
    pub probe_interval: Option<i32>,

    /// The workloads in this scope, kept by healthscope from the ApplicationConfigurations that
    /// name the scope. Keyed by apiVersion, kind and name, so several writers can own entries.
    #[serde(rename = "workloadRefs", default)]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["apiVersion", "kind", "name"]
    ))]
    pub workload_refs: Vec<WorkloadReference>,
}

/// A reference to a workload in the scope's namespace.
#[derive(
    Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl WorkloadReference {
    pub fn new(
        api_version: impl Into<String>,
        kind: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: None,
        }
    }

    /// The list-map key: two references with the same key are the same entry.
    pub fn key(&self) -> (&str, &str, &str) {
        (&self.api_version, &self.kind, &self.name)
    }

    /// The API group part of `apiVersion` ("" for the core group).
    pub fn group(&self) -> &str {
        super::group_of(&self.api_version)
    }
}

impl std::fmt::Display for WorkloadReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} {}", self.api_version, self.kind, self.name)
    }
}

/// The health of a workload or a scope, as a person reads it (`status.health`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    #[default]
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The OAM runtime's spelling of [`Health`] (`HEALTHY`, `UNHEALTHY`, `UNKNOWN`), kept in
/// `scopeHealthCondition` and `healthConditions` for tools written against it.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    #[default]
    Unknown,
}

impl From<Health> for HealthStatus {
    fn from(h: Health) -> Self {
        match h {
            Health::Healthy => HealthStatus::Healthy,
            Health::Unhealthy => HealthStatus::Unhealthy,
            Health::Unknown => HealthStatus::Unknown,
        }
    }
}

impl From<HealthStatus> for Health {
    fn from(h: HealthStatus) -> Self {
        match h {
            HealthStatus::Healthy => Health::Healthy,
            HealthStatus::Unhealthy => Health::Unhealthy,
            HealthStatus::Unknown => Health::Unknown,
        }
    }
}

/// What the controller last observed about the scope.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthScopeStatus {
    /// healthy, unhealthy or unknown: the scope's health in one word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,

    /// Healthy workloads out of all workloads, as "2/3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_of_total: Option<String>,

    /// The aggregate, in the OAM runtime's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_health_condition: Option<ScopeHealthCondition>,

    /// One entry per workload, sorted by apiVersion, kind and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_conditions: Vec<WorkloadHealthCondition>,

    /// Standard conditions: `Ready` is `True` only while the scope is healthy (`False` while
    /// unhealthy, `Unknown` while unknown), with the health as its reason and why as its
    /// message, so `kubectl wait --for=condition=Ready` waits for a healthy scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The scope's aggregate health with counts per state.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopeHealthCondition {
    pub health_status: HealthStatus,
    #[serde(default)]
    pub total: i64,
    #[serde(default)]
    pub healthy_workloads: i64,
    #[serde(default)]
    pub unhealthy_workloads: i64,
    #[serde(default)]
    pub unknown_workloads: i64,
}

/// The health of one workload in the scope, with the reason.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadHealthCondition {
    /// The OAM component that generated the workload (label `app.oam.dev/component`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_name: Option<String>,
    pub target_workload: WorkloadReference,
    pub health_status: HealthStatus,
    /// Why the workload has this health, e.g. "Ready: 2/3 replicas".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diagnosis: String,
    /// For kinds without a built-in rule: the workload's own status, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_status: Option<String>,
}
