//! Pure: AdmissionRequest (+ a read-only cache snapshot) -> AdmissionResponse, one file per kind.
//!
//! - [`appconfig`]: ApplicationConfigurations. Rejects malformed scope references; otherwise
//!   allows, and describes the server-side applies that put the AppConfig's workloads into its
//!   HealthScopes' `spec.workloadRefs` (none on dry run).
//! - [`workload`]: workloads (Deployments, StatefulSets, DaemonSets, Services,
//!   ContainerizedWorkloads, anything rendered by an AppConfig or a ContainerizedWorkload): a JSON
//!   patch that sets their scope labels.
//! - [`healthscope`]: HealthScope validation and the effective probe settings.
//! - [`healthrule`]: HealthRule validation (its CEL expressions compile).
//!
//! The handlers read the cluster only through [`Snapshot`]; [`crate::webhook`] serves them over
//! HTTPS and fills snapshot misses with live reads. Admission writes nothing.

pub mod appconfig;
pub mod healthrule;
pub mod healthscope;
pub mod workload;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use kube::core::GroupVersionKind;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};

use crate::api::{ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope};
use crate::membership::{ComponentLookup, OamLookup};

/// Path of the ApplicationConfiguration webhook of earlier versions (a mutating configuration):
/// the same decision as [`APPLICATION_CONFIGURATION_VALIDATE_PATH`], never a patch, so a
/// configuration left from an upgrade keeps working.
pub const APPLICATION_CONFIGURATION_PATH: &str = "/mutate/applicationconfiguration";
/// Path of the ApplicationConfiguration check (validating configuration, sideEffects None):
/// rejects malformed scope references, warns about what cannot be wired yet, writes nothing.
pub const APPLICATION_CONFIGURATION_VALIDATE_PATH: &str = "/validate/applicationconfiguration";
/// Path of the workload labelling webhook (mutating).
pub const WORKLOAD_PATH: &str = "/mutate/workload";
/// Path of the HealthScope validating webhook.
pub const HEALTH_SCOPE_PATH: &str = "/validate/healthscope";
/// Path of the HealthRule webhook (validating).
pub const HEALTH_RULE_PATH: &str = "/validate/healthrule";

/// A read-only view of the OAM objects admission decisions depend on.
pub trait Snapshot: Send + Sync {
    fn app_configuration(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ApplicationConfiguration>>;
    fn component(&self, namespace: &str, name: &str) -> Option<Arc<Component>>;
    fn containerized_workload(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ContainerizedWorkload>>;
    fn health_scope(&self, namespace: &str, name: &str) -> Option<Arc<HealthScope>>;
}

/// One namespace of a [`Snapshot`], as the membership lookups want it.
pub struct InNamespace<'a> {
    pub snapshot: &'a dyn Snapshot,
    pub namespace: &'a str,
}

impl ComponentLookup for InNamespace<'_> {
    fn component(&self, name: &str) -> Option<Arc<Component>> {
        self.snapshot.component(self.namespace, name)
    }
}

impl OamLookup for InNamespace<'_> {
    fn app_configuration(&self, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        self.snapshot.app_configuration(self.namespace, name)
    }
    fn containerized_workload(&self, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        self.snapshot.containerized_workload(self.namespace, name)
    }
}

/// The kinds a [`Snapshot`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OamKind {
    ApplicationConfiguration,
    Component,
    ContainerizedWorkload,
    HealthScope,
}

/// An object a [`Snapshot`] was asked for: kind, namespace, name.
pub type ObjectKey = (OamKind, String, String);

/// Objects read outside a snapshot (live from the API server), layered over it. `None` records
/// an object known not to exist.
#[derive(Default)]
pub struct Overlay {
    pub app_configurations: Known<ApplicationConfiguration>,
    pub components: Known<Component>,
    pub containerized_workloads: Known<ContainerizedWorkload>,
    pub health_scopes: Known<HealthScope>,
}

/// A snapshot that answers from `base`, then from `overlay`, and records every object found in
/// neither: the keys a caller may read live before asking again.
pub struct Recording<'a> {
    pub base: &'a dyn Snapshot,
    pub overlay: &'a Overlay,
    misses: Mutex<BTreeSet<ObjectKey>>,
}

impl<'a> Recording<'a> {
    pub fn new(base: &'a dyn Snapshot, overlay: &'a Overlay) -> Self {
        Self {
            base,
            overlay,
            misses: Mutex::new(BTreeSet::new()),
        }
    }

