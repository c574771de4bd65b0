//! HealthRules against the real control plane: a custom kind (its CRD made by the test, in a
//! group of its own so parallel tests never share a rule's target) judged by an operator's CEL
//! rule, re-judged when the rule changes, back to the built-in judgement when it goes; rules
//! that do not compile are refused by the webhook, or reported in their status.

use std::time::Duration;

use healthscope::api::{
    COMPILED_CONDITION, Health, HealthRule, HealthRuleSpec, HealthScopeSpec, RuleTarget,
    WorkloadReference,
};
use healthscope::controller::{self, ControllerConfig, cache::ExtraKinds};
use healthscope::leader::LeaderState;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::builders::claim_crd;
use crate::support::scopes::{create_scope, health, wait_scope, workload_diagnosis};
use crate::support::webhook::WebhookUnderTest;
use crate::support::{self, TEST_NAMESPACE_LABEL, TestContext};

/// A namespaced kind `Claim` in a group named after the test's namespace, with a status
/// subresource; returns its apiVersion.
async fn claim_kind(ctx: &TestContext) -> String {
    let group = format!("{}.example.com", ctx.namespace);
    support::install_crds(&ctx.client, &[claim_crd(&group)]).await;
    format!("{group}/v1")
}

fn claims(ctx: &TestContext, api_version: &str) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap();
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: "Claim".into(),
        plural: "claims".into(),
    };
    Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource)
}

/// Creates Claim `name` asking for `instances`, then sets its status.
async fn create_claim(
    ctx: &TestContext,
    api_version: &str,
    name: &str,
    instances: i64,
    status: serde_json::Value,
) {
    let api = claims(ctx, api_version);
    let claim: DynamicObject = serde_json::from_value(json!({
        "apiVersion": api_version, "kind": "Claim",
        "metadata": {"name": name}, "spec": {"instances": instances},
    }))
    .unwrap();
    api.create(&PostParams::default(), &claim).await.unwrap();
    set_claim_status(ctx, api_version, name, status).await;
}

async fn set_claim_status(
    ctx: &TestContext,
    api_version: &str,
    name: &str,
    status: serde_json::Value,
) {
    claims(ctx, api_version)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
}

/// A HealthRule for Claims, labelled with the test's namespace (the test webhook only sees
/// rules so labelled).
fn claim_rule(
    ctx: &TestContext,
    name: &str,
    api_version: &str,
    healthy: &str,
    message: Option<&str>,
) -> HealthRule {
    let mut rule = HealthRule::new(
        name,
        HealthRuleSpec {
            target: RuleTarget {
                api_version: api_version.into(),
                kind: "Claim".into(),
            },
            healthy: healthy.into(),
            unknown: None,
            message: message.map(String::from),
        },
    );
    rule.metadata.labels = Some([(TEST_NAMESPACE_LABEL.to_string(), ctx.namespace.clone())].into());
    rule
}

/// Rules are cluster-scoped: each test names its own after its namespace.
fn rule_name(ctx: &TestContext, suffix: &str) -> String {
    format!("{}-{suffix}", ctx.namespace)
}

/// A controller for the test's namespace; `claims_of` (an apiVersion) also allows that group's
/// Claims by `--extra-kinds`, as an operator would without a rule.
fn start_controller(
    ctx: &TestContext,
    claims_of: Option<&str>,
    shutdown: &CancellationToken,
) -> controller::ControllerHandle {
    let extra_kinds = match claims_of.and_then(|v| v.split_once('/')) {
        Some((group, _)) => ExtraKinds::parse(&[format!("Claim.{group}")]).unwrap(),
        None => ExtraKinds::None,
    };
    controller::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: Some(ctx.namespace.clone()),
            min_probe_interval: Duration::from_secs(1),
            extra_kinds,
            ..ControllerConfig::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("the controller starts")
}

