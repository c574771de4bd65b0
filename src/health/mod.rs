//! Pure: per-kind health rules and aggregation into a scope's status. No I/O.
//!
//! Every rule takes the objects it judges (from the watch caches) and returns a
//! [`WorkloadHealth`]. [`evaluate`] picks the rule for a workload reference, reading objects
//! through a [`WorkloadLookup`] the caller implements over its caches; [`scope_status`] folds the
//! per-workload results and the HTTP probe outcomes into a [`HealthScopeStatus`].
//!
//! The rules follow kstatus (observedGeneration gate, rollout counts) and map its states onto
//! the OAM ones: Current → healthy, InProgress → unhealthy "progressing: …", Failed → unhealthy
//! "failed: …". docs/health-rules.md lists every rule with the test case that proves it.

mod aggregate;
mod apps;
mod generic;
mod oam;
#[cfg(test)]
mod rule_examples;
pub mod rules;
mod service;

use std::sync::Arc;

use crate::api::cached::{CachedDaemonSet, CachedDeployment, CachedReplicaSet, CachedStatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;

use crate::api::{
    ContainerizedWorkload, Health, HealthStatus, WorkloadHealthCondition, WorkloadReference,
};

pub use aggregate::{
    ProbeResult, READY_CONDITION, ScopeStatusInput, aggregate, healthy_of_total, scope_status,
};
pub use apps::{daemonset, deployment, replicaset, statefulset};
pub use generic::generic;
pub use oam::containerized_workload;
pub use rules::{CompiledRule, RuleSet};
pub use service::{SERVICE_NAME_LABEL, belongs_to, ready_endpoints, service};

/// The verdict on one workload: its health and a short reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadHealth {
    pub health: Health,
    /// Short and human, e.g. "Ready: 2/3 replicas" or "progressing: 1 of 3 updated".
    pub diagnosis: String,
    /// For kinds judged without a built-in rule: the workload's `.status` as JSON.
    pub workload_status: Option<String>,
}

impl WorkloadHealth {
    pub fn healthy(diagnosis: impl Into<String>) -> Self {
        Self::new(Health::Healthy, diagnosis)
    }

    pub fn unhealthy(diagnosis: impl Into<String>) -> Self {
        Self::new(Health::Unhealthy, diagnosis)
    }

    pub fn unknown(diagnosis: impl Into<String>) -> Self {
        Self::new(Health::Unknown, diagnosis)
    }

    fn new(health: Health, diagnosis: impl Into<String>) -> Self {
        Self {
            health,
            diagnosis: diagnosis.into(),
            workload_status: None,
        }
    }

    /// The kstatus InProgress state: not yet what the spec asks for.
    pub fn progressing(what: impl std::fmt::Display) -> Self {
        Self::unhealthy(format!("progressing: {what}"))
    }

    /// The kstatus Failed state: will not get there without a change.
    pub fn failed(what: impl std::fmt::Display) -> Self {
        Self::unhealthy(format!("failed: {what}"))
    }
}

/// A referenced workload that does not exist (never created, or deleted while still referenced).
/// Unhealthy: the scope promised a workload that is not there.
pub fn not_found(reference: &WorkloadReference) -> WorkloadHealth {
    WorkloadHealth::unhealthy(format!("not found: {reference}"))
}

/// Rules every kind shares, checked before the kind's own: an object being deleted is on its way
/// out (kstatus Terminating), and a spec generation the controller has not yet seen means the
/// status describes an older spec (kstatus InProgress). `observed` is `status.observedGeneration`;
/// `require_observed` says whether a missing one counts as not yet observed (true for the apps
/// kinds, whose controllers always set it; false for arbitrary kinds, as in kstatus).
fn lifecycle(
    meta: &ObjectMeta,
    observed: Option<i64>,
    require_observed: bool,
) -> Option<WorkloadHealth> {
    if meta.deletion_timestamp.is_some() {
        return Some(WorkloadHealth::unhealthy("terminating: deletion requested"));
    }
    let generation = meta.generation?;
    match observed {
        Some(seen) if seen >= generation => None,
        None if !require_observed => None,
        _ => Some(WorkloadHealth::progressing(format!(
            "generation {generation} not yet observed"
        ))),
    }
}

