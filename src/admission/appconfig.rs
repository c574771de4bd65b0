//! ApplicationConfiguration admission: reject malformed HealthScope references and warn about
//! what will not be wired yet. It writes nothing: the controller wires the scopes from the
//! ApplicationConfiguration the API server stored (see `controller::wiring`), so a forged or
//! later-refused review changes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{InNamespace, Snapshot, allow, deny, object_name, with_warnings, wrong_kind};
use crate::api::{ApplicationConfiguration, oam};
use crate::membership::{desired_memberships, referenced_scopes};

/// What the ApplicationConfiguration routes decode: the metadata, and the spec and status as the
/// raw JSON the review carried. They are typed in one pass when the decision reads them, so an
/// object whose spec does not parse is denied naming the problem instead of failing the whole
/// review, and no generic JSON tree is built on the way.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AppConfigObject {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<Box<RawValue>>,
    #[serde(default)]
    status: Option<Box<RawValue>>,
}

impl AppConfigObject {
    fn parse(&self) -> Result<ApplicationConfiguration, String> {
        let spec = self.spec.as_ref().ok_or("missing field `spec`")?;
        let spec = serde_json::from_str(spec.get()).map_err(|e| format!("spec: {e}"))?;
        let status = match &self.status {
            Some(status) => {
                serde_json::from_str(status.get()).map_err(|e| format!("status: {e}"))?
            }
            None => None,
        };
        Ok(ApplicationConfiguration {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }
}

/// The kind is the request's (the route serves ApplicationConfigurations only).
impl kube::Resource for AppConfigObject {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "ApplicationConfiguration".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        oam::GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        oam::VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "applicationconfigurations".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Reviews an ApplicationConfiguration CREATE or UPDATE (anything else is allowed).
///
/// - Malformed scope references deny the request, naming each component index and problem. An
///   UPDATE of an object that was already malformed only warns (it may predate the webhook, and
///   the OAM runtime must still finish it).
/// - A reference to a HealthScope that does not exist, or to a Component that does not, is
///   allowed with a warning: the controller wires it once it exists.
/// - An object being deleted (finalizers pending) is never blocked.
pub fn review(
    request: &AdmissionRequest<AppConfigObject>,
    snapshot: &dyn Snapshot,
) -> AdmissionResponse {
    if request.kind.group != oam::GROUP || request.kind.kind != "ApplicationConfiguration" {
        return wrong_kind(request, "core.oam.dev ApplicationConfigurations");
    }
    let Some(namespace) = request.namespace.as_deref().filter(|ns| !ns.is_empty()) else {
        return deny(request, "the request has no namespace");
    };
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return allow(request);
    }
    let Some(object) = &request.object else {
        return deny(request, "the request carries no object");
    };
    let app = match object.parse() {
        Ok(app) => app,
        Err(e) => {
            return deny(
                request,
                format!(
                    "ApplicationConfiguration {} is malformed: {e}",
                    object_name(request)
                ),
            );
        }
    };
    if app.metadata.deletion_timestamp.is_some() {
        return allow(request);
    }
    let lookup = InNamespace {
        snapshot,
        namespace,
    };
    let desired = desired_memberships(&app, &lookup);
    // An object that was already malformed when stored (before the webhook, or while it was
    // down) is never blocked: its writers include the OAM runtime, whose finalizer and
    // re-encoded spec must go through. Only a clean object that a write would make malformed
    // is rejected.
    let was_malformed = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(old)) => old
            .parse()
            .ok()
            .is_some_and(|old| !desired_memberships(&old, &lookup).problems.is_empty()),
        _ => false,
    };
    if !desired.problems.is_empty() && !was_malformed {
        return deny(
            request,
            format!(
                "ApplicationConfiguration {} has malformed scope references: {}",
                object_name(request),
                desired.problems.join("; ")
            ),
        );
    }
    let mut warnings: Vec<String> = desired
        .problems
        .iter()
        .map(|p| format!("ignored malformed scope reference: {p}"))
        .collect();
    warnings.extend(desired.unresolved.iter().cloned());
    for scope in referenced_scopes(&app) {
        if snapshot.health_scope(namespace, &scope).is_none() {
            warnings.push(format!(
                "HealthScope {namespace}/{scope} does not exist; its workload refs are added \
                 once it is created"
            ));
        }
    }
    with_warnings(allow(request), warnings)
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

