//! Pure: which workload belongs to which HealthScope, and the label keys that mark it. Both the
//! webhook and the controller's wiring loop call this module; no I/O.
//!
//! An ApplicationConfiguration names scopes per component (`spec.components[].scopes[]`). Every
//! reference to a `core.oam.dev` `HealthScope` makes the workload rendered from that component a
//! member of the scope. [`desired_memberships`] computes those memberships; [`refs_by_scope`] and
//! [`workload_refs_apply`] turn them into the server-side apply body that owns a scope's
//! `spec.workloadRefs` entries, under [`WIRING_FIELD_MANAGER`]. Workloads are
//! marked with one label per scope ([`scope_label_key`]); [`workload_scopes`] finds the scopes of
//! a workload object and [`scope_label_changes`] the label edits that make it right.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::oam::{self, labels};
use crate::api::{
    ApplicationConfiguration, Component, ComponentScope, ContainerizedWorkload, ScopeReference,
    WorkloadReference,
};

/// Prefix of the label that marks a workload as a member of a scope.
pub const SCOPE_LABEL_PREFIX: &str = "healthscope.core.oam.dev/";
/// Value of a scope label.
pub const SCOPE_LABEL_VALUE: &str = "true";
/// Kind of the scopes healthscope handles (in group [`oam::GROUP`]).
pub const HEALTH_SCOPE_KIND: &str = "HealthScope";

/// Longest name part of a label key (the part after the `/`).
const LABEL_NAME_MAX: usize = 63;
/// Hex digits of the SHA-256 digest kept in a shortened label key or field manager.
const HASH_HEX_LEN: usize = 10;
/// Longest field manager name the API server accepts.
const FIELD_MANAGER_MAX: usize = 128;
const FIELD_MANAGER_PREFIX: &str = "healthscope/appconfig/";

/// The label key marking members of `scope`: `healthscope.core.oam.dev/<scope>`.
///
/// A label name (the part after the `/`) is at most 63 characters, while a scope name may have
/// up to 253. A longer scope name is shortened deterministically: its first 52 characters, with
/// trailing `-` and `.` removed, then `-`, then the first 10 hex digits of the SHA-256 of the
/// whole scope name. Example: a 70-character name `aaaa…a` becomes `aaaa…a-<10 hex>`, 63
/// characters at most. The result always ends with a hex digit, so it is a valid label name;
/// two long names that share the first 52 characters still get different keys (unless their
/// digests share 40 bits).
pub fn scope_label_key(scope: &str) -> String {
    format!("{SCOPE_LABEL_PREFIX}{}", shorten(scope, LABEL_NAME_MAX))
}

/// The server-side apply field manager that owns the `spec.workloadRefs` entries healthscope
/// wires into a scope, from every ApplicationConfiguration naming it.
pub const WIRING_FIELD_MANAGER: &str = "healthscope/wiring";

/// Whether a field manager is one of earlier versions, which owned each ApplicationConfiguration's
/// entries under a manager of its own ([`field_manager`]); their entries are given up.
pub fn is_per_appconfig_manager(manager: &str) -> bool {
    manager.starts_with(FIELD_MANAGER_PREFIX)
}

/// The field manager earlier versions used for one ApplicationConfiguration's entries in
/// `spec.workloadRefs`: `healthscope/appconfig/<name>`. Names that would make it longer than the
/// API server's 128 characters are shortened as in [`scope_label_key`].
pub fn field_manager(appconfig: &str) -> String {
    let room = FIELD_MANAGER_MAX - FIELD_MANAGER_PREFIX.len();
    format!("{FIELD_MANAGER_PREFIX}{}", shorten(appconfig, room))
}

/// `name` if it fits in `max` characters, else a prefix of it, `-` and a short digest.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let keep = max - HASH_HEX_LEN - 1;
    // Cut on a char boundary: names are ASCII in practice, but never panic on outside input.
    let mut end = keep.min(name.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let head = name[..end].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{}", &hex[..HASH_HEX_LEN])
}

/// One workload in one scope, and the component it was rendered from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Membership {
    pub scope: String,
    pub workload: WorkloadReference,
    pub component: String,
}

/// What an ApplicationConfiguration asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Every (scope, workload) pair, sorted, without duplicates.
    pub members: Vec<Membership>,
    /// Malformed scope references, each naming the component index and the problem. An
    /// ApplicationConfiguration with problems is rejected by the webhook.
    pub problems: Vec<String>,
    /// Scope references that are well-formed but cannot be resolved yet (the Component does not
    /// exist, or its workload has no apiVersion/kind): the scope gets no member for them until
    /// the Component is there. Reported as warnings, never as rejections.
    pub unresolved: Vec<String>,
    /// The same, per scope that misses a member for it: `Component "x" not found`.
    pub unresolved_by_scope: BTreeMap<String, Vec<String>>,
}

/// Components of one namespace.
pub trait ComponentLookup {
    fn component(&self, name: &str) -> Option<Arc<Component>>;
}

