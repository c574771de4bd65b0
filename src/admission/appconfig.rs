//! ApplicationConfiguration admission: reject malformed HealthScope references; describe the
//! `spec.workloadRefs` server-side applies that wire the AppConfig's workloads into its scopes.
//!
//! The applies are described, not done, so the decision stays pure; [`super::edge`] performs
//! them unless the request is a dry run.

use std::collections::{BTreeMap, BTreeSet};

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::{InNamespace, Snapshot, allow, deny, object_name, with_warnings, wrong_kind};
use crate::api::{ApplicationConfiguration, WorkloadReference, oam};
use crate::membership::{desired_memberships, field_manager, referenced_scopes, refs_by_scope};

/// The server-side applies one admission asks for: under `field_manager`, per scope, exactly the
/// refs this ApplicationConfiguration owns afterwards. An empty list gives up every ref the
/// manager owned in that scope, which is how a dropped scope or a deleted AppConfig is unwired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeWrites {
    pub namespace: String,
    pub appconfig: String,
    pub field_manager: String,
    pub applies: BTreeMap<String, Vec<WorkloadReference>>,
}

/// The decision on one ApplicationConfiguration request.
#[derive(Clone, Debug)]
pub struct AppConfigReview {
    pub response: AdmissionResponse,
    /// The writes to do when the response allows; `None` on dry run, denial or nothing to do.
    pub writes: Option<ScopeWrites>,
}

impl AppConfigReview {
    fn only(response: AdmissionResponse) -> Self {
        Self {
            response,
            writes: None,
        }
    }
}

fn parse(object: &DynamicObject) -> Result<ApplicationConfiguration, String> {
    object.clone().try_parse().map_err(|e| e.to_string())
}