/// What the caller's caches hold. Every object is read from the reference's namespace.
pub trait WorkloadLookup {
    fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<CachedDeployment>>;
    fn statefulset(&self, namespace: &str, name: &str) -> Option<Arc<CachedStatefulSet>>;
    fn daemonset(&self, namespace: &str, name: &str) -> Option<Arc<CachedDaemonSet>>;
    fn replicaset(&self, namespace: &str, name: &str) -> Option<Arc<CachedReplicaSet>>;
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// The EndpointSlices labelled `kubernetes.io/service-name: <service>`.
    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>>;
    fn containerized_workload(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<ContainerizedWorkload>>;
    /// Any other kind. `Err` says why it cannot be read (e.g. the kind is not served), which
    /// makes the workload unknown rather than missing.
    fn dynamic(
        &self,
        namespace: &str,
        reference: &WorkloadReference,
    ) -> Result<Option<Arc<DynamicObject>>, String>;
    /// The operator's [`rules`] rule for the reference's apiVersion and kind, used in place of
    /// the built-in one. None by default.
    fn rule(&self, _reference: &WorkloadReference) -> Option<Arc<CompiledRule>> {
        None
    }
}

/// The built-in rule families, chosen by API group and kind (any version).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Service,
    ContainerizedWorkload,
    Generic,
}

/// Whether a built-in rule (with a cache of its kind's own) judges this reference's kind; other
/// kinds are judged generically, from a watch started on demand.
pub fn has_builtin_rule(reference: &WorkloadReference) -> bool {
    rule_for(reference) != Rule::Generic
}

fn rule_for(reference: &WorkloadReference) -> Rule {
    match (reference.group(), reference.kind.as_str()) {
        ("apps", "Deployment") => Rule::Deployment,
        ("apps", "StatefulSet") => Rule::StatefulSet,
        ("apps", "DaemonSet") => Rule::DaemonSet,
        ("apps", "ReplicaSet") => Rule::ReplicaSet,
        ("", "Service") => Rule::Service,
        (crate::api::oam::GROUP, "ContainerizedWorkload") => Rule::ContainerizedWorkload,
        _ => Rule::Generic,
    }
}

/// Judges one referenced workload from the caches: the rule for its kind, or [`not_found`].
/// The result carries the component name (label `app.oam.dev/component`) and the object's uid.
pub fn evaluate(
    namespace: &str,
    reference: &WorkloadReference,
    lookup: &dyn WorkloadLookup,
) -> WorkloadHealthCondition {
    let name = reference.name.as_str();
    let rule = lookup.rule(reference);
    let rule = rule.as_deref();
    let judged = match rule_for(reference) {
        Rule::Deployment => judge(lookup.deployment(namespace, name), |o| {
            let verdict = by_rule(rule, reference, o, &o.metadata, Some("Deployment"));
            (verdict.unwrap_or_else(|| deployment(o)), &o.metadata)
        }),
        Rule::StatefulSet => judge(lookup.statefulset(namespace, name), |o| {
            let verdict = by_rule(rule, reference, o, &o.metadata, Some("StatefulSet"));
            (verdict.unwrap_or_else(|| statefulset(o)), &o.metadata)
        }),
        Rule::DaemonSet => judge(lookup.daemonset(namespace, name), |o| {
            let verdict = by_rule(rule, reference, o, &o.metadata, Some("DaemonSet"));
            (verdict.unwrap_or_else(|| daemonset(o)), &o.metadata)
        }),
        Rule::ReplicaSet => judge(lookup.replicaset(namespace, name), |o| {
            let verdict = by_rule(rule, reference, o, &o.metadata, Some("ReplicaSet"));
            (verdict.unwrap_or_else(|| replicaset(o)), &o.metadata)
        }),
        Rule::Service => judge(lookup.service(namespace, name), |o| {
            let verdict =
                by_rule(rule, reference, o, &o.metadata, Some("Service")).unwrap_or_else(|| {
                    let slices = lookup.endpoint_slices(namespace, name);
                    service(o, &slices)
                });
            (verdict, &o.metadata)
        }),
        Rule::ContainerizedWorkload => judge(lookup.containerized_workload(namespace, name), |o| {
            let verdict = by_rule(
                rule,
                reference,
                o,
                &o.metadata,
                Some("ContainerizedWorkload"),
            );
            (
                verdict.unwrap_or_else(|| containerized_workload(o, lookup)),
                &o.metadata,
            )
        }),
        Rule::Generic => match lookup.dynamic(namespace, reference) {
            Ok(found) => judge(found, |o| {
                let verdict = by_rule(rule, reference, o, &o.metadata, None);
                (verdict.unwrap_or_else(|| generic(o)), &o.metadata)
            }),
            Err(reason) => Some((
                WorkloadHealth::unknown(format!("cannot read {reference}: {reason}")),
                Identity::default(),
            )),
        },
    };
    let (health, identity) = judged.unwrap_or_else(|| (not_found(reference), Identity::default()));
    let mut target = reference.clone();
    if identity.uid.is_some() {
        target.uid = identity.uid;
    }
    WorkloadHealthCondition {
        component_name: identity.component,
        target_workload: target,
        health_status: HealthStatus::from(health.health),
        diagnosis: health.diagnosis,
        workload_status: health.workload_status,
    }
}

