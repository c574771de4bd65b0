//! The resource types: the HealthScope healthscope owns and the OAM objects it reads. No I/O.

// kube's printcolumn(...) arguments repeat `type_ = "string"`, which clippy reads as a duplicate.
#[allow(clippy::duplicated_attributes)]
mod healthscope;
pub mod oam;

pub use healthscope::*;
pub use oam::{
    ApplicationConfiguration, ApplicationConfigurationComponent, ApplicationConfigurationSpec,
    ChildResource, Component, ComponentScope, ComponentSpec, ContainerizedWorkload,
    ContainerizedWorkloadSpec, ContainerizedWorkloadStatus, ScopeReference,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD healthscope works with: its own HealthScope first, then the OAM types it reads
/// (installed by the OAM runtime in a real cluster; by us in tests and the demo).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        HealthScope::crd(),
        ApplicationConfiguration::crd(),
        Component::crd(),
        ContainerizedWorkload::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as `healthscope crd` prints it.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