/// The OAM objects of one namespace (Components, ApplicationConfigurations and
/// ContainerizedWorkloads): what
/// [`workload_scopes`] needs to place a workload.
pub trait OamLookup: ComponentLookup {
    fn app_configuration(&self, name: &str) -> Option<Arc<ApplicationConfiguration>>;
    fn containerized_workload(&self, name: &str) -> Option<Arc<ContainerizedWorkload>>;
}

/// A HealthScope reference of a component, or why it is not one of ours.
#[derive(Debug, PartialEq, Eq)]
enum ScopeRefKind {
    /// A `core.oam.dev` HealthScope with this name.
    Health(String),
    /// Another kind of scope: not ours, ignored.
    Other,
    /// Malformed: the problem.
    Malformed(String),
}

/// Reads one `scopes[]` entry, nested (`scopeRef: {...}`) or flat (apiVersion/kind/name).
fn classify_scope(scope: &ComponentScope) -> ScopeRefKind {
    match &scope.scope_ref {
        Some(nested) => classify_reference(nested),
        None if scope.api_version.is_none() && scope.kind.is_none() && scope.name.is_none() => {
            ScopeRefKind::Malformed(
                "has neither scopeRef nor apiVersion/kind/name; write it as scopeRef: \
                 {apiVersion, kind, name}"
                    .to_string(),
            )
        }
        None => {
            let flat = ScopeReference {
                api_version: scope.api_version.clone().unwrap_or_default(),
                kind: scope.kind.clone().unwrap_or_default(),
                name: scope.name.clone().unwrap_or_default(),
            };
            // The OAM runtime decodes scopes[] strictly and reads only `scopeRef`: a flat
            // HealthScope reference would never be rendered, so it is a problem with its fix.
            match classify_reference(&flat) {
                ScopeRefKind::Health(name) => ScopeRefKind::Malformed(format!(
                    "names HealthScope {name:?} flat (apiVersion/kind/name directly under \
                     scopes[]); the OAM runtime reads only the nested form: scopeRef: \
                     {{apiVersion: {}, kind: {HEALTH_SCOPE_KIND}, name: {name}}}",
                    oam::API_VERSION
                )),
                other => other,
            }
        }
    }
}

fn classify_reference(reference: &ScopeReference) -> ScopeRefKind {
    if reference.kind.is_empty() {
        return ScopeRefKind::Malformed("has no kind".to_string());
    }
    if reference.api_version.is_empty() {
        return ScopeRefKind::Malformed("has no apiVersion".to_string());
    }
    if crate::api::group_of(&reference.api_version) != oam::GROUP {
        return ScopeRefKind::Other;
    }
    if reference.kind != HEALTH_SCOPE_KIND {
        if reference.kind.eq_ignore_ascii_case(HEALTH_SCOPE_KIND) {
            return ScopeRefKind::Malformed(format!(
                "has kind {:?}; the kind is spelled {HEALTH_SCOPE_KIND}",
                reference.kind
            ));
        }
        return ScopeRefKind::Other;
    }
    if reference.api_version != oam::API_VERSION {
        return ScopeRefKind::Malformed(format!(
            "names HealthScope with apiVersion {:?}; HealthScope is served as {}",
            reference.api_version,
            oam::API_VERSION
        ));
    }
    if reference.name.is_empty() {
        return ScopeRefKind::Malformed("names a HealthScope without a name".to_string());
    }
    if let Err(why) = check_object_name(&reference.name) {
        return ScopeRefKind::Malformed(format!(
            "names HealthScope {:?}, which is not a valid name: {why}",
            reference.name
        ));
    }
    ScopeRefKind::Health(reference.name.clone())
}

/// A Kubernetes object name (RFC 1123 subdomain): at most 253 characters of lowercase
/// alphanumerics, `-` and `.`, starting and ending with an alphanumeric.
fn check_object_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".to_string());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err("only lowercase letters, digits, '-' and '.' are allowed".to_string());
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err("must start and end with a letter or digit".to_string());
    }
    Ok(())
}

/// The component a `revisionName` (`<component>-v<N>`) was made from.
fn component_of_revision(revision: &str) -> Option<&str> {
    let (component, number) = revision.rsplit_once("-v")?;
    if component.is_empty() || number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(component)
}

/// The workload the OAM runtime rendered for a component, as it recorded it in the
/// ApplicationConfiguration's `status.workloads[]` (`componentName` and `workloadRef`). This is the
/// truth once it exists: a revision-enabled trait makes the runtime name the workload after the
/// ComponentRevision (`<component>-v<N>`), which no prediction from the spec knows.
fn workload_in_status(
    app: &ApplicationConfiguration,
    component: &str,
) -> Option<WorkloadReference> {
    let workloads = app.status.as_ref()?.fields.get("workloads")?.as_array()?;
    workloads
        .iter()
        .filter(|w| w.get("componentName").and_then(Value::as_str) == Some(component))
        .find_map(|w| {
            let reference = w.get("workloadRef")?;
            let field = |name: &str| {
                reference
                    .get(name)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
            };
            Some(WorkloadReference::new(
                field("apiVersion")?,
                field("kind")?,
                field("name")?,
            ))
        })
}

