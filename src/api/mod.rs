//! The resource types: the HealthScope and HealthRule healthscope owns, the OAM objects it
//! reads, and the rules that belong to them (probe settings, apiVersion parts). No I/O.

// kube's printcolumn(...) arguments repeat `type_ = "string"`, which clippy reads as a duplicate.
pub mod cached;
#[allow(clippy::duplicated_attributes)]
mod healthrule;
#[allow(clippy::duplicated_attributes)]
mod healthscope;
pub mod oam;
pub mod probe;

pub use healthrule::*;
pub use healthscope::*;
pub use oam::{
    ApplicationConfiguration, ApplicationConfigurationComponent, ApplicationConfigurationSpec,
    ChildResource, Component, ComponentScope, ComponentSpec, ContainerizedWorkload,
    ContainerizedWorkloadSpec, ContainerizedWorkloadStatus, ScopeReference,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD healthscope works with: its own HealthScope first, then the OAM types it reads.
/// In a cluster the OAM runtime installs those from its own chart; these generated ones stand in
/// for them on a bare control plane (tests).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        healthscope_crd(),
        HealthRule::crd(),
        ApplicationConfiguration::crd(),
        Component::crd(),
        ContainerizedWorkload::crd(),
    ]
}

/// Annotation on healthscope's HealthScope CRD: a digest of its spec, so a running healthscope
/// can tell its own CRD (of this version) from the OAM runtime's or an older one.
pub const CRD_DIGEST_ANNOTATION: &str = "healthscope.oam.dev/crd-digest";

/// healthscope's HealthScope CRD, annotated with the digest of its spec.
pub fn healthscope_crd() -> CustomResourceDefinition {
    use sha2::{Digest, Sha256};
    let mut crd = HealthScope::crd();
    let spec = serde_json::to_vec(&crd.spec).unwrap_or_default();
    let digest: String = Sha256::digest(&spec)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    crd.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CRD_DIGEST_ANNOTATION.to_string(), digest);
    crd
}

/// healthscope's CRDs (HealthScope and HealthRule) as YAML, as `healthscope crd` prints them.
/// The OAM runtime's other CRDs are never printed: installing them would replace the runtime's
/// own.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    Ok(format!(
        "---\n{}---\n{}",
        serde_saphyr::to_string(&healthscope_crd())?,
        serde_saphyr::to_string(&HealthRule::crd())?
    ))
}

/// The API group of an apiVersion (`apps/v1` → `apps`; `v1` → the core group, empty).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// The group and version of a well-formed apiVersion: `apps/v1` → (`apps`, `v1`), `v1` → (``,
/// `v1`); `None` when empty or with more than one `/`.
pub fn group_version(api_version: &str) -> Option<(&str, &str)> {
    match api_version.split_once('/') {
        Some((group, version))
            if !group.is_empty() && !version.is_empty() && !version.contains('/') =>
        {
            Some((group, version))
        }
        None if !api_version.is_empty() => Some(("", api_version)),
        _ => None,
    }
}
