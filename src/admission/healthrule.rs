//! HealthRule validation: every CEL expression must compile (the checks of
//! [`crate::health::rules`]), so a stored rule is one the controller can use. A rule that does
//! not is rejected with the field, the line and column, and the CEL error.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::{allow, deny, wrong_kind};
use crate::api::{HEALTHSCOPE_GROUP, HealthRule};
use crate::health::rules::CompiledRule;

pub fn review(request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    if request.kind.group != HEALTHSCOPE_GROUP || request.kind.kind != "HealthRule" {
        return wrong_kind(request, "healthscope.oam.dev HealthRules");
    }
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return allow(request);
    }
    let Some(object) = &request.object else {
        return deny(request, "the request carries no object");
    };
    let rule: HealthRule = match object.clone().try_parse() {
        Ok(rule) => rule,
        Err(e) => {
            return deny(
                request,
                format!("HealthRule {} is malformed: {e}", request.name),
            );
        }
    };
    let name = rule.metadata.name.as_deref().unwrap_or(&request.name);
    match CompiledRule::compile(name, &rule.spec) {
        Ok(_) => allow(request),
        Err(error) => deny(
            request,
            format!("HealthRule {name} does not compile: {error}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::tests::request;
    use serde_json::{Value, json};

    fn rule(healthy: &str) -> Value {
        json!({"apiVersion": "healthscope.oam.dev/v1alpha1", "kind": "HealthRule",
               "metadata": {"name": "claims"},
               "spec": {"target": {"apiVersion": "db.example.com/v1", "kind": "Claim"},
                        "healthy": healthy}})
    }

    fn review_of(object: Value) -> AdmissionResponse {
        let req = request(
            ("healthscope.oam.dev", "v1alpha1", "HealthRule"),
            "CREATE",
            Some(object),
            None,
            false,
        );
        review(&req)
    }

    #[test]
    fn compiling_rules_are_allowed() {
        assert!(review_of(rule("object.status.ready == true")).allowed);
    }

    #[test]
    fn rules_that_do_not_compile_are_denied_with_the_position() {
        let response = review_of(rule("object.status.ready ="));
        assert!(!response.allowed);
        let message = response.result.message;
        assert!(
            message.starts_with(
                "HealthRule claims does not compile: spec.healthy: line 1, column 21:"
            ),
            "{message}"
        );
        let response = review_of(rule("'ready'"));
        assert!(response.result.message.contains("must give a bool"));
    }

    #[test]
    fn malformed_rules_and_wrong_kinds_are_denied() {
        let response = review_of(json!({"apiVersion": "healthscope.oam.dev/v1alpha1",
            "kind": "HealthRule", "metadata": {"name": "x"}, "spec": {"healthy": 3}}));
        assert!(!response.allowed);
        assert!(response.result.message.contains("malformed"));
        let req = request(
            ("core.oam.dev", "v1alpha2", "HealthScope"),
            "CREATE",
            Some(rule("true")),
            None,
            false,
        );
        assert!(!review(&req).allowed);
    }
}