/// Reviews an ApplicationConfiguration CREATE, UPDATE or DELETE.
///
/// - Malformed scope references deny the request, naming each component index and problem. An
///   UPDATE of an object that was already malformed only warns (it may predate the webhook, and
///   the OAM runtime must still finish it).
/// - A reference to a HealthScope that does not exist is allowed with a warning and no write
///   (a server-side apply would create the scope).
/// - On UPDATE, scopes the old object referenced and the new one does not get an empty list.
/// - On DELETE every scope it referenced gets an empty list; a DELETE is never denied. An
///   UPDATE of an object being deleted (finalizers pending) is treated the same way.
pub fn review(
    request: &AdmissionRequest<DynamicObject>,
    snapshot: &dyn Snapshot,
) -> AppConfigReview {
    if request.kind.group != oam::GROUP || request.kind.kind != "ApplicationConfiguration" {
        return AppConfigReview::only(wrong_kind(
            request,
            "core.oam.dev ApplicationConfigurations",
        ));
    }
    let Some(namespace) = request.namespace.as_deref().filter(|ns| !ns.is_empty()) else {
        return AppConfigReview::only(deny(request, "the request has no namespace"));
    };
    let lookup = InNamespace {
        snapshot,
        namespace,
    };
    let mut warnings = Vec::new();
    // Scopes whose refs this AppConfig should own, and scopes it should give up.
    let (wanted, dropped): (BTreeMap<String, Vec<WorkloadReference>>, BTreeSet<String>) =
        match request.operation {
            Operation::Create | Operation::Update => {
                let Some(object) = &request.object else {
                    return AppConfigReview::only(deny(request, "the request carries no object"));
                };
                let app = match parse(object) {
                    Ok(app) => app,
                    Err(e) => {
                        return AppConfigReview::only(deny(
                            request,
                            format!(
                                "ApplicationConfiguration {} is malformed: {e}",
                                object_name(request)
                            ),
                        ));
                    }
                };
                let old = match (&request.operation, &request.old_object) {
                    (Operation::Update, Some(old)) => parse(old).ok(),
                    _ => None,
                };
                let old_scopes = old.as_ref().map(referenced_scopes).unwrap_or_default();
                // Being deleted (finalizers pending): unwire, and never block the finalizers.
                if app.metadata.deletion_timestamp.is_some() {
                    let mut dropped = referenced_scopes(&app);
                    dropped.extend(old_scopes);
                    (BTreeMap::new(), dropped)
                } else {
                    let desired = desired_memberships(&app, &lookup);
                    // An object that was already malformed when stored (before the webhook,
                    // or while it was down) is never blocked: its writers include the OAM
                    // runtime, whose finalizer and re-encoded spec must go through. Only a clean
                    // object that a write would make malformed is rejected.
                    let was_malformed = old
                        .as_ref()
                        .is_some_and(|old| !desired_memberships(old, &lookup).problems.is_empty());
                    if !desired.problems.is_empty() && !was_malformed {
                        return AppConfigReview::only(deny(
                            request,
                            format!(
                                "ApplicationConfiguration {} has malformed scope references: {}",
                                object_name(request),
                                desired.problems.join("; ")
                            ),
                        ));
                    }
                    warnings.extend(
                        desired
                            .problems
                            .iter()
                            .map(|p| format!("ignored malformed scope reference: {p}")),
                    );
                    warnings.extend(desired.unresolved.iter().cloned());
                    let mut wanted = refs_by_scope(&desired.members);
                    for scope in referenced_scopes(&app) {
                        wanted.entry(scope).or_default();
                    }
                    let dropped = old_scopes
                        .into_iter()
                        .filter(|s| !wanted.contains_key(s))
                        .collect();
                    (wanted, dropped)
                }
            }
            Operation::Delete => {
                let old = match &request.old_object {
                    Some(old) => parse(old).ok(),
                    None => lookup_app(snapshot, namespace, &request.name),
                };
                let Some(old) = old else {
                    let warning = format!(
                        "healthscope could not read ApplicationConfiguration {}; its workload \
                         refs are removed by the controller",
                        object_name(request)
                    );
                    return AppConfigReview::only(with_warnings(allow(request), vec![warning]));
                };
                (BTreeMap::new(), referenced_scopes(&old))
            }
            Operation::Connect => return AppConfigReview::only(allow(request)),
        };

    let mut applies = BTreeMap::new();
    for (scope, refs) in wanted {
        if snapshot.health_scope(namespace, &scope).is_some() {
            applies.insert(scope, refs);
        } else {
            warnings.push(format!(
                "HealthScope {namespace}/{scope} does not exist; its workload refs are added \
                 once it is created"
            ));
        }
    }
    for scope in dropped {
        // A scope that no longer exists holds no refs to remove.
        if snapshot.health_scope(namespace, &scope).is_some() {
            applies.insert(scope, Vec::new());
        }
    }
    let response = with_warnings(allow(request), warnings);
    let writes = (!request.dry_run && !applies.is_empty()).then(|| ScopeWrites {
        namespace: namespace.to_string(),
        appconfig: request.name.clone(),
        field_manager: field_manager(&request.name),
        applies,
    });
    AppConfigReview { response, writes }
}