/// Waits until the rule's status says whether it compiled; returns the Compiled condition.
async fn compiled_condition(
    rules: &Api<HealthRule>,
    name: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    support::eventually(
        Duration::from_secs(10),
        "the Compiled condition",
        || async {
            let rule = rules.get(name).await.ok()?;
            let status = rule.status?;
            (status.observed_generation == rule.metadata.generation).then_some(())?;
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == COMPILED_CONDITION)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_rule_judges_a_custom_kind_and_follows_the_rule() {
    let ctx = TestContext::new("health-rule-judges").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let api_version = claim_kind(&ctx).await;
    // The built-in judgement reads the Ready condition: True.
    create_claim(
        &ctx,
        &api_version,
        "db",
        2,
        json!({"readyInstances": 1, "conditions": [{"type": "Ready", "status": "True"}]}),
    )
    .await;
    let shutdown = CancellationToken::new();
    let handle = start_controller(&ctx, Some(&api_version), &shutdown);
    let spec = HealthScopeSpec {
        probe_interval: Some(60),
        ..Default::default()
    };
    let claim_ref = WorkloadReference::new(&api_version, "Claim", "db");
    create_scope(&ctx, "data", vec![claim_ref], spec).await;
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(10),
        "judged built-in",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;
    assert!(
        workload_diagnosis(&scope).starts_with("Ready"),
        "{}",
        workload_diagnosis(&scope)
    );

    // A rule for the kind: the scope is judged again at once (probe interval 60 s).
    let rules: Api<HealthRule> = Api::all(ctx.client.clone());
    let name = rule_name(&ctx, "claims");
    let rule = claim_rule(
        &ctx,
        &name,
        &api_version,
        "object.status.readyInstances == object.spec.instances",
        Some(
            "'ready ' + string(object.status.readyInstances) + '/' + string(object.spec.instances)",
        ),
    );
    rules.create(&PostParams::default(), &rule).await.unwrap();
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(5),
        "judged by the rule",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;
    assert_eq!(
        workload_diagnosis(&scope),
        format!("rule {name}: ready 1/2")
    );
    let compiled = compiled_condition(&rules, &name).await;
    assert_eq!(
        (compiled.status.as_str(), compiled.reason.as_str()),
        ("True", "Compiled")
    );

    // The workload changes: judged by the rule within moments.
    set_claim_status(&ctx, &api_version, "db", json!({"readyInstances": 2})).await;
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(2),
        "healthy by the rule",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;
    assert_eq!(
        workload_diagnosis(&scope),
        format!("rule {name}: ready 2/2")
    );

    // The rule changes: the scope is judged again without any workload change.
    let patch = |healthy: &str| Patch::Merge(json!({"spec": {"healthy": healthy}}));
    rules
        .patch(
            &name,
            &PatchParams::default(),
            &patch("object.status.readyInstances > object.spec.instances"),
        )
        .await
        .unwrap();
    wait_scope(
        &ctx,
        "data",
        Duration::from_secs(5),
        "re-judged by the changed rule",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;

    // A rule that fails at run time makes the workload unknown, with the error.
    rules
        .patch(
            &name,
            &PatchParams::default(),
            &patch("object.status.replicas == 1"),
        )
        .await
        .unwrap();
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(5),
        "unknown on a run-time error",
        |s| health(s) == Some(Health::Unknown),
    )
    .await;
    let diagnosis = workload_diagnosis(&scope);
    assert!(
        diagnosis.starts_with(&format!("rule {name}: healthy failed:"))
            && diagnosis.contains("replicas"),
        "{diagnosis}"
    );

    // The rule goes: back to the built-in judgement (the Ready condition, still True).
    rules.delete(&name, &DeleteParams::default()).await.unwrap();
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(5),
        "built-in again",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;
    assert!(
        workload_diagnosis(&scope).starts_with("Ready"),
        "{}",
        workload_diagnosis(&scope)
    );

    shutdown.cancel();
    handle.join().await;
}

/// Without `--extra-kinds`, a HealthRule is what allows its kind to be watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_rule_allows_its_kind_to_be_watched() {
    let ctx = TestContext::new("health-rule-allows").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let api_version = claim_kind(&ctx).await;
    create_claim(&ctx, &api_version, "db", 1, json!({"readyInstances": 1})).await;
    let shutdown = CancellationToken::new();
    let handle = start_controller(&ctx, None, &shutdown);
    let spec = HealthScopeSpec {
        probe_interval: Some(60),
        ..Default::default()
    };
    create_scope(
        &ctx,
        "data",
        vec![WorkloadReference::new(&api_version, "Claim", "db")],
        spec,
    )
    .await;
    let scope = wait_scope(&ctx, "data", Duration::from_secs(10), "evaluated", |s| {
        health(s).is_some()
    })
    .await;
    let diagnosis = workload_diagnosis(&scope);
    assert!(
        diagnosis.contains("not watched") && diagnosis.contains("a HealthRule for it"),
        "{diagnosis}"
    );

    let rules: Api<HealthRule> = Api::all(ctx.client.clone());
    let name = rule_name(&ctx, "claims");
    let rule = claim_rule(
        &ctx,
        &name,
        &api_version,
        "object.status.readyInstances >= 1",
        None,
    );
    rules.create(&PostParams::default(), &rule).await.unwrap();
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(8),
        "watched and judged",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;
    assert_eq!(
        workload_diagnosis(&scope),
        format!("rule {name}: healthy is true")
    );
    // The watch started for the rule delivers changes at once.
    set_claim_status(&ctx, &api_version, "db", json!({"readyInstances": 0})).await;
    wait_scope(
        &ctx,
        "data",
        Duration::from_secs(2),
        "unhealthy within 2 s",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;
    rules.delete(&name, &DeleteParams::default()).await.unwrap();
    shutdown.cancel();
    handle.join().await;
}

/// The webhook refuses a rule that does not compile, with the CEL error and its position, and
/// nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_rule_that_does_not_compile_is_rejected_by_the_webhook() {
    let ctx = TestContext::new("health-rule-webhook").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let rules: Api<HealthRule> = Api::all(ctx.client.clone());
    let pp = PostParams::default();
    let name = rule_name(&ctx, "bad");
    let refused = [
        (
            "object.status.ready ==",
            "spec.healthy: line 1, column 23: Syntax error",
        ),
        (
            "'yes'",
            "spec.healthy: line 1, column 1: gives a string; spec.healthy must give a bool",
        ),
        (
            "self.status.ready",
            "spec.healthy: line 1, column 1: undeclared reference to 'self'",
        ),
    ];
    for (healthy, expected) in refused {
        let rule = claim_rule(&ctx, &name, "db.example.com/v1", healthy, None);
        let error =
            support::eventually(Duration::from_secs(10), "the webhook's answer", || async {
                match rules.create(&pp, &rule).await {
                    Err(kube::Error::Api(e)) if e.message.contains("does not compile") => Some(e),
                    Ok(_) => panic!("{healthy:?} was stored"),
                    Err(_) => None,
                }
            })
            .await;
        assert!(
            error
                .message
                .contains(&format!("HealthRule {name} does not compile: {expected}")),
            "{healthy:?}: {}",
            error.message
        );
        assert!(rules.get_opt(&name).await.unwrap().is_none());
    }
    let mut bad_message = claim_rule(&ctx, &name, "db.example.com/v1", "true", None);
    bad_message.spec.message = Some("object.status.ready > 1".into());
    let error = rules.create(&pp, &bad_message).await.unwrap_err();
    assert!(error.to_string().contains("spec.message"), "{error}");
    let good = claim_rule(
        &ctx,
        &name,
        "db.example.com/v1",
        "object.status.ready == true",
        None,
    );
    rules
        .create(&pp, &good)
        .await
        .expect("a rule that compiles is stored");
    rules.delete(&name, &DeleteParams::default()).await.unwrap();
    webhook.stop().await;
}

/// A rule stored while the webhook did not check it (e.g. failurePolicy Ignore during an
/// outage) is never used: its status says why, and the built-in judgement stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_rule_stored_without_the_webhook_reports_the_compile_error() {
    let ctx = TestContext::new("health-rule-status").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let api_version = claim_kind(&ctx).await;
    create_claim(
        &ctx,
        &api_version,
        "db",
        1,
        json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Provisioning"}]}),
    )
    .await;
    let shutdown = CancellationToken::new();
    let handle = start_controller(&ctx, Some(&api_version), &shutdown);
    let rules: Api<HealthRule> = Api::all(ctx.client.clone());
    let name = rule_name(&ctx, "broken");
    let rule = claim_rule(&ctx, &name, &api_version, "object.status.ready ==", None);
    rules.create(&PostParams::default(), &rule).await.unwrap();
    let compiled = compiled_condition(&rules, &name).await;
    assert_eq!(
        (compiled.status.as_str(), compiled.reason.as_str()),
        ("False", "CompileError")
    );
    assert!(
        compiled
            .message
            .starts_with("spec.healthy: line 1, column 23: Syntax error"),
        "{}",
        compiled.message
    );
    create_scope(
        &ctx,
        "data",
        vec![WorkloadReference::new(&api_version, "Claim", "db")],
        HealthScopeSpec::default(),
    )
    .await;
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(10),
        "judged built-in",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;
    assert!(
        workload_diagnosis(&scope).contains("Provisioning"),
        "{}",
        workload_diagnosis(&scope)
    );

    // `kubectl get healthrules` shows the target and whether the rule compiled.
    let out = tokio::task::block_in_place(|| {
        support::tools::kubectl()
            .args(["get", "healthrule", &name])
            .output()
            .unwrap()
    });
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "KIND", "API", "VERSION", "COMPILED", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        [name.as_str(), "Claim", api_version.as_str(), "False"],
        "{table}"
    );

    rules.delete(&name, &DeleteParams::default()).await.unwrap();
    shutdown.cancel();
    handle.join().await;
}

/// `kubectl explain healthrule` describes every field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_rule_explain_describes_every_field() {
    let ctx = TestContext::new("health-rule-explain").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let explain = |field: &str| {
        let out = support::tools::kubectl()
            .args(["explain", field])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let expected = [
        (
            "healthrule",
            "A health rule for one workload kind, written in CEL",
        ),
        ("healthrule.spec", "CEL expressions over the workload"),
        (
            "healthrule.spec.target",
            "The workload kind this rule judges",
        ),
        ("healthrule.spec.target.apiVersion", "group/version"),
        ("healthrule.spec.target.kind", "The workload's kind"),
        (
            "healthrule.spec.healthy",
            "true when the workload is healthy",
        ),
        ("healthrule.spec.unknown", "checked before `healthy`"),
        (
            "healthrule.spec.message",
            "the reason shown in the workload's diagnosis",
        ),
        ("healthrule.status", "What the controller observed"),
        (
            "healthrule.status.observedGeneration",
            "metadata.generation",
        ),
        (
            "healthrule.status.conditions",
            "when every expression compiled",
        ),
    ];
    for (field, words) in expected {
        let text = tokio::task::block_in_place(|| explain(field));
        assert!(text.contains(words), "{field}: {text}");
    }
}