    /// The objects asked for that neither the snapshot nor the overlay knows about.
    pub fn misses(&self) -> BTreeSet<ObjectKey> {
        self.misses.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn lookup<T>(
        &self,
        kind: OamKind,
        namespace: &str,
        name: &str,
        from_base: Option<Arc<T>>,
        overlay: &HashMap<(String, String), Option<Arc<T>>>,
    ) -> Option<Arc<T>> {
        if from_base.is_some() {
            return from_base;
        }
        match overlay.get(&(namespace.to_string(), name.to_string())) {
            Some(known) => known.clone(),
            None => {
                if let Ok(mut misses) = self.misses.lock() {
                    misses.insert((kind, namespace.to_string(), name.to_string()));
                }
                None
            }
        }
    }
}

impl Snapshot for Recording<'_> {
    fn app_configuration(&self, ns: &str, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        let base = self.base.app_configuration(ns, name);
        let overlay = &self.overlay.app_configurations;
        self.lookup(OamKind::ApplicationConfiguration, ns, name, base, overlay)
    }
    fn component(&self, ns: &str, name: &str) -> Option<Arc<Component>> {
        let base = self.base.component(ns, name);
        self.lookup(OamKind::Component, ns, name, base, &self.overlay.components)
    }
    fn containerized_workload(&self, ns: &str, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        let base = self.base.containerized_workload(ns, name);
        let overlay = &self.overlay.containerized_workloads;
        self.lookup(OamKind::ContainerizedWorkload, ns, name, base, overlay)
    }
    fn health_scope(&self, ns: &str, name: &str) -> Option<Arc<HealthScope>> {
        let base = self.base.health_scope(ns, name);
        let overlay = &self.overlay.health_scopes;
        self.lookup(OamKind::HealthScope, ns, name, base, overlay)
    }
}

/// Objects by (namespace, name); `None` means known not to exist.
pub type Known<T> = HashMap<(String, String), Option<Arc<T>>>;

fn known<T>(map: &Known<T>, ns: &str, name: &str) -> Option<Arc<T>> {
    map.get(&(ns.to_string(), name.to_string()))
        .cloned()
        .flatten()
}

/// An overlay is also a snapshot of just its objects: for tests, and for callers that hold the
/// objects themselves.
impl Snapshot for Overlay {
    fn app_configuration(&self, ns: &str, name: &str) -> Option<Arc<ApplicationConfiguration>> {
        known(&self.app_configurations, ns, name)
    }
    fn component(&self, ns: &str, name: &str) -> Option<Arc<Component>> {
        known(&self.components, ns, name)
    }
    fn containerized_workload(&self, ns: &str, name: &str) -> Option<Arc<ContainerizedWorkload>> {
        known(&self.containerized_workloads, ns, name)
    }
    fn health_scope(&self, ns: &str, name: &str) -> Option<Arc<HealthScope>> {
        known(&self.health_scopes, ns, name)
    }
}

impl Overlay {
    /// Records `object` (found) under its namespace and name.
    pub fn add<K: OverlayObject>(&mut self, object: K) -> &mut Self {
        let key = (
            object.meta().namespace.clone().unwrap_or_default(),
            object.meta().name.clone().unwrap_or_default(),
        );
        K::map(self).insert(key, Some(Arc::new(object)));
        self
    }
}

/// The kinds an [`Overlay`] holds.
pub trait OverlayObject: kube::Resource + Sized {
    fn map(overlay: &mut Overlay) -> &mut Known<Self>;
}

impl OverlayObject for ApplicationConfiguration {
    fn map(overlay: &mut Overlay) -> &mut Known<Self> {
        &mut overlay.app_configurations
    }
}
impl OverlayObject for Component {
    fn map(overlay: &mut Overlay) -> &mut Known<Self> {
        &mut overlay.components
    }
}
impl OverlayObject for ContainerizedWorkload {
    fn map(overlay: &mut Overlay) -> &mut Known<Self> {
        &mut overlay.containerized_workloads
    }
}
impl OverlayObject for HealthScope {
    fn map(overlay: &mut Overlay) -> &mut Known<Self> {
        &mut overlay.health_scopes
    }
}

/// An allowing response to `request`, echoing its uid.
pub fn allow<K: kube::Resource>(request: &AdmissionRequest<K>) -> AdmissionResponse {
    AdmissionResponse::from(request)
}