fn lookup_app(
    snapshot: &dyn Snapshot,
    namespace: &str,
    name: &str,
) -> Option<ApplicationConfiguration> {
    snapshot
        .app_configuration(namespace, name)
        .map(|a| (*a).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Overlay;
    use crate::admission::tests::request;
    use crate::api::{Component, ComponentSpec, HealthScope, HealthScopeSpec};
    use serde_json::{Value, json};

    const AC: (&str, &str, &str) = ("core.oam.dev", "v1alpha2", "ApplicationConfiguration");

    fn snapshot(scopes: &[&str]) -> Overlay {
        let mut overlay = Overlay::default();
        let mut component = Component::new(
            "web",
            ComponentSpec {
                workload: json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                parameters: vec![],
            },
        );
        component.metadata.namespace = Some("ns".into());
        overlay.add(component);
        for name in scopes {
            let mut scope = HealthScope::new(name, HealthScopeSpec::default());
            scope.metadata.namespace = Some("ns".into());
            overlay.add(scope);
        }
        overlay
    }

    fn appconfig(scopes: Value) -> Value {
        json!({
            "apiVersion": "core.oam.dev/v1alpha2", "kind": "ApplicationConfiguration",
            "metadata": {"name": "shop", "namespace": "ns"},
            "spec": {"components": [{"componentName": "web", "scopes": scopes}]},
        })
    }

    fn refs(scope: &str) -> Value {
        json!({"scopeRef": {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope", "name": scope}})
    }

    fn deployment(name: &str) -> WorkloadReference {
        WorkloadReference::new("apps/v1", "Deployment", name)
    }

    #[test]
    fn create_applies_refs_to_each_named_scope() {
        let snap = snapshot(&["a", "b"]);
        let req = request(
            AC,
            "CREATE",
            Some(appconfig(json!([refs("a"), refs("b")]))),
            None,
            false,
        );
        let review = review(&req, &snap);
        assert!(review.response.allowed);
        assert_eq!(review.response.warnings, None);
        let writes = review.writes.unwrap();
        assert_eq!(writes.namespace, "ns");
        assert_eq!(writes.field_manager, "healthscope/appconfig/shop");
        assert_eq!(
            writes.applies,
            BTreeMap::from([
                ("a".to_string(), vec![deployment("web")]),
                ("b".to_string(), vec![deployment("web")]),
            ])
        );
    }

    #[test]
    fn update_gives_up_dropped_scopes_with_empty_lists() {
        let snap = snapshot(&["a", "b"]);
        let old = appconfig(json!([refs("a"), refs("b")]));
        let new = appconfig(json!([refs("a")]));
        let review = review(&request(AC, "UPDATE", Some(new), Some(old), false), &snap);
        assert_eq!(
            review.writes.unwrap().applies,
            BTreeMap::from([
                ("a".to_string(), vec![deployment("web")]),
                ("b".to_string(), vec![]),
            ])
        );
    }

    #[test]
    fn delete_gives_up_every_scope() {
        let snap = snapshot(&["a", "b"]);
        let old = appconfig(json!([refs("a"), refs("b")]));
        let review = review(&request(AC, "DELETE", None, Some(old), false), &snap);
        assert!(review.response.allowed);
        assert_eq!(
            review.writes.unwrap().applies,
            BTreeMap::from([("a".to_string(), vec![]), ("b".to_string(), vec![])])
        );
    }

    #[test]
    fn delete_without_old_object_uses_the_snapshot_or_warns() {
        let mut snap = snapshot(&["a"]);
        let review_unknown = review(&request(AC, "DELETE", None, None, false), &snap);
        assert!(review_unknown.response.allowed);
        assert!(review_unknown.writes.is_none());
        assert_eq!(review_unknown.response.warnings.map(|w| w.len()), Some(1));

        let app: ApplicationConfiguration =
            serde_json::from_value(appconfig(json!([refs("a")]))).unwrap();
        snap.add(app);
        let mut req = request(AC, "DELETE", None, None, false);
        req.name = "shop".into();
        let review = review(&req, &snap);
        assert_eq!(
            review.writes.unwrap().applies,
            BTreeMap::from([("a".to_string(), vec![])])
        );
    }

    #[test]
    fn dry_run_writes_nothing_but_still_decides() {
        let snap = snapshot(&["a"]);
        let req = request(
            AC,
            "CREATE",
            Some(appconfig(json!([refs("a")]))),
            None,
            true,
        );
        let review = review(&req, &snap);
        assert!(review.response.allowed);
        assert!(review.writes.is_none());

        let bad = request(
            AC,
            "CREATE",
            Some(appconfig(json!([{"name": "x"}]))),
            None,
            true,
        );
        assert!(!super::review(&bad, &snap).response.allowed);
    }

    #[test]
    fn missing_scope_is_allowed_with_a_warning_and_not_written() {
        let snap = snapshot(&["a"]);
        let req = request(
            AC,
            "CREATE",
            Some(appconfig(json!([refs("a"), refs("later")]))),
            None,
            false,
        );
        let review = review(&req, &snap);
        assert!(review.response.allowed);
        let warnings = review.response.warnings.unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("HealthScope ns/later does not exist"),
            "{warnings:?}"
        );
        assert_eq!(
            review.writes.unwrap().applies.keys().collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn malformed_refs_are_denied_naming_component_and_problem() {
        let snap = snapshot(&["a"]);
        let bad =
            json!([refs("a"), {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope"}]);
        let review = review(
            &request(AC, "CREATE", Some(appconfig(bad)), None, false),
            &snap,
        );
        assert!(!review.response.allowed);
        assert!(review.writes.is_none());
        let message = &review.response.result.message;
        assert!(
            message.contains("ApplicationConfiguration ns/shop"),
            "{message}"
        );
        assert!(
            message.contains("spec.components[0].scopes[1] names a HealthScope without a name"),
            "{message}"
        );
    }

    #[test]
    fn update_of_a_malformed_object_warns_and_of_a_clean_one_rejects() {
        let snap = snapshot(&["a"]);
        let no_name = json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope"});
        let old = appconfig(json!([refs("a"), no_name.clone()]));
        let mut touched = old.clone();
        touched["metadata"]["annotations"] = json!({"x": "1"});
        let review = review(
            &request(AC, "UPDATE", Some(touched), Some(old.clone()), false),
            &snap,
        );
        assert!(review.response.allowed, "{:?}", review.response.result);
        assert!(
            review.response.warnings.unwrap()[0].starts_with("ignored malformed scope reference")
        );
        assert_eq!(
            review.writes.unwrap().applies,
            BTreeMap::from([("a".to_string(), vec![deployment("web")])])
        );

        // The OAM runtime re-encodes a flat reference as an empty scopeRef: still let through.
        let reencoded =
            appconfig(json!([refs("a"), {"scopeRef": {"apiVersion": "", "kind": "", "name": ""}}]));
        let review = super::review(
            &request(AC, "UPDATE", Some(reencoded), Some(old), false),
            &snap,
        );
        assert!(review.response.allowed, "{:?}", review.response.result);

        let clean = appconfig(json!([refs("a")]));
        let worse = appconfig(json!([refs("a"), {"kind": "HealthScope"}]));
        let review = super::review(
            &request(AC, "UPDATE", Some(worse), Some(clean), false),
            &snap,
        );
        assert!(!review.response.allowed);
        assert!(
            review
                .response
                .result
                .message
                .contains("scopes[1] has no apiVersion")
        );
    }

    #[test]
    fn terminating_appconfig_is_unwired_and_never_blocked() {
        let snap = snapshot(&["a", "b"]);
        let old = appconfig(json!([refs("a"), refs("b")]));
        let mut finalizing = appconfig(json!([refs("a"), {"kind": "HealthScope"}]));
        finalizing["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let review = review(
            &request(AC, "UPDATE", Some(finalizing), Some(old), false),
            &snap,
        );
        assert!(review.response.allowed);
        assert_eq!(
            review.writes.unwrap().applies,
            BTreeMap::from([("a".to_string(), vec![]), ("b".to_string(), vec![])])
        );
    }

    #[test]
    fn missing_component_warns_and_still_owns_an_empty_list() {
        let snap = snapshot(&["a"]);
        let mut app = appconfig(json!([refs("a")]));
        app["spec"]["components"][0]["componentName"] = json!("ghost");
        let review = review(&request(AC, "CREATE", Some(app), None, false), &snap);
        assert!(review.response.allowed);
        assert!(review.response.warnings.unwrap()[0].contains("\"ghost\" not found"));
        assert_eq!(
            review.writes.unwrap().applies,
            BTreeMap::from([("a".to_string(), vec![])])
        );
    }

    #[test]
    fn malformed_requests_are_denied_never_allowed_silently() {
        let snap = snapshot(&[]);
        let no_object = review(&request(AC, "CREATE", None, None, false), &snap);
        assert!(!no_object.response.allowed);
        assert!(no_object.response.result.message.contains("no object"));

        let mut garbled = appconfig(json!([]));
        garbled["spec"]["components"] = json!("not a list");
        let garbled = review(&request(AC, "CREATE", Some(garbled), None, false), &snap);
        assert!(!garbled.response.allowed);
        assert!(garbled.response.result.message.contains("malformed"));

        let wrong = request(
            ("core.oam.dev", "v1alpha2", "Component"),
            "CREATE",
            Some(
                json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "Component",
                        "metadata": {"name": "c"}, "spec": {"workload": {}}}),
            ),
            None,
            false,
        );
        let wrong = review(&wrong, &snap);
        assert!(!wrong.response.allowed);
        assert!(wrong.response.result.message.contains("Component"));
    }
}