/// The verdict of the operator's rule, when there is one: after the deletion check every kind
/// shares, the rule judges the object as JSON. `replaces` names the built-in rule set aside.
fn by_rule<T: serde::Serialize>(
    rule: Option<&CompiledRule>,
    reference: &WorkloadReference,
    object: &T,
    meta: &ObjectMeta,
    replaces: Option<&str>,
) -> Option<WorkloadHealth> {
    let rule = rule?;
    if let Some(verdict) = lifecycle(meta, None, false) {
        return Some(verdict);
    }
    Some(match serde_json::to_value(object) {
        Ok(mut json) => {
            // Cached objects leave out their type; the rule sees it as the served object has it.
            if let Some(fields) = json.as_object_mut() {
                for (field, value) in [
                    ("apiVersion", &reference.api_version),
                    ("kind", &reference.kind),
                ] {
                    fields
                        .entry(field)
                        .or_insert_with(|| serde_json::Value::String(value.clone()));
                }
            }
            rule.judge(&json, replaces)
        }
        Err(error) => WorkloadHealth::unknown(format!(
            "rule {}: the object cannot be read as JSON: {error}",
            rule.name
        )),
    })
}

/// What a status entry records about the object found: its uid and OAM component.
#[derive(Default)]
struct Identity {
    uid: Option<String>,
    component: Option<String>,
}

fn judge<T>(
    object: Option<Arc<T>>,
    rule: impl FnOnce(&T) -> (WorkloadHealth, &ObjectMeta),
) -> Option<(WorkloadHealth, Identity)> {
    let object = object?;
    let (health, meta) = rule(&object);
    let identity = Identity {
        uid: meta.uid.clone(),
        component: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::api::oam::labels::COMPONENT))
            .cloned(),
    };
    Some((health, identity))
}

