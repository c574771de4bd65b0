//! HealthScope validation: the probe settings follow [`crate::api::probe`]'s rules, and a
//! scope that breaks them is rejected naming the field and the reason.
//!
//! On UPDATE only changed probe settings are checked, so scopes created before these rules (or
//! before the webhook ran) still take workloadRefs updates.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::{allow, deny, object_name, wrong_kind};
use crate::api::{HealthScope, oam};

/// Admits a HealthScope CREATE or UPDATE when its probe settings are valid (see the module
/// documentation); any other operation is allowed.
pub fn review(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    if request.kind.group != oam::GROUP || request.kind.kind != "HealthScope" {
        return wrong_kind(request, "core.oam.dev HealthScopes");
    }
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return allow(request);
    }
    let Some(object) = &request.object else {
        return deny(request, "the request carries no object");
    };
    let scope: HealthScope = match object.clone().try_parse() {
        Ok(scope) => scope,
        Err(e) => {
            return deny(
                request,
                format!("HealthScope {} is malformed: {e}", object_name(request)),
            );
        }
    };
    if request.operation == Operation::Update {
        let old: Option<HealthScope> = request
            .old_object
            .as_ref()
            .and_then(|o| o.clone().try_parse().ok());
        if old.is_some_and(|old| old.spec.probe_fields() == scope.spec.probe_fields()) {
            return allow(request);
        }
    }
    match scope.spec.probe_settings() {
        Ok(_) => allow(request),
        Err(problems) => deny(
            request,
            format!(
                "HealthScope {} is invalid: {}",
                object_name(request),
                problems.join("; ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::tests::request;
    use serde_json::{Value, json};

    const HS: (&str, &str, &str) = ("core.oam.dev", "v1alpha2", "HealthScope");

    fn scope(spec: Value) -> Value {
        json!({"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
               "metadata": {"name": "s", "namespace": "ns"}, "spec": spec})
    }

    #[test]
    fn review_denies_invalid_scopes_with_the_reason() {
        let req = request(
            HS,
            "CREATE",
            Some(scope(json!({"probe-endpoint": "x"}))),
            None,
            false,
        );
        let response = review(&req);
        assert!(!response.allowed);
        assert!(
            response
                .result
                .message
                .contains("HealthScope ns/s is invalid: probe-endpoint")
        );
        assert_eq!(response.uid, req.uid);

        let req = request(
            HS,
            "CREATE",
            Some(scope(json!({"probe-endpoint": "/h"}))),
            None,
            false,
        );
        assert!(review(&req).allowed);
    }

    #[test]
    fn review_on_update_checks_only_changed_probe_settings() {
        let invalid = scope(json!({"probe-timeout": 10, "probe-interval": 10}));
        let mut with_refs = invalid.clone();
        with_refs["spec"]["workloadRefs"] =
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}]);
        let req = request(HS, "UPDATE", Some(with_refs), Some(invalid.clone()), false);
        assert!(review(&req).allowed, "refs-only update of an old scope");

        let changed = scope(json!({"probe-timeout": 20, "probe-interval": 10}));
        let req = request(HS, "UPDATE", Some(changed), Some(invalid), false);
        assert!(!review(&req).allowed);
    }

    #[test]
    fn review_rejects_malformed_requests_cleanly() {
        let req = request(HS, "CREATE", None, None, false);
        let response = review(&req);
        assert!(!response.allowed);
        assert!(response.result.message.contains("no object"));

        let wrong = request(
            ("apps", "v1", "Deployment"),
            "CREATE",
            Some(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}})),
            None,
            false,
        );
        let response = review(&wrong);
        assert!(!response.allowed);
        assert!(response.result.message.contains("not apps/v1 Deployment"));

        let garbled = scope(json!({"probe-timeout": "soon"}));
        let response = review(&request(HS, "CREATE", Some(garbled), None, false));
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("malformed"),
            "{}",
            response.result.message
        );

        let delete = request(HS, "DELETE", None, Some(scope(json!({}))), false);
        assert!(review(&delete).allowed);
    }
}