    #[test]
    fn well_formed_creates_updates_and_deletes_are_allowed_without_a_patch() {
        let snap = snapshot(&["a", "b"]);
        let app = appconfig(json!([refs("a"), refs("b")]));
        for (operation, object, old) in [
            ("CREATE", Some(app.clone()), None),
            (
                "UPDATE",
                Some(appconfig(json!([refs("a")]))),
                Some(app.clone()),
            ),
            ("DELETE", None, Some(app.clone())),
            ("DELETE", None, None),
        ] {
            let response = review(&request(AC, operation, object, old, false), &snap);
            assert!(response.allowed, "{operation}: {:?}", response.result);
            assert_eq!(response.warnings, None, "{operation}");
            assert!(response.patch.is_none(), "{operation}");
        }
    }

    #[test]
    fn missing_scope_and_component_are_allowed_with_warnings() {
        let snap = snapshot(&["a"]);
        let req = request(
            AC,
            "CREATE",
            Some(appconfig(json!([refs("a"), refs("later")]))),
            None,
            false,
        );
        let response = review(&req, &snap);
        assert!(response.allowed);
        let warnings = response.warnings.unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("HealthScope ns/later does not exist"),
            "{warnings:?}"
        );

        let mut app = appconfig(json!([refs("a")]));
        app["spec"]["components"][0]["componentName"] = json!("ghost");
        let response = review(&request(AC, "CREATE", Some(app), None, false), &snap);
        assert!(response.allowed);
        assert!(response.warnings.unwrap()[0].contains("\"ghost\" not found"));
    }

    #[test]
    fn malformed_refs_are_denied_naming_component_and_problem_dry_run_or_not() {
        let snap = snapshot(&["a"]);
        let bad =
            json!([refs("a"), {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope"}]);
        for dry_run in [false, true] {
            let response = review(
                &request(AC, "CREATE", Some(appconfig(bad.clone())), None, dry_run),
                &snap,
            );
            assert!(!response.allowed);
            let message = &response.result.message;
            assert!(
                message.contains("ApplicationConfiguration ns/shop"),
                "{message}"
            );
            assert!(
                message.contains("spec.components[0].scopes[1] names a HealthScope without a name"),
                "{message}"
            );
        }
    }

    #[test]
    fn update_of_a_malformed_object_warns_and_of_a_clean_one_rejects() {
        let snap = snapshot(&["a"]);
        let no_name = json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope"});
        let old = appconfig(json!([refs("a"), no_name.clone()]));
        let mut touched = old.clone();
        touched["metadata"]["annotations"] = json!({"x": "1"});
        let response = review(
            &request(AC, "UPDATE", Some(touched), Some(old.clone()), false),
            &snap,
        );
        assert!(response.allowed, "{:?}", response.result);
        assert!(response.warnings.unwrap()[0].starts_with("ignored malformed scope reference"));

        // The OAM runtime re-encodes a flat reference as an empty scopeRef: still let through.
        let reencoded =
            appconfig(json!([refs("a"), {"scopeRef": {"apiVersion": "", "kind": "", "name": ""}}]));
        let response = review(
            &request(AC, "UPDATE", Some(reencoded), Some(old), false),
            &snap,
        );
        assert!(response.allowed, "{:?}", response.result);

        let clean = appconfig(json!([refs("a")]));
        let worse = appconfig(json!([refs("a"), {"kind": "HealthScope"}]));
        let response = review(
            &request(AC, "UPDATE", Some(worse), Some(clean), false),
            &snap,
        );
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("scopes[1] has no apiVersion")
        );
    }

    #[test]
    fn terminating_appconfig_is_never_blocked() {
        let snap = snapshot(&["a", "b"]);
        let old = appconfig(json!([refs("a"), refs("b")]));
        let mut finalizing = appconfig(json!([refs("a"), {"kind": "HealthScope"}]));
        finalizing["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let response = review(
            &request(AC, "UPDATE", Some(finalizing), Some(old), false),
            &snap,
        );
        assert!(response.allowed);
    }

    #[test]
    fn malformed_requests_are_denied_never_allowed_silently() {
        let snap = snapshot(&[]);
        let no_object = review(&request(AC, "CREATE", None, None, false), &snap);
        assert!(!no_object.allowed);
        assert!(no_object.result.message.contains("no object"));

        let mut garbled = appconfig(json!([]));
        garbled["spec"]["components"] = json!("not a list");
        let garbled = review(&request(AC, "CREATE", Some(garbled), None, false), &snap);
        assert!(!garbled.allowed);
        assert!(garbled.result.message.contains("malformed"));

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
        assert!(!wrong.allowed);
        assert!(wrong.result.message.contains("Component"));
    }
}