/// The addresses to send the scope's HTTP probe to for one workload: the ready endpoints of a
/// Service, or of a ContainerizedWorkload's Service children. Other kinds have none.
pub fn probe_addresses(
    namespace: &str,
    reference: &WorkloadReference,
    lookup: &dyn WorkloadLookup,
) -> Vec<std::net::SocketAddr> {
    let service_names: Vec<String> = match rule_for(reference) {
        Rule::Service => vec![reference.name.clone()],
        Rule::ContainerizedWorkload => lookup
            .containerized_workload(namespace, &reference.name)
            .and_then(|cw| cw.status.clone())
            .map(|status| {
                status
                    .resources
                    .into_iter()
                    .filter(|child| child.kind == "Service" && !child.api_version.contains('/'))
                    .map(|child| child.name)
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut addresses = Vec::new();
    for name in service_names {
        if let Some(svc) = lookup.service(namespace, &name) {
            addresses.extend(ready_endpoints(
                &svc,
                &lookup.endpoint_slices(namespace, &name),
            ));
        }
    }
    addresses.sort();
    addresses.dedup();
    addresses
}

#[cfg(test)]
pub(crate) mod testing {
    //! An in-memory [`WorkloadLookup`] for the unit tests.
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct Objects {
        pub deployments: BTreeMap<String, Arc<CachedDeployment>>,
        pub services: BTreeMap<String, Arc<Service>>,
        pub slices: Vec<Arc<EndpointSlice>>,
        pub cws: BTreeMap<String, Arc<ContainerizedWorkload>>,
        /// Objects of other kinds, by group, kind and name (see [`Objects::add_dynamic`]).
        pub dynamic: BTreeMap<(String, String, String), Arc<DynamicObject>>,
        pub dynamic_error: Option<String>,
        pub rules: RuleSet,
    }

    impl Objects {
        /// Holds an object of a kind without a built-in cache, under its apiVersion's group,
        /// its kind and its name (any version of the kind finds it).
        pub fn add_dynamic(&mut self, object: DynamicObject) {
            let types = object.types.clone().unwrap_or_default();
            let key = (
                crate::api::group_of(&types.api_version).to_string(),
                types.kind,
                object.metadata.name.clone().unwrap_or_default(),
            );
            self.dynamic.insert(key, Arc::new(object));
        }
    }

    impl WorkloadLookup for Objects {
        fn deployment(&self, _: &str, name: &str) -> Option<Arc<CachedDeployment>> {
            self.deployments.get(name).cloned()
        }
        fn statefulset(&self, _: &str, _: &str) -> Option<Arc<CachedStatefulSet>> {
            None
        }
        fn daemonset(&self, _: &str, _: &str) -> Option<Arc<CachedDaemonSet>> {
            None
        }
        fn replicaset(&self, _: &str, _: &str) -> Option<Arc<CachedReplicaSet>> {
            None
        }
        fn service(&self, _: &str, name: &str) -> Option<Arc<Service>> {
            self.services.get(name).cloned()
        }
        fn endpoint_slices(&self, _: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
            self.slices
                .iter()
                .filter(|s| belongs_to(s, service))
                .cloned()
                .collect()
        }
        fn containerized_workload(
            &self,
            _: &str,
            name: &str,
        ) -> Option<Arc<ContainerizedWorkload>> {
            self.cws.get(name).cloned()
        }
        fn rule(&self, reference: &WorkloadReference) -> Option<Arc<CompiledRule>> {
            self.rules
                .for_kind(&reference.api_version, &reference.kind)
                .cloned()
        }
        fn dynamic(
            &self,
            _: &str,
            reference: &WorkloadReference,
        ) -> Result<Option<Arc<DynamicObject>>, String> {
            match &self.dynamic_error {
                Some(e) => Err(e.clone()),
                None => Ok(self
                    .dynamic
                    .get(&(
                        reference.group().to_string(),
                        reference.kind.clone(),
                        reference.name.clone(),
                    ))
                    .cloned()),
            }
        }
    }

    /// One row of a rules table in docs/health-rules.md: the test case's name, expected health
    /// (or outcome) and expected diagnosis (or reason).
    #[derive(Debug, PartialEq, Eq)]
    pub struct DocRow {
        pub name: String,
        pub health: String,
        pub diagnosis: String,
    }

    impl DocRow {
        pub fn new(
            name: impl Into<String>,
            health: impl std::fmt::Display,
            diagnosis: impl Into<String>,
        ) -> Self {
            Self {
                name: name.into(),
                health: health.to_string(),
                diagnosis: diagnosis.into(),
            }
        }
    }

    /// Builds a typed object from JSON, as the API server would send it.
    pub fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    fn deployment_ready(name: &str) -> CachedDeployment {
        from_json(json!({
            "metadata": {"name": name, "generation": 1, "uid": "u-1",
                         "labels": {"app.oam.dev/component": "web"}},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                       "readyReplicas": 1, "availableReplicas": 1}
        }))
    }

    #[test]
    fn evaluate_dispatches_by_kind_and_fills_component_and_uid() {
        let mut objects = Objects::default();
        objects
            .deployments
            .insert("web".into(), Arc::new(deployment_ready("web")));
        let reference = WorkloadReference::new("apps/v1", "Deployment", "web");
        let got = evaluate("ns", &reference, &objects);
        assert_eq!(got.health_status, HealthStatus::Healthy);
        assert_eq!(got.component_name.as_deref(), Some("web"));
        assert_eq!(got.target_workload.uid.as_deref(), Some("u-1"));
        assert_eq!(got.diagnosis, "Ready: 1/1 replicas");
    }

    fn rule(target: (&str, &str), healthy: &str, message: &str) -> RuleSet {
        let target = crate::api::RuleTarget {
            api_version: target.0.into(),
            kind: target.1.into(),
        };
        let spec = crate::api::HealthRuleSpec {
            target: target.clone(),
            healthy: healthy.into(),
            unknown: None,
            message: Some(message.into()),
        };
        let compiled = Arc::new(CompiledRule::compile("mine", &spec).unwrap());
        RuleSet::new([(&target, compiled)])
    }

    #[test]
    fn an_operators_rule_comes_before_the_built_in_one_and_says_so() {
        let mut objects = Objects::default();
        objects
            .deployments
            .insert("web".into(), Arc::new(deployment_ready("web")));
        objects.rules = rule(
            ("apps/v1", "Deployment"),
            "object.spec.replicas >= 2",
            "'replicas ' + string(object.spec.replicas)",
        );
        let reference = WorkloadReference::new("apps/v1", "Deployment", "web");
        let got = evaluate("ns", &reference, &objects);
        assert_eq!(got.health_status, HealthStatus::Unhealthy);
        assert_eq!(
            got.diagnosis,
            "rule mine (in place of the built-in Deployment rule): replicas 1"
        );
        // The component and uid are the object's, as with the built-in rule.
        assert_eq!(got.component_name.as_deref(), Some("web"));
        assert_eq!(got.target_workload.uid.as_deref(), Some("u-1"));
        // Another version of the kind is not the rule's target.
        let other = WorkloadReference::new("apps/v1beta2", "Deployment", "web");
        assert_eq!(
            evaluate("ns", &other, &objects).diagnosis,
            "Ready: 1/1 replicas"
        );
        // A missing workload is not found, whatever the rule says.
        let missing = WorkloadReference::new("apps/v1", "Deployment", "gone");
        assert!(
            evaluate("ns", &missing, &objects)
                .diagnosis
                .starts_with("not found")
        );
    }

    #[test]
    fn a_rule_judges_a_kind_without_a_built_in_rule_but_not_one_being_deleted() {
        let mut objects = Objects::default();
        objects.add_dynamic(from_json(
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w"}, "spec": {"size": 3}}),
        ));
        objects.rules = rule(
            ("example.com/v1", "Widget"),
            "object.spec.size == 3",
            "'size ok'",
        );
        let reference = WorkloadReference::new("example.com/v1", "Widget", "w");
        let got = evaluate("ns", &reference, &objects);
        assert_eq!(got.health_status, HealthStatus::Healthy);
        assert_eq!(got.diagnosis, "rule mine: size ok");
        objects.add_dynamic(from_json(
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"size": 3}}),
        ));
        let got = evaluate("ns", &reference, &objects);
        assert_eq!(got.health_status, HealthStatus::Unhealthy);
        assert_eq!(got.diagnosis, "terminating: deletion requested");
    }

    struct Case {
        name: &'static str,
        reference: WorkloadReference,
        objects: Objects,
        health: Health,
        diagnosis: &'static str,
    }

    fn evaluate_cases() -> Vec<Case> {
        let mut with_deployment = Objects::default();
        with_deployment
            .deployments
            .insert("web".into(), Arc::new(deployment_ready("web")));
        let mut with_widget = Objects::default();
        with_widget.add_dynamic(from_json(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "w"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})));
        vec![
            Case {
                name: "Deployment found: judged by its rule",
                reference: WorkloadReference::new("apps/v1", "Deployment", "web"),
                objects: with_deployment,
                health: Health::Healthy,
                diagnosis: "Ready: 1/1 replicas",
            },
            Case {
                name: "other kind found: judged by its conditions",
                reference: WorkloadReference::new("example.com/v1", "Widget", "w"),
                objects: with_widget,
                health: Health::Healthy,
                diagnosis: "Ready=True",
            },
            Case {
                name: "referenced workload not found",
                reference: WorkloadReference::new("apps/v1", "Deployment", "gone"),
                objects: Objects::default(),
                health: Health::Unhealthy,
                diagnosis: "not found: apps/v1/Deployment gone",
            },
            Case {
                name: "kind that cannot be read",
                reference: WorkloadReference::new("example.com/v1", "Widget", "w"),
                objects: Objects {
                    dynamic_error: Some("kind not served".into()),
                    ..Default::default()
                },
                health: Health::Unknown,
                diagnosis: "cannot read example.com/v1/Widget w: kind not served",
            },
        ]
    }

    #[test]
    fn evaluate_rules() {
        for case in evaluate_cases() {
            let got = evaluate("ns", &case.reference, &case.objects);
            assert_eq!(
                (Health::from(got.health_status), got.diagnosis.as_str()),
                (case.health, case.diagnosis),
                "case {:?}",
                case.name
            );
        }
    }

    /// Every rules table in docs/health-rules.md, in the order the document lists them.
    fn doc_tables() -> Vec<(&'static str, Vec<DocRow>)> {
        let mut tables = Vec::new();
        tables.extend(apps::tests::doc_tables());
        tables.extend(service::tests::doc_tables());
        tables.extend(oam::tests::doc_tables());
        tables.extend(generic::tests::doc_tables());
        let rows = evaluate_cases()
            .into_iter()
            .map(|c| DocRow::new(c.name, c.health, c.diagnosis))
            .collect();
        tables.push(("Missing and unreadable workloads", rows));
        tables.extend(aggregate::tests::doc_tables());
        tables.extend(crate::prober::tests::doc_tables());
        tables
    }

    /// The rows of the first table under `### <section>`: name, health and diagnosis cells,
    /// with the backticks around code removed.
    fn doc_table(doc: &str, section: &str) -> Option<Vec<DocRow>> {
        let heading = format!("### {section}");
        let mut lines = doc.lines().skip_while(|l| l.trim() != heading).skip(1);
        let rows = lines
            .by_ref()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2) // header and separator
            .map(|l| {
                let cells: Vec<&str> = l
                    .trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().trim_matches('`'))
                    .collect();
                DocRow::new(
                    cells.first().copied().unwrap_or_default(),
                    cells.get(1).copied().unwrap_or_default(),
                    cells.get(2).copied().unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>();
        (!rows.is_empty()).then_some(rows)
    }

    /// A rules table as the document writes it.
    fn markdown(rows: &[DocRow]) -> String {
        let mut out = String::from("| case | health | diagnosis |\n|---|---|---|\n");
        for row in rows {
            out.push_str(&format!(
                "| {} | {} | `{}` |\n",
                row.name, row.health, row.diagnosis
            ));
        }
        out
    }

    #[test]
    fn docs_list_every_rule_case_in_order() {
        let doc = include_str!("../../docs/health-rules.md");
        let mut differing = String::new();
        let mut at = 0;
        for (section, rows) in doc_tables() {
            if doc_table(doc, section).unwrap_or_default() != rows {
                differing.push_str(&format!("### {section}\n\n{}\n", markdown(&rows)));
            }
            let position = doc.find(&format!("### {section}\n")).unwrap_or_default();
            assert!(
                position >= at,
                "table {section:?} is out of order in docs/health-rules.md"
            );
            at = position;
        }
        assert!(
            differing.is_empty(),
            "docs/health-rules.md differs from the tests; they expect:\n\n{differing}"
        );
    }

    #[test]
    fn probe_addresses_of_service_and_containerized_workload() {
        let mut objects = Objects::default();
        let svc: Service = from_json(json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80}], "selector": {"app": "web"}}
        }));
        objects.services.insert("web".into(), Arc::new(svc));
        objects.slices.push(Arc::new(from_json(json!({
            "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.1.0.5"], "targetRef": {"kind": "Pod", "name": "web-a"}},
                          {"addresses": ["10.1.0.6"], "conditions": {"ready": false},
                           "targetRef": {"kind": "Pod", "name": "web-b"}}]
        }))));
        let cw: ContainerizedWorkload = from_json(json!({
            "metadata": {"name": "app"}, "spec": {},
            "status": {"resources": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                {"apiVersion": "v1", "kind": "Service", "name": "web"}]}
        }));
        objects.cws.insert("app".into(), Arc::new(cw));
        let want: Vec<std::net::SocketAddr> = vec!["10.1.0.5:8080".parse().unwrap()];
        let svc_ref = WorkloadReference::new("v1", "Service", "web");
        assert_eq!(probe_addresses("ns", &svc_ref, &objects), want);
        let cw_ref =
            WorkloadReference::new("core.oam.dev/v1alpha2", "ContainerizedWorkload", "app");
        assert_eq!(probe_addresses("ns", &cw_ref, &objects), want);
        let d_ref = WorkloadReference::new("apps/v1", "Deployment", "web");
        assert!(probe_addresses("ns", &d_ref, &objects).is_empty());
    }
}