/// The workload a component entry will render, before the runtime has recorded it: apiVersion
/// and kind from the Component's `spec.workload`; the name from a parameter value bound to
/// `metadata.name`, else the template's `metadata.name`, else the component name (as the OAM
/// runtime renders it without a revision-enabled trait).
fn predicted_workload(
    entry: &crate::api::ApplicationConfigurationComponent,
    component_name: &str,
    component: &Component,
) -> Result<WorkloadReference, String> {
    let template = &component.spec.workload;
    let api_version = template
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = template
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if api_version.is_empty() || kind.is_empty() {
        return Err(format!(
            "Component {component_name:?} has a workload without apiVersion and kind"
        ));
    }
    let bound_to_name: BTreeSet<&str> = component
        .spec
        .parameters
        .iter()
        .filter(|p| p.field_paths.iter().any(|path| path == "metadata.name"))
        .map(|p| p.name.as_str())
        .collect();
    let from_parameter = entry
        .parameter_values
        .iter()
        .filter(|v| bound_to_name.contains(v.name.as_str()))
        .find_map(|v| match &v.value {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    let from_template = template
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let name = from_parameter
        .or(from_template)
        .unwrap_or_else(|| component_name.to_string());
    Ok(WorkloadReference::new(api_version, kind, name))
}

/// Which workload belongs to which HealthScope, according to one ApplicationConfiguration.
///
/// The workload of a component is the one the runtime recorded in `status.workloads` when it
/// has; until then, the one predicted from the spec.
///
/// Scope references may be nested (`scopeRef`) or flat. Only `HealthScope` of group
/// `core.oam.dev` is ours; other scope kinds are ignored. A reference without kind, apiVersion or
/// name, a misspelt `HealthScope` kind, another version of it, or an invalid name is a problem;
/// so is a component entry with HealthScope references but no usable componentName/revisionName.
pub fn desired_memberships(
    app: &ApplicationConfiguration,
    components: &dyn ComponentLookup,
) -> Desired {
    let mut desired = Desired::default();
    for (index, entry) in app.spec.components.iter().enumerate() {
        let mut scopes = BTreeSet::new();
        for (scope_index, scope) in entry.scopes.iter().enumerate() {
            match classify_scope(scope) {
                ScopeRefKind::Health(name) => {
                    scopes.insert(name);
                }
                ScopeRefKind::Other => {}
                ScopeRefKind::Malformed(problem) => desired.problems.push(format!(
                    "spec.components[{index}].scopes[{scope_index}] {problem}"
                )),
            }
        }
        if scopes.is_empty() {
            continue;
        }
        let component_name = match (&entry.component_name, &entry.revision_name) {
            (Some(name), _) if !name.is_empty() => name.as_str(),
            (_, Some(revision)) if !revision.is_empty() => match component_of_revision(revision) {
                Some(name) => name,
                None => {
                    desired.problems.push(format!(
                        "spec.components[{index}].revisionName {revision:?} is not of the form \
                         <component>-v<N>"
                    ));
                    continue;
                }
            },
            _ => {
                desired.problems.push(format!(
                    "spec.components[{index}] names HealthScopes but has neither componentName \
                     nor revisionName"
                ));
                continue;
            }
        };
        let Some(component) = components.component(component_name) else {
            desired.unresolved.push(format!(
                "spec.components[{index}]: Component {component_name:?} not found; its workload \
                 joins {} once it exists",
                join(&scopes)
            ));
            for scope in &scopes {
                desired
                    .unresolved_by_scope
                    .entry(scope.clone())
                    .or_default()
                    .push(format!("Component {component_name:?} not found"));
            }
            continue;
        };
        let rendered = workload_in_status(app, component_name)
            .map(Ok)
            .unwrap_or_else(|| predicted_workload(entry, component_name, &component));
        match rendered {
            Ok(workload) => {
                for scope in scopes {
                    desired.members.push(Membership {
                        scope,
                        workload: workload.clone(),
                        component: component_name.to_string(),
                    });
                }
            }
            Err(why) => {
                for scope in &scopes {
                    desired
                        .unresolved_by_scope
                        .entry(scope.clone())
                        .or_default()
                        .push(format!("Component {component_name:?}: {why}"));
                }
                desired
                    .unresolved
                    .push(format!("spec.components[{index}]: {why}"))
            }
        }
    }
    desired.members.sort();
    desired.members.dedup();
    desired
}

/// The scopes an ApplicationConfiguration names with well-formed HealthScope references, whether
/// or not their workloads resolve: the scopes whose refs its field manager owns.
pub fn referenced_scopes(app: &ApplicationConfiguration) -> BTreeSet<String> {
    app.spec
        .components
        .iter()
        .flat_map(|entry| entry.scopes.iter())
        .filter_map(|scope| match classify_scope(scope) {
            ScopeRefKind::Health(name) => Some(name),
            _ => None,
        })
        .collect()
}

fn join(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The workload references per scope, sorted and without duplicates.
pub fn refs_by_scope(members: &[Membership]) -> BTreeMap<String, Vec<WorkloadReference>> {
    let mut by_scope: BTreeMap<String, BTreeSet<WorkloadReference>> = BTreeMap::new();
    for member in members {
        by_scope
            .entry(member.scope.clone())
            .or_default()
            .insert(member.workload.clone());
    }
    by_scope
        .into_iter()
        .map(|(scope, refs)| (scope, refs.into_iter().collect()))
        .collect()
}

/// The server-side apply body that makes one field manager own exactly `refs` in the scope's
/// `spec.workloadRefs` (an empty list gives up every entry it owned).
pub fn workload_refs_apply(namespace: &str, scope: &str, refs: &[WorkloadReference]) -> Value {
    json!({
        "apiVersion": oam::API_VERSION,
        "kind": HEALTH_SCOPE_KIND,
        "metadata": { "name": scope, "namespace": namespace },
        "spec": { "workloadRefs": refs },
    })
}

/// Label edits that make a workload's scope labels match `scopes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelChanges {
    /// Labels to set (key → [`SCOPE_LABEL_VALUE`]).
    pub add: BTreeMap<String, String>,
    /// Scope labels to remove.
    pub remove: BTreeSet<String>,
}

impl LabelChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Adds the missing scope labels and removes stale ones (any `healthscope.core.oam.dev/` label
/// not for one of `scopes`). Empty when the labels are already right; other labels are never
/// touched.
pub fn scope_label_changes(
    current: &BTreeMap<String, String>,
    scopes: &BTreeSet<String>,
) -> LabelChanges {
    let wanted: BTreeSet<String> = scopes.iter().map(|s| scope_label_key(s)).collect();
    let add = wanted
        .iter()
        .filter(|key| current.get(*key).map(String::as_str) != Some(SCOPE_LABEL_VALUE))
        .map(|key| (key.clone(), SCOPE_LABEL_VALUE.to_string()))
        .collect();
    let remove = current
        .keys()
        .filter(|key| key.starts_with(SCOPE_LABEL_PREFIX) && !wanted.contains(*key))
        .cloned()
        .collect();
    LabelChanges { add, remove }
}

/// Where a workload object stands with respect to scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadScopes {
    /// Not rendered by an ApplicationConfiguration nor a child of a ContainerizedWorkload: its
    /// labels are left alone.
    NotOam,
    /// Rendered by OAM, but the owner cannot be found (yet): labels are left alone; the reason.
    Unresolved(String),
    /// The scopes the workload belongs to (possibly none).
    Scopes(BTreeSet<String>),
}

/// The scopes a workload object belongs to.
///
/// - A ContainerizedWorkload is left alone (its labels reach its pods); its children are not.
/// - A child of a ContainerizedWorkload (ownerReference kind `ContainerizedWorkload`, group
///   `core.oam.dev`) belongs to the scopes of its parent.
/// - Otherwise its ApplicationConfiguration is its `ApplicationConfiguration` owner reference,
///   else its `app.oam.dev/name` label. It belongs to every scope whose membership names this
///   exact workload (group, kind, name); when none does and the runtime has not yet recorded
///   what it rendered for the component in its `app.oam.dev/component` label, to that
///   component's scopes (the rendered name may differ from what the template says).
pub fn workload_scopes(
    api_version: &str,
    kind: &str,
    meta: &ObjectMeta,
    lookup: &dyn OamLookup,
) -> WorkloadScopes {
    // A ContainerizedWorkload itself is never labelled: the OAM runtime copies its labels into
    // its Deployment's pod template, so a scope label there would restart the app's pods. Its
    // Deployment and Service carry the labels instead.
    if kind == CONTAINERIZED_WORKLOAD_KIND && group_of(api_version) == oam::GROUP {
        return WorkloadScopes::NotOam;
    }
    if let Some(parent) = owning_containerized_workload(meta) {
        let Some(cw) = lookup.containerized_workload(parent) else {
            return WorkloadScopes::Unresolved(format!(
                "parent ContainerizedWorkload {parent:?} not found"
            ));
        };
        return match app_workload_scopes(
            &cw.metadata,
            oam::API_VERSION,
            CONTAINERIZED_WORKLOAD_KIND,
            lookup,
        ) {
            // A child of a ContainerizedWorkload that OAM did not render still has no scopes.
            WorkloadScopes::NotOam => WorkloadScopes::Scopes(BTreeSet::new()),
            other => other,
        };
    }
    app_workload_scopes(meta, api_version, kind, lookup)
}

const CONTAINERIZED_WORKLOAD_KIND: &str = "ContainerizedWorkload";

use crate::api::group_of;

/// The ApplicationConfiguration an object was rendered from: its owner, else its
/// `app.oam.dev/name` label.
pub fn owning_app(meta: &ObjectMeta) -> Option<String> {
    let owner = meta
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.kind == "ApplicationConfiguration" && group_of(&o.api_version) == oam::GROUP)
        .map(|o| o.name.clone());
    owner.or_else(|| meta.labels.as_ref()?.get(labels::APP_NAME).cloned())
}

/// The ContainerizedWorkload that owns an object (its Deployment and Service), by name.
pub fn owning_containerized_workload(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.kind == CONTAINERIZED_WORKLOAD_KIND && group_of(&o.api_version) == oam::GROUP)
        .map(|o| o.name.as_str())
}