/// A denial of `request` with `reason`, echoing its uid.
pub fn deny<K: kube::Resource>(
    request: &AdmissionRequest<K>,
    reason: impl ToString,
) -> AdmissionResponse {
    AdmissionResponse::from(request).deny(reason)
}

/// Adds warnings (shown by kubectl) to a response.
pub fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if warnings.is_empty() {
        return response;
    }
    response
        .warnings
        .get_or_insert_with(Vec::new)
        .extend(warnings);
    response
}

/// `group/version`, or `version` for the core group.
pub fn api_version_of(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    }
}

/// `namespace/name` of the request's object, for messages.
pub fn object_name<K: kube::Resource>(request: &AdmissionRequest<K>) -> String {
    match &request.namespace {
        Some(ns) => format!("{ns}/{}", request.name),
        None => request.name.clone(),
    }
}

/// A denial for a request routed to a handler of another kind.
pub fn wrong_kind<K: kube::Resource>(
    request: &AdmissionRequest<K>,
    expected: &str,
) -> AdmissionResponse {
    deny(
        request,
        format!(
            "this webhook admits {expected}, not {} {}: check the webhook configuration's rules",
            api_version_of(&request.kind),
            request.kind.kind
        ),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// An admission/v1 AdmissionReview body.
    pub(crate) fn review_json(
        kind: (&str, &str, &str),
        operation: &str,
        object: Option<Value>,
        old_object: Option<Value>,
        dry_run: bool,
    ) -> Value {
        let (group, version, kind) = kind;
        let name = object
            .as_ref()
            .or(old_object.as_ref())
            .and_then(|o| o["metadata"]["name"].as_str())
            .unwrap_or("")
            .to_string();
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "6f1c2c43-1234-4bcd-9a00-000000000001",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": "things"},
                "name": name,
                "namespace": "ns",
                "operation": operation,
                "userInfo": {"username": "tester"},
                "object": object,
                "oldObject": old_object,
                "dryRun": dry_run,
            }
        })
    }

    /// An admission request, its objects read as `K` (as the route for that kind reads them).
    pub(crate) fn request<K: kube::Resource + serde::de::DeserializeOwned>(
        kind: (&str, &str, &str),
        operation: &str,
        object: Option<Value>,
        old_object: Option<Value>,
        dry_run: bool,
    ) -> AdmissionRequest<K> {
        let body = review_json(kind, operation, object, old_object, dry_run);
        crate::webhook::decode_review(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    /// An AdmissionReview whose object nests `depth` objects deep (unknown fields are skipped
    /// without recursion; the object's own fields are where depth matters).
    pub(crate) fn deeply_nested_review(depth: usize) -> String {
        let mut review = review_json(
            ("", "v1", "ConfigMap"),
            "CREATE",
            Some(json!({})),
            None,
            false,
        );
        review["request"]["object"] = json!("DEEP");
        review.to_string().replace(
            r#""DEEP""#,
            &format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","data":{}1{}}}"#,
                r#"{"a":"#.repeat(depth),
                "}".repeat(depth)
            ),
        )
    }

    #[test]
    fn responses_echo_the_uid_in_admission_v1() {
        let req: AdmissionRequest<kube::core::DynamicObject> = request(
            ("core.oam.dev", "v1alpha2", "HealthScope"),
            "CREATE",
            Some(
                json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
                        "metadata": {"name": "s", "namespace": "ns"}, "spec": {}}),
            ),
            None,
            false,
        );
        let review = serde_json::to_value(deny(&req, "no").into_review()).unwrap();
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["kind"], "AdmissionReview");
        assert_eq!(
            review["response"]["uid"],
            "6f1c2c43-1234-4bcd-9a00-000000000001"
        );
        assert_eq!(review["response"]["allowed"], false);
        assert_eq!(review["response"]["status"]["message"], "no");
    }

    #[test]
    fn recording_snapshot_remembers_misses_and_uses_the_overlay() {
        let base = Overlay::default();
        let mut overlay = Overlay::default();
        overlay
            .health_scopes
            .insert(("ns".into(), "gone".into()), None);
        let recording = Recording::new(&base, &overlay);
        assert!(recording.health_scope("ns", "gone").is_none());
        assert!(recording.component("ns", "web").is_none());
        assert_eq!(
            recording.misses(),
            BTreeSet::from([(OamKind::Component, "ns".to_string(), "web".to_string())])
        );
    }
}