fn app_workload_scopes(
    meta: &ObjectMeta,
    api_version: &str,
    kind: &str,
    lookup: &dyn OamLookup,
) -> WorkloadScopes {
    let Some(app_name) = owning_app(meta) else {
        return WorkloadScopes::NotOam;
    };
    let Some(app) = lookup.app_configuration(&app_name) else {
        return WorkloadScopes::Unresolved(format!(
            "ApplicationConfiguration {app_name:?} not found"
        ));
    };
    let desired = desired_memberships(&app, lookup);
    let name = meta.name.as_deref().unwrap_or_default();
    let exact: BTreeSet<String> = desired
        .members
        .iter()
        .filter(|m| {
            m.workload.kind == kind
                && m.workload.name == name
                && m.workload.group() == group_of(api_version)
        })
        .map(|m| m.scope.clone())
        .collect();
    if !exact.is_empty() {
        return WorkloadScopes::Scopes(exact);
    }
    // The rendered name is not known from the spec alone; once the runtime has recorded what it
    // rendered for the component, anything else (an older revision's workload) is no member.
    let by_component = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(labels::COMPONENT))
        .filter(|component| workload_in_status(&app, component).is_none())
        .map(|component| {
            desired
                .members
                .iter()
                .filter(|m| &m.component == component)
                .map(|m| m.scope.clone())
                .collect()
        })
        .unwrap_or_default();
    WorkloadScopes::Scopes(by_component)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::oam::{ComponentParameter, ParameterValue};
    use crate::api::{
        ApplicationConfigurationComponent, ApplicationConfigurationSpec, ComponentSpec,
        ContainerizedWorkloadSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::HashMap;

    #[derive(Default)]
    pub(crate) struct Fixture {
        components: HashMap<String, Component>,
        apps: HashMap<String, Arc<ApplicationConfiguration>>,
        cws: HashMap<String, Arc<ContainerizedWorkload>>,
    }

    impl ComponentLookup for Fixture {
        fn component(&self, name: &str) -> Option<Arc<Component>> {
            self.components.get(name).cloned().map(Arc::new)
        }
    }

    impl OamLookup for Fixture {
        fn app_configuration(&self, name: &str) -> Option<Arc<ApplicationConfiguration>> {
            self.apps.get(name).cloned()
        }
        fn containerized_workload(&self, name: &str) -> Option<Arc<ContainerizedWorkload>> {
            self.cws.get(name).cloned()
        }
    }

    fn component(name: &str, workload: Value, parameters: Vec<ComponentParameter>) -> Component {
        Component::new(
            name,
            ComponentSpec {
                workload,
                parameters,
            },
        )
    }

    fn cw_component(name: &str) -> Component {
        component(
            name,
            json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload",
                   "spec": {"containers": []}}),
            vec![ComponentParameter {
                name: "instance-name".into(),
                field_paths: vec!["metadata.name".into()],
            }],
        )
    }

    fn nested(name: &str) -> ComponentScope {
        ComponentScope {
            scope_ref: Some(ScopeReference {
                api_version: oam::API_VERSION.into(),
                kind: HEALTH_SCOPE_KIND.into(),
                name: name.into(),
            }),
            ..Default::default()
        }
    }

    fn flat(api_version: &str, kind: &str, name: &str) -> ComponentScope {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ComponentScope {
            scope_ref: None,
            api_version: opt(api_version),
            kind: opt(kind),
            name: opt(name),
        }
    }

    fn entry(component: &str, scopes: Vec<ComponentScope>) -> ApplicationConfigurationComponent {
        ApplicationConfigurationComponent {
            component_name: Some(component.into()),
            scopes,
            ..Default::default()
        }
    }

    fn app(
        name: &str,
        components: Vec<ApplicationConfigurationComponent>,
    ) -> ApplicationConfiguration {
        ApplicationConfiguration::new(name, ApplicationConfigurationSpec { components })
    }

    fn fixture_with(components: Vec<Component>) -> Fixture {
        let mut fixture = Fixture::default();
        for c in components {
            let name = c.metadata.name.clone().unwrap();
            fixture.components.insert(name, c);
        }
        fixture
    }

    fn cw_ref(name: &str) -> WorkloadReference {
        WorkloadReference::new(oam::API_VERSION, "ContainerizedWorkload", name)
    }

    #[test]
    fn nested_scope_refs_are_members_and_flat_ones_a_problem_naming_scope_ref() {
        let lookup = fixture_with(vec![cw_component("web")]);
        let a = app(
            "app",
            vec![entry(
                "web",
                vec![nested("one"), flat(oam::API_VERSION, "HealthScope", "two")],
            )],
        );
        let desired = desired_memberships(&a, &lookup);
        assert_eq!(desired.problems.len(), 1, "{:?}", desired.problems);
        assert!(
            desired.problems[0]
                .starts_with("spec.components[0].scopes[1] names HealthScope \"two\" flat")
                && desired.problems[0].contains(
                    "scopeRef: {apiVersion: core.oam.dev/v1alpha2, kind: HealthScope, name: two}"
                ),
            "{}",
            desired.problems[0]
        );
        let scopes: Vec<_> = desired.members.iter().map(|m| m.scope.as_str()).collect();
        assert_eq!(scopes, ["one"]);
        assert!(desired.members.iter().all(|m| m.workload == cw_ref("web")));
        assert!(desired.members.iter().all(|m| m.component == "web"));
    }

    #[test]
    fn malformed_refs_are_problems_naming_the_component_index() {
        let lookup = fixture_with(vec![cw_component("web")]);
        let a = app(
            "app",
            vec![
                entry("web", vec![nested("fine")]),
                entry(
                    "web",
                    vec![
                        flat(oam::API_VERSION, "HealthScope", ""),
                        flat(oam::API_VERSION, "", "x"),
                        flat("", "HealthScope", "x"),
                        flat("", "", ""),
                        flat(oam::API_VERSION, "healthscope", "x"),
                        flat("core.oam.dev/v1beta1", "HealthScope", "x"),
                        flat(oam::API_VERSION, "HealthScope", "Not_Valid"),
                    ],
                ),
            ],
        );
        let desired = desired_memberships(&a, &lookup);
        assert_eq!(desired.problems.len(), 7, "{:#?}", desired.problems);
        for (i, problem) in desired.problems.iter().enumerate() {
            assert!(
                problem.starts_with(&format!("spec.components[1].scopes[{i}] ")),
                "{problem}"
            );
        }
        assert!(desired.problems[0].contains("without a name"));
        assert!(desired.problems[1].contains("no kind"));
        assert!(desired.problems[2].contains("no apiVersion"));
        assert!(desired.problems[3].contains("neither scopeRef"));
        assert!(desired.problems[4].contains("spelled HealthScope"));
        assert!(desired.problems[5].contains("core.oam.dev/v1alpha2"));
        assert!(desired.problems[6].contains("not a valid name"));
        // The well-formed reference still counts.
        assert_eq!(desired.members.len(), 1);
        assert_eq!(desired.members[0].scope, "fine");
    }

    #[test]
    fn other_scope_kinds_and_groups_are_ignored() {
        let lookup = fixture_with(vec![cw_component("web")]);
        let a = app(
            "app",
            vec![entry(
                "web",
                vec![
                    flat(oam::API_VERSION, "NetworkScope", "net"),
                    flat("example.com/v1", "HealthScope", "theirs"),
                ],
            )],
        );
        let desired = desired_memberships(&a, &lookup);
        assert_eq!(desired, Desired::default());
    }

    #[test]
    fn workload_name_comes_from_parameter_then_template_then_component() {
        let with_template_name = component(
            "named",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "from-template"}}),
            vec![ComponentParameter {
                name: "instance-name".into(),
                field_paths: vec!["metadata.name".into()],
            }],
        );
        let bare = component(
            "bare",
            json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
            vec![ComponentParameter {
                name: "image".into(),
                field_paths: vec!["spec.template.spec.containers[0].image".into()],
            }],
        );
        let lookup = fixture_with(vec![with_template_name, bare]);
        let mut by_param = entry("named", vec![nested("s")]);
        by_param.parameter_values = vec![ParameterValue {
            name: "instance-name".into(),
            value: json!("from-param"),
        }];
        let by_template = entry("named", vec![nested("s")]);
        let mut by_component = entry("bare", vec![nested("s")]);
        // A parameter not bound to metadata.name does not name the workload.
        by_component.parameter_values = vec![ParameterValue {
            name: "image".into(),
            value: json!("nginx"),
        }];
        let a = app("app", vec![by_param, by_template, by_component]);
        let desired = desired_memberships(&a, &lookup);
        let names: Vec<_> = desired
            .members
            .iter()
            .map(|m| m.workload.name.as_str())
            .collect();
        assert_eq!(names, ["bare", "from-param", "from-template"]);
        assert!(
            desired
                .members
                .iter()
                .all(|m| m.workload.kind == "Deployment" && m.workload.api_version == "apps/v1")
        );
    }

    #[test]
    fn rendered_name_in_status_wins_over_the_prediction() {
        let lookup = fixture_with(vec![cw_component("web")]);
        let mut a = app("app", vec![entry("web", vec![nested("one")])]);
        assert_eq!(
            desired_memberships(&a, &lookup).members[0].workload,
            cw_ref("web")
        );
        a.status = serde_json::from_value(json!({"workloads": [
            {"componentName": "other", "workloadRef": {"apiVersion": oam::API_VERSION,
                "kind": "ContainerizedWorkload", "name": "other-v1"}},
            {"componentName": "web", "componentRevisionName": "web-v2",
             "workloadRef": {"apiVersion": oam::API_VERSION, "kind": "ContainerizedWorkload",
                "name": "web-v2"}}]}))
        .ok();
        let desired = desired_memberships(&a, &lookup);
        assert_eq!(desired.members.len(), 1);
        assert_eq!(desired.members[0].workload, cw_ref("web-v2"));
        assert_eq!(desired.members[0].component, "web");
        // An entry without a usable reference falls back to the prediction.
        a.status = serde_json::from_value(json!({"workloads": [
            {"componentName": "web", "workloadRef": {"apiVersion": "", "kind": "", "name": ""}}]}))
        .ok();
        assert_eq!(
            desired_memberships(&a, &lookup).members[0].workload,
            cw_ref("web")
        );
    }

    #[test]
    fn revision_name_resolves_to_its_component() {
        let lookup = fixture_with(vec![cw_component("web-app")]);
        let mut by_revision = entry("ignored", vec![nested("s")]);
        by_revision.component_name = None;
        by_revision.revision_name = Some("web-app-v12".into());
        let mut bad_revision = by_revision.clone();
        bad_revision.revision_name = Some("web-app".into());
        let mut neither = by_revision.clone();
        neither.revision_name = None;
        let a = app("app", vec![by_revision, bad_revision, neither]);
        let desired = desired_memberships(&a, &lookup);
        assert_eq!(desired.members.len(), 1);
        assert_eq!(desired.members[0].component, "web-app");
        assert_eq!(desired.members[0].workload, cw_ref("web-app"));
        assert_eq!(desired.problems.len(), 2, "{:?}", desired.problems);
        assert!(desired.problems[0].starts_with("spec.components[1].revisionName"));
        assert!(desired.problems[1].starts_with("spec.components[2] "));
    }

    #[test]
    fn missing_component_is_unresolved_not_a_problem() {
        let lookup = fixture_with(vec![]);
        let a = app("app", vec![entry("ghost", vec![nested("s")])]);
        let desired = desired_memberships(&a, &lookup);
        assert!(desired.members.is_empty());
        assert!(desired.problems.is_empty());
        assert_eq!(desired.unresolved.len(), 1);
        assert!(desired.unresolved[0].contains("\"ghost\" not found"));
        assert_eq!(referenced_scopes(&a), BTreeSet::from(["s".to_string()]));
    }

    #[test]
    fn several_components_and_scopes_group_by_scope_sorted_and_deduped() {
        let lookup = fixture_with(vec![cw_component("web"), cw_component("db")]);
        let with_name = |comp: &str, instance: &str, scopes| {
            let mut e = entry(comp, scopes);
            e.parameter_values = vec![ParameterValue {
                name: "instance-name".into(),
                value: json!(instance),
            }];
            e
        };
        let a = app(
            "app",
            vec![
                with_name("web", "web-b", vec![nested("front"), nested("all")]),
                with_name("web", "web-a", vec![nested("front"), nested("all")]),
                with_name("db", "db", vec![nested("all"), nested("all")]),
            ],
        );
        let desired = desired_memberships(&a, &lookup);
        let by_scope = refs_by_scope(&desired.members);
        assert_eq!(
            by_scope,
            BTreeMap::from([
                (
                    "all".to_string(),
                    vec![cw_ref("db"), cw_ref("web-a"), cw_ref("web-b")]
                ),
                ("front".to_string(), vec![cw_ref("web-a"), cw_ref("web-b")]),
            ])
        );
    }

    #[test]
    fn apply_body_has_only_identity_and_workload_refs() {
        let body = workload_refs_apply("ns", "scope", &[cw_ref("a")]);
        assert_eq!(
            body,
            json!({
                "apiVersion": "core.oam.dev/v1alpha2",
                "kind": "HealthScope",
                "metadata": {"name": "scope", "namespace": "ns"},
                "spec": {"workloadRefs": [
                    {"apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload", "name": "a"}
                ]},
            })
        );
        let empty = workload_refs_apply("ns", "scope", &[]);
        assert_eq!(empty["spec"]["workloadRefs"], json!([]));
    }

    fn is_valid_label_name(name: &str) -> bool {
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        name.len() <= 63
            && alnum(name.chars().next())
            && alnum(name.chars().last())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }

    #[test]
    fn scope_label_key_keeps_short_names_and_shortens_long_ones() {
        assert_eq!(
            scope_label_key("example-health-scope"),
            "healthscope.core.oam.dev/example-health-scope"
        );
        let exact = "a".repeat(63);
        assert_eq!(
            scope_label_key(&exact),
            format!("{SCOPE_LABEL_PREFIX}{exact}")
        );

        let long = format!("{}-{}", "a".repeat(51), "b".repeat(40));
        let key = scope_label_key(&long);
        let name = key.strip_prefix(SCOPE_LABEL_PREFIX).unwrap();
        assert!(is_valid_label_name(name), "{name}");
        // 51 a's, then the '-' at position 52 is trimmed, then '-' and 10 hex digits.
        assert_eq!(name.len(), 51 + 1 + 10);
        assert!(name.starts_with(&"a".repeat(51)));
        assert_eq!(key, scope_label_key(&long), "deterministic");

        let other = format!("{}-{}", "a".repeat(51), "c".repeat(40));
        assert_ne!(
            scope_label_key(&other),
            key,
            "distinct names, distinct keys"
        );

        let longest = "x".repeat(253);
        let name = scope_label_key(&longest);
        let name = name.strip_prefix(SCOPE_LABEL_PREFIX).unwrap();
        assert!(is_valid_label_name(name));
        assert_eq!(name.len(), 63);
    }

    #[test]
    fn field_manager_is_deterministic_and_bounded() {
        assert_eq!(field_manager("app"), "healthscope/appconfig/app");
        let long = "n".repeat(253);
        let manager = field_manager(&long);
        assert!(manager.len() <= 128, "{}", manager.len());
        assert_eq!(manager, field_manager(&long));
        assert_ne!(manager, field_manager(&"m".repeat(253)));
    }

    #[test]
    fn scope_label_changes_add_missing_remove_stale_and_are_idempotent() {
        let mut current = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            (scope_label_key("keep"), "true".to_string()),
            (scope_label_key("stale"), "true".to_string()),
            (scope_label_key("wrong-value"), "yes".to_string()),
        ]);
        let scopes = BTreeSet::from([
            "keep".to_string(),
            "new".to_string(),
            "wrong-value".to_string(),
        ]);
        let changes = scope_label_changes(&current, &scopes);
        assert_eq!(
            changes.add,
            BTreeMap::from([
                (scope_label_key("new"), "true".to_string()),
                (scope_label_key("wrong-value"), "true".to_string()),
            ])
        );
        assert_eq!(changes.remove, BTreeSet::from([scope_label_key("stale")]));

        for key in &changes.remove {
            current.remove(key);
        }
        current.extend(changes.add);
        let again = scope_label_changes(&current, &scopes);
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(current.get("app").map(String::as_str), Some("web"));
    }

    fn meta(name: &str, labels: &[(&str, &str)], owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: Some(owners),
            ..Default::default()
        }
    }

    fn owner(api_version: &str, kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "uid".into(),
            ..Default::default()
        }
    }

    fn placement_fixture() -> Fixture {
        let mut lookup = fixture_with(vec![
            cw_component("web"),
            component(
                "api",
                json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                vec![],
            ),
        ]);
        let a = app(
            "shop",
            vec![
                entry("web", vec![nested("front"), nested("all")]),
                entry("api", vec![nested("all")]),
            ],
        );
        lookup.apps.insert("shop".into(), Arc::new(a));
        let mut cw = ContainerizedWorkload::new("web", ContainerizedWorkloadSpec::default());
        cw.metadata.labels = Some(BTreeMap::from([(labels::APP_NAME.into(), "shop".into())]));
        lookup.cws.insert("web".into(), Arc::new(cw));
        lookup
    }

    fn scopes(names: &[&str]) -> WorkloadScopes {
        WorkloadScopes::Scopes(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn workload_scopes_by_label_owner_and_parent() {
        let lookup = placement_fixture();
        // Labelled as rendered by the OAM runtime.
        let by_label = meta("api", &[(labels::APP_NAME, "shop")], vec![]);
        assert_eq!(
            workload_scopes("apps/v1", "Deployment", &by_label, &lookup),
            scopes(&["all"])
        );
        // Owned by the ApplicationConfiguration, no labels: a ContainerizedWorkload.
        let by_owner = meta(
            "web",
            &[],
            vec![owner(oam::API_VERSION, "ApplicationConfiguration", "shop")],
        );
        // A ContainerizedWorkload itself is left alone: its labels would reach its pods.
        assert_eq!(
            workload_scopes(
                oam::API_VERSION,
                "ContainerizedWorkload",
                &by_owner,
                &lookup
            ),
            WorkloadScopes::NotOam
        );
        // The Deployment and Service a ContainerizedWorkload renders.
        let child = meta(
            "web",
            &[],
            vec![owner(oam::API_VERSION, "ContainerizedWorkload", "web")],
        );
        assert_eq!(
            workload_scopes("apps/v1", "Deployment", &child, &lookup),
            scopes(&["all", "front"])
        );
        assert_eq!(
            workload_scopes("v1", "Service", &child, &lookup),
            scopes(&["all", "front"])
        );
        // Rendered under another name: the component label decides.
        let renamed = meta(
            "api-7f9",
            &[(labels::APP_NAME, "shop"), (labels::COMPONENT, "api")],
            vec![],
        );
        assert_eq!(
            workload_scopes("apps/v1", "Deployment", &renamed, &lookup),
            scopes(&["all"])
        );
        // Of the application but of no scoped component.
        let other = meta("x", &[(labels::APP_NAME, "shop")], vec![]);
        assert_eq!(
            workload_scopes("apps/v1", "Deployment", &other, &lookup),
            scopes(&[])
        );
    }

    #[test]
    fn workload_scopes_not_oam_or_unresolved() {
        let lookup = placement_fixture();
        let plain = meta("plain", &[("app", "x")], vec![]);
        assert_eq!(
            workload_scopes("apps/v1", "Deployment", &plain, &lookup),
            WorkloadScopes::NotOam
        );
        let orphan = meta("o", &[(labels::APP_NAME, "gone")], vec![]);
        assert!(matches!(
            workload_scopes("apps/v1", "Deployment", &orphan, &lookup),
            WorkloadScopes::Unresolved(why) if why.contains("\"gone\"")
        ));
        let lost_child = meta(
            "c",
            &[],
            vec![owner(oam::API_VERSION, "ContainerizedWorkload", "missing")],
        );
        assert!(matches!(
            workload_scopes("apps/v1", "Deployment", &lost_child, &lookup),
            WorkloadScopes::Unresolved(why) if why.contains("\"missing\"")
        ));
    }
}
