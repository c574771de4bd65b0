//! webhook tests against the real control plane: the admission webhook runs in this process over
//! HTTPS, registered with the API server for the test's namespace only; every assertion reads
//! what the API server stored.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use healthscope::api::{
    ApplicationConfiguration, Component, ContainerizedWorkload, HealthScope, WorkloadReference,
};
use healthscope::membership::scope_label_key;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::client::Body;
use serde_json::{Value, json};

use healthscope::controller::{ControllerConfig, ControllerHandle};
use healthscope::leader::LeaderState;
use tokio_util::sync::CancellationToken;

use crate::support::builders::{
    AppConfig, appconfig, component, containerized_workload, deployment, deployment_ref, from,
    health_scope, oam_labels, service,
};
use crate::support::webhook::WebhookUnderTest;
use crate::support::{TestContext, eventually};

async fn refs_of(scopes: &Api<HealthScope>, name: &str) -> Vec<WorkloadReference> {
    let mut refs = scopes
        .get(name)
        .await
        .expect("reading the scope")
        .spec
        .workload_refs;
    refs.sort();
    refs
}

/// The controller for this test's namespace: its wiring loop puts the stored AppConfigs'
/// workloads into their scopes (admission writes nothing).
fn start_wiring(ctx: &TestContext) -> (CancellationToken, ControllerHandle) {
    let shutdown = CancellationToken::new();
    let controller = healthscope::controller::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: Some(ctx.namespace.clone()),
            ..Default::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("starting the controller");
    (shutdown, controller)
}

/// Waits until the scope's refs are exactly `want`.
async fn wait_refs(scopes: &Api<HealthScope>, name: &str, want: &[WorkloadReference]) {
    eventually(
        Duration::from_secs(10),
        &format!("scope {name} refs {want:?}"),
        || async { (refs_of(scopes, name).await == want).then_some(()) },
    )
    .await;
}

/// Creates an ApplicationConfiguration through the API server (POST by hand, to read its
/// Warning headers); panics unless it is stored. Returns the warnings.
async fn create_appconfig_reading_warnings(
    ctx: &TestContext,
    app: &impl serde::Serialize,
) -> Vec<String> {
    let url = format!(
        "/apis/core.oam.dev/v1alpha2/namespaces/{}/applicationconfigurations",
        ctx.namespace
    );
    let request = kube::core::Request::new(url)
        .create(&PostParams::default(), serde_json::to_vec(app).unwrap())
        .unwrap();
    let response = ctx.client.send(request.map(Body::from)).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn scope_labels(labels: Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    labels
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("healthscope.core.oam.dev/"))
        .collect()
}

/// Admission writes nothing; the controller wires what the API server stored, within moments.
#[tokio::test]
async fn wiring_follows_create_scope_drop_and_delete() {
    let ctx = TestContext::new("wiring").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let (shutdown, controller) = start_wiring(&ctx);
    let pp = PostParams::default();
    let scopes: Api<HealthScope> = ctx.api();
    let apps: Api<ApplicationConfiguration> = ctx.api();
    for name in ["front", "all"] {
        scopes
            .create(
                &pp,
                &health_scope(name, json!({"probe-endpoint": "/health"})),
            )
            .await
            .unwrap();
    }
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();

    apps.create(&pp, &appconfig("shop", "web", "web-1", &["front", "all"]))
        .await
        .unwrap();
    wait_refs(&scopes, "front", &[deployment_ref("web-1")]).await;
    wait_refs(&scopes, "all", &[deployment_ref("web-1")]).await;

    // A second application shares "all"; its refs merge with the first one's.
    apps.create(&pp, &appconfig("blog", "web", "web-2", &["all"]))
        .await
        .unwrap();
    wait_refs(
        &scopes,
        "all",
        &[deployment_ref("web-1"), deployment_ref("web-2")],
    )
    .await;

    // Dropping a scope from the application removes exactly its ref there.
    let params = PatchParams::apply("webhook-test").force();
    let mut shop = appconfig("shop", "web", "web-1", &["all"]);
    shop.metadata.namespace = Some(ctx.namespace.clone());
    apps.patch("shop", &params, &Patch::Apply(&shop))
        .await
        .unwrap();
    wait_refs(&scopes, "front", &[]).await;
    wait_refs(
        &scopes,
        "all",
        &[deployment_ref("web-1"), deployment_ref("web-2")],
    )
    .await;

    // Deleting the application removes its refs and leaves the other application's.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_refs(&scopes, "all", &[deployment_ref("web-2")]).await;

    shutdown.cancel();
    controller.join().await;
    webhook.stop().await;
}

#[tokio::test]
async fn wiring_keeps_all_refs_of_50_concurrent_appconfigs() {
    let ctx = TestContext::new("wiring-concurrent").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let (shutdown, controller) = start_wiring(&ctx);
    let pp = PostParams::default();
    let scopes: Api<HealthScope> = ctx.api();
    let apps: Api<ApplicationConfiguration> = ctx.api();
    scopes
        .create(&pp, &health_scope("shared", json!({})))
        .await
        .unwrap();
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();

    let params = PatchParams::apply("webhook-test").force();
    let started = std::time::Instant::now();
    let applies = (0..50).map(|i| {
        let apps = apps.clone();
        let params = params.clone();
        let ns = ctx.namespace.clone();
        async move {
            let name = format!("app-{i:02}");
            let mut app = appconfig(&name, "web", &format!("web-{i:02}"), &["shared"]);
            app.metadata.namespace = Some(ns);
            apps.patch(&name, &params, &Patch::Apply(&app)).await
        }
    });
    for result in join_all(applies).await {
        result.expect("applying an ApplicationConfiguration");
    }
    let elapsed = started.elapsed();
    let expected: Vec<WorkloadReference> = (0..50)
        .map(|i| deployment_ref(&format!("web-{i:02}")))
        .collect();
    println!("50 concurrent ApplicationConfiguration applies through the webhook: {elapsed:?}");
    wait_refs(&scopes, "shared", &expected).await;
    println!(
        "... and all 50 refs in the scope after {:?}",
        started.elapsed()
    );

    shutdown.cancel();
    controller.join().await;
    webhook.stop().await;
}

#[tokio::test]
async fn webhook_dry_run_writes_nothing() {
    let ctx = TestContext::new("webhook-dry-run").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let (shutdown, controller) = start_wiring(&ctx);
    let pp = PostParams::default();
    let scopes: Api<HealthScope> = ctx.api();
    let apps: Api<ApplicationConfiguration> = ctx.api();
    scopes
        .create(&pp, &health_scope("s", json!({})))
        .await
        .unwrap();
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();

    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    apps.create(&dry_run, &appconfig("shop", "web", "web-1", &["s"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(refs_of(&scopes, "s").await, []);
    assert!(apps.get_opt("shop").await.unwrap().is_none());

    // A dry-run delete of a wired application leaves its refs too.
    apps.create(&pp, &appconfig("shop", "web", "web-1", &["s"]))
        .await
        .unwrap();
    wait_refs(&scopes, "s", &[deployment_ref("web-1")]).await;
    let dry_delete = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    apps.delete("shop", &dry_delete).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(refs_of(&scopes, "s").await, [deployment_ref("web-1")]);

    shutdown.cancel();
    controller.join().await;
    webhook.stop().await;
}

#[tokio::test]
async fn webhook_labels_workloads_and_containerized_workload_children() {
    let ctx = TestContext::new("webhook-labels").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let pp = PostParams::default();
    let long_scope = format!("a-very-long-scope-name-{}", "x".repeat(60));
    let scopes: Api<HealthScope> = ctx.api();
    for name in ["front", long_scope.as_str()] {
        scopes
            .create(&pp, &health_scope(name, json!({})))
            .await
            .unwrap();
    }
    ctx.api::<Component>()
        .create(
            &pp,
            &component("web", "core.oam.dev/v1alpha2", "ContainerizedWorkload"),
        )
        .await
        .unwrap();
    ctx.api::<Component>()
        .create(&pp, &component("api", "apps/v1", "Deployment"))
        .await
        .unwrap();
    let app = AppConfig::new("shop")
        .rendered("web", "web", &["front", &long_scope])
        .rendered("api", "api", &["front"])
        .build();
    let app = ctx
        .api::<ApplicationConfiguration>()
        .create(&pp, &app)
        .await
        .unwrap();
    let app_uid = app.metadata.uid.clone().unwrap();
    let both = BTreeMap::from([
        (scope_label_key("front"), "true".to_string()),
        (scope_label_key(&long_scope), "true".to_string()),
    ]);
    assert!(scope_label_key(&long_scope).len() <= "healthscope.core.oam.dev/".len() + 63);

    // The ContainerizedWorkload the OAM runtime would render, owned by the application.
    let mut cw = containerized_workload("web", oam_labels("shop", "web"));
    cw.metadata.owner_references = Some(from(json!([{
        "apiVersion": "core.oam.dev/v1alpha2", "kind": "ApplicationConfiguration",
        "name": "shop", "uid": app_uid, "controller": true}])));
    let cw = ctx
        .api::<ContainerizedWorkload>()
        .create(&pp, &cw)
        .await
        .unwrap();
    // Never labelled itself: the runtime copies its labels into its pods.
    assert_eq!(scope_labels(cw.metadata.labels.clone()), BTreeMap::new());
    let cw_uid = cw.metadata.uid.clone().unwrap();

    // Its Deployment and Service, created right away (the cache may not have the parent yet).
    let owner = json!([{"apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload",
                        "name": "web", "uid": cw_uid, "controller": true}]);
    let mut child = deployment("web", json!({}), None);
    child.metadata.owner_references = Some(from(owner.clone()));
    let child = ctx.api::<Deployment>().create(&pp, &child).await.unwrap();
    assert_eq!(scope_labels(child.metadata.labels), both);
    let mut child_service = service("web", json!({}));
    child_service.metadata.owner_references = Some(from(owner));
    let child_service = ctx
        .api::<Service>()
        .create(&pp, &child_service)
        .await
        .unwrap();
    assert_eq!(scope_labels(child_service.metadata.labels), both);

    // A Deployment rendered from a component, found by its labels; stale labels go.
    let deployments: Api<Deployment> = ctx.api();
    let mut labels = oam_labels("shop", "api");
    labels["healthscope.core.oam.dev/old"] = json!("true");
    labels["team"] = json!("a");
    let api = deployments
        .create(&pp, &deployment("api", labels, None))
        .await
        .unwrap();
    let labels = api.metadata.labels.clone().unwrap();
    assert_eq!(
        scope_labels(Some(labels.clone())),
        BTreeMap::from([(scope_label_key("front"), "true".to_string())])
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));

    // Removing the scope label by hand: the webhook puts it back on update.
    let strip = json!({"metadata": {"labels": {scope_label_key("front"): null}}});
    let patched = deployments
        .patch("api", &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .unwrap();
    assert_eq!(
        scope_labels(patched.metadata.labels),
        BTreeMap::from([(scope_label_key("front"), "true".to_string())])
    );

    // A Deployment OAM did not render keeps its labels, whatever they are.
    let plain = deployment(
        "plain",
        json!({"healthscope.core.oam.dev/mine": "true"}),
        None,
    );
    let plain = deployments.create(&pp, &plain).await.unwrap();
    assert_eq!(
        scope_labels(plain.metadata.labels),
        BTreeMap::from([(
            "healthscope.core.oam.dev/mine".to_string(),
            "true".to_string()
        )])
    );

    webhook.stop().await;
}

#[tokio::test]
async fn webhook_rejects_invalid_healthscopes_and_malformed_scope_refs() {
    let ctx = TestContext::new("webhook-validation").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let pp = PostParams::default();
    let scopes: Api<HealthScope> = ctx.api();

    // The CRD schema refuses what it can check alone (so it holds with the webhook down); the
    // webhook refuses the rest, naming the field and the reason.
    let cases = [
        (
            json!({"probe-endpoint": "http://169.254.169.254/latest"}),
            "spec.probe-endpoint",
        ),
        (
            json!({"probe-endpoint": "//other-host/health"}),
            "spec.probe-endpoint",
        ),
        (json!({"probe-method": "TRACE"}), "spec.probe-method"),
        (
            json!({"probe-timeout": 30, "probe-interval": 10}),
            "probe-timeout may not exceed probe-interval",
        ),
        (json!({"probe-interval": 0}), "spec.probe-interval"),
        (
            json!({"probe-endpoint": "/app/../admin"}),
            "must not contain '.' or '..' segments",
        ),
    ];
    for (i, (spec, reason)) in cases.into_iter().enumerate() {
        let err = scopes
            .create(&pp, &health_scope(&format!("bad-{i}"), spec.clone()))
            .await
            .expect_err("an invalid HealthScope is rejected");
        let message = err.to_string();
        assert!(
            message.contains("is invalid") && message.contains(reason),
            "{spec}: {message}"
        );
        assert!(scopes.get_opt(&format!("bad-{i}")).await.unwrap().is_none());
    }
    scopes
        .create(
            &pp,
            &health_scope(
                "good",
                json!({"probe-method": "HEAD", "probe-endpoint": "/healthz",
                                                    "probe-timeout": 5, "probe-interval": 15}),
            ),
        )
        .await
        .expect("a valid HealthScope is admitted");
    // Changing a valid scope into an invalid one is rejected too.
    let err = scopes
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"probe-endpoint": "health"}})),
        )
        .await
        .expect_err("an invalid update is rejected");
    assert!(err.to_string().contains("spec.probe-endpoint"), "{err}");

    // An ApplicationConfiguration with a malformed scope reference is rejected, naming it.
    // (Written out by hand: the shared builders only make well-formed references.)
    let apps: Api<ApplicationConfiguration> = ctx.api();
    let bad: ApplicationConfiguration = from(json!({
        "apiVersion": "core.oam.dev/v1alpha2", "kind": "ApplicationConfiguration",
        "metadata": {"name": "bad"},
        "spec": {"components": [{"componentName": "web", "scopes": [
            {"scopeRef": {"apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope"}}]}]},
    }));
    let err = apps
        .create(&pp, &bad)
        .await
        .expect_err("malformed refs are rejected");
    assert!(
        err.to_string()
            .contains("spec.components[0].scopes[0] names a HealthScope without a name"),
        "{err}"
    );

    webhook.stop().await;
}

#[tokio::test]
async fn webhook_warns_about_a_missing_scope_and_it_is_wired_once_created() {
    let ctx = TestContext::new("webhook-warning").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let (shutdown, controller) = start_wiring(&ctx);
    let pp = PostParams::default();
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();

    let warnings =
        create_appconfig_reading_warnings(&ctx, &appconfig("shop", "web", "web-1", &["not-yet"]))
            .await;
    assert!(
        warnings.iter().any(|w| w.contains(&format!(
            "HealthScope {}/not-yet does not exist",
            ctx.namespace
        ))),
        "{warnings:?}"
    );
    // No scope was created by the webhook.
    let scopes: Api<HealthScope> = ctx.api();
    assert!(scopes.get_opt("not-yet").await.unwrap().is_none());

    // Once the scope exists, the controller wires it: no update of the application needed.
    scopes
        .create(&pp, &health_scope("not-yet", json!({})))
        .await
        .unwrap();
    wait_refs(&scopes, "not-yet", &[deployment_ref("web-1")]).await;

    shutdown.cancel();
    controller.join().await;
    webhook.stop().await;
}

/// A scope whose only ApplicationConfiguration names a Component that does not exist has no
/// workloads, and says so: unknown, not "healthy 0/0". Once the Component exists it is wired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiring_reports_a_scope_whose_components_do_not_exist_as_unknown() {
    let ctx = TestContext::new("wiring-unresolved").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let (shutdown, controller) = start_wiring(&ctx);
    let pp = PostParams::default();
    let scopes: Api<HealthScope> = ctx.api();
    scopes
        .create(&pp, &health_scope("s", json!({})))
        .await
        .unwrap();
    ctx.api::<ApplicationConfiguration>()
        .create(&pp, &appconfig("shop", "ghost", "web-1", &["s"]))
        .await
        .unwrap();
    let ready = |scope: &HealthScope| {
        scope
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
    };
    let unknown = eventually(Duration::from_secs(15), "the scope unknown", || async {
        let scope = scopes.get("s").await.ok()?;
        let health = scope.status.as_ref().and_then(|s| s.health);
        (health == Some(healthscope::api::Health::Unknown)).then_some(scope)
    })
    .await;
    let condition = ready(&unknown).unwrap();
    assert_eq!(condition.reason, "Unresolved");
    assert!(
        condition
            .message
            .contains("ApplicationConfiguration shop: Component \"ghost\" not found"),
        "{}",
        condition.message
    );
    // The Component appears: the workload is wired and the reason goes.
    ctx.api::<Component>()
        .create(&pp, &component("ghost", "apps/v1", "Deployment"))
        .await
        .unwrap();
    wait_refs(&scopes, "s", &[deployment_ref("web-1")]).await;
    eventually(Duration::from_secs(15), "the reason gone", || async {
        let scope = scopes.get("s").await.ok()?;
        (ready(&scope)?.reason != "Unresolved").then_some(())
    })
    .await;

    shutdown.cancel();
    controller.join().await;
    webhook.stop().await;
}

/// An ApplicationConfiguration naming 2,000 Components that do not exist: the webhook reads at
/// most a few live, answers within its budget (well inside the API server's timeout) with a
/// warning saying it could not read them all, counts it, and the AppConfig is stored.
#[tokio::test]
async fn webhook_answers_within_its_budget_for_2000_missing_components() {
    let ctx = TestContext::new("webhook-budget").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let app = (0..2000)
        .fold(AppConfig::new("huge"), |app, i| {
            app.component(&format!("missing-{i:04}"), &["s"])
        })
        .json();
    let started = std::time::Instant::now();
    let warnings = create_appconfig_reading_warnings(&ctx, &app).await;
    println!(
        "create of an AppConfig naming 2,000 missing Components: {:?}",
        started.elapsed()
    );
    assert!(
        warnings.iter().any(|w| w.contains("could not read")
            && w.contains(&format!("ApplicationConfiguration {}/huge", ctx.namespace))),
        "{warnings:?}"
    );
    let metrics = webhook.metrics.encode();
    assert!(
        metrics.contains("healthscope_webhook_lookups_unfinished_total 1"),
        "{metrics}"
    );
    webhook.stop().await;
}

/// A serving certificate swapped on disk is used by the real API server without a restart:
/// a certificate from an unknown CA makes calls fail (failurePolicy Fail denies), and once the
/// caBundle names the new CA they succeed again.
mod certificate_swap {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use axum::extract::State;
    use axum::response::Response;
    use axum::routing::post;
    use healthscope::webhook::{AdmissionReviewRequest, review_response};
    use k8s_openapi::api::admissionregistration::v1::{
        RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    };
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
    use kube::core::admission::AdmissionResponse;

    use crate::support::tls::{TestCa, TestWebhookServer};
    use crate::support::{self, TEST_NAMESPACE_LABEL, TestContext};

    const DENY_PREFIX: &str = "deny-";
    const DENIAL: &str = "denied by the certificate-swap test webhook";

    /// Allows every ConfigMap except those named `deny-*`, so a test can tell that the webhook
    /// was really called.
    async fn review(
        State(calls): State<Arc<AtomicUsize>>,
        AdmissionReviewRequest(request): AdmissionReviewRequest,
    ) -> Response {
        calls.fetch_add(1, Ordering::Relaxed);
        let response = AdmissionResponse::from(&request);
        if request.name.starts_with(DENY_PREFIX) {
            review_response(response.deny(DENIAL))
        } else {
            review_response(response)
        }
    }

    fn config_map(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn webhook_configuration(
        name: &str,
        namespace: &str,
        url: String,
        ca: &TestCa,
    ) -> ValidatingWebhookConfiguration {
        ValidatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            webhooks: Some(vec![ValidatingWebhook {
                name: "cert-swap.webhook.healthscope.test".into(),
                client_config: WebhookClientConfig {
                    url: Some(url),
                    ca_bundle: Some(ca.ca_bundle()),
                    service: None,
                },
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec!["".into()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["configmaps".into()]),
                    scope: Some("Namespaced".into()),
                }]),
                namespace_selector: Some(LabelSelector {
                    match_labels: Some([(TEST_NAMESPACE_LABEL.into(), namespace.into())].into()),
                    ..Default::default()
                }),
                failure_policy: Some("Fail".into()),
                match_policy: Some("Equivalent".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(5),
                ..Default::default()
            }]),
        }
    }

    /// Creates ConfigMaps named `<prefix><n>` until `accept` holds for the outcome.
    async fn until_create(
        config_maps: &Api<ConfigMap>,
        what: &str,
        prefix: &str,
        accept: impl Fn(&Result<ConfigMap, kube::Error>) -> bool,
    ) -> Result<ConfigMap, kube::Error> {
        let attempt = AtomicUsize::new(0);
        support::eventually(Duration::from_secs(30), what, || async {
            let n = attempt.fetch_add(1, Ordering::Relaxed);
            let outcome = config_maps
                .create(&PostParams::default(), &config_map(&format!("{prefix}{n}")))
                .await;
            accept(&outcome).then_some(outcome)
        })
        .await
    }

    fn denied_with(outcome: &Result<ConfigMap, kube::Error>, text: &str) -> bool {
        matches!(outcome, Err(err) if err.to_string().contains(text))
    }

    #[tokio::test]
    async fn webhook_certificate_swap_reaches_the_api_server_without_restart() {
        let ctx = TestContext::new("webhook-cert-swap").await;
        let config_maps = ctx.api::<ConfigMap>();
        let calls = Arc::new(AtomicUsize::new(0));
        let router = axum::Router::new()
            .route("/validate", post(review))
            .with_state(calls.clone());
        let server = TestWebhookServer::start(router).await;

        let configurations = Api::<ValidatingWebhookConfiguration>::all(ctx.client.clone());
        let name = support::unique_name("webhook-cert-swap");
        configurations
            .create(
                &PostParams::default(),
                &webhook_configuration(&name, &ctx.namespace, server.url("/validate"), &server.ca),
            )
            .await
            .expect("registering the webhook");

        // 1. Trusted through the caBundle: the webhook is called (it denies deny-*, allows the rest).
        until_create(
            &config_maps,
            "the webhook to deny deny-*",
            DENY_PREFIX,
            |o| denied_with(o, DENIAL),
        )
        .await
        .unwrap_err();
        config_maps
            .create(&PostParams::default(), &config_map("allowed-before-swap"))
            .await
            .expect("an ordinary ConfigMap is allowed");
        let first_serial = server.certificate.info().serial_hex;

        // 2. A certificate from another CA, swapped on disk: the server serves it without a
        //    restart, and the API server, which does not trust that CA, fails the call.
        let other_ca = TestCa::new();
        let (cert, key) = other_ca.serving_cert(&[]);
        server.replace_cert(&cert, &key);
        let swapped = Instant::now();
        support::eventually(
            Duration::from_secs(10),
            "the server to load the new certificate",
            || async { (server.certificate.info().serial_hex != first_serial).then_some(()) },
        )
        .await;
        let loaded_after = swapped.elapsed();
        let failure = until_create(
            &config_maps,
            "calls to fail on the unknown CA",
            "after-swap-",
            |o| denied_with(o, "failed calling webhook"),
        )
        .await
        .unwrap_err();
        let failing_after = swapped.elapsed();
        let message = failure.to_string();
        assert!(
            message.contains("x509") || message.contains("certificate"),
            "the failure names the certificate problem: {message}"
        );

        // 3. The caBundle now names the new CA: calls succeed again, still the same server.
        let bundle = serde_json::to_value(other_ca.ca_bundle()).expect("caBundle as JSON");
        let patch = serde_json::json!([
            {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}
        ]);
        configurations
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(patch).expect("a JSON patch")),
            )
            .await
            .expect("updating the caBundle");
        until_create(
            &config_maps,
            "the webhook to be trusted again",
            DENY_PREFIX,
            |o| denied_with(o, DENIAL),
        )
        .await
        .unwrap_err();
        config_maps
            .create(&PostParams::default(), &config_map("allowed-after-swap"))
            .await
            .expect("an ordinary ConfigMap is allowed with the new CA");
        assert!(calls.load(Ordering::Relaxed) >= 4, "the webhook was called");
        assert_eq!(server.certificate.reload_failures(), 0);
        eprintln!(
            "certificate swap: loaded after {loaded_after:?}, API server calls failing after {failing_after:?}"
        );

        configurations
            .delete(&name, &DeleteParams::default())
            .await
            .expect("removing the webhook configuration");
    }
}

/// The watch caches the webhook answers from (and the controller reuses) see every kind.
#[tokio::test]
async fn webhook_cache_syncs_and_follows_the_oam_objects() {
    use healthscope::admission::Snapshot;
    use healthscope::cache::OamCache;
    use healthscope::membership::{ComponentLookup, OamLookup};

    let ctx = TestContext::new("webhook-cache").await;
    crate::support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let cache = OamCache::spawn(ctx.client.clone());
    cache
        .wait_synced(Duration::from_secs(30))
        .await
        .expect("the caches sync");

    let pp = PostParams::default();
    ctx.api::<HealthScope>()
        .create(&pp, &health_scope("s", json!({})))
        .await
        .unwrap();
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();
    ctx.api::<ApplicationConfiguration>()
        .create(&pp, &appconfig("shop", "web", "web-1", &[]))
        .await
        .unwrap();
    ctx.api::<ContainerizedWorkload>()
        .create(&pp, &containerized_workload("cw", json!({})))
        .await
        .unwrap();

    let ns = ctx.namespace.as_str();
    eventually(
        Duration::from_secs(10),
        "every object in the cache",
        || async {
            let view = cache.namespace(ns);
            (cache.health_scope(ns, "s").is_some()
                && view.component("web").is_some()
                && view.app_configuration("shop").is_some()
                && view.containerized_workload("cw").is_some())
            .then_some(())
        },
    )
    .await;
    assert!(cache.health_scope("other-namespace", "s").is_none());

    ctx.api::<HealthScope>()
        .delete("s", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the deleted scope gone from the cache",
        || async { cache.health_scope(ns, "s").is_none().then_some(()) },
    )
    .await;
    cache.shutdown();
}

/// Objects the cache has not seen yet are read live: with an empty snapshot, a Deployment owned
/// by a ContainerizedWorkload still gets its scope labels (parent, AppConfig and Component are
/// each read once from the API server).
#[tokio::test]
async fn webhook_reads_cache_misses_live() {
    use healthscope::admission::{Overlay, workload};
    use healthscope::webhook::{AdmissionState, with_live_reads};
    use std::sync::Arc;

    let ctx = TestContext::new("webhook-live-reads").await;
    crate::support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let pp = PostParams::default();
    ctx.api::<Component>()
        .create(
            &pp,
            &component("web", "core.oam.dev/v1alpha2", "ContainerizedWorkload"),
        )
        .await
        .unwrap();
    ctx.api::<ApplicationConfiguration>()
        .create(&pp, &appconfig("shop", "web", "web", &["front"]))
        .await
        .unwrap();
    let cw = containerized_workload("web", json!({"app.oam.dev/name": "shop"}));
    ctx.api::<ContainerizedWorkload>()
        .create(&pp, &cw)
        .await
        .unwrap();

    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "1", "operation": "CREATE", "userInfo": {}, "name": "web", "namespace": ctx.namespace,
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "object": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
                "name": "web", "namespace": ctx.namespace,
                "ownerReferences": [{"apiVersion": "core.oam.dev/v1alpha2",
                    "kind": "ContainerizedWorkload", "name": "web", "uid": "u"}]}},
        },
    });
    let request: kube::core::admission::AdmissionRequest<workload::WorkloadObject> =
        healthscope::webhook::decode_review(&serde_json::to_vec(&review).unwrap()).unwrap();
    let state = AdmissionState::new(Arc::new(Overlay::default()), ctx.client.clone());
    let read = with_live_reads(&state, |snapshot| workload::review(&request, snapshot)).await;
    assert_eq!(read.unread, 0, "every object was read within the budget");
    let response = read.outcome;
    assert!(response.allowed);
    assert_eq!(response.warnings, None);
    let patch: Value = serde_json::from_slice(&response.patch.expect("a label patch")).unwrap();
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/metadata/labels",
                "value": {scope_label_key("front"): "true"}}])
    );
}

/// Anyone who can reach the webhook's Service can post it a review. Forged CREATE, UPDATE and
/// DELETE reviews of a real ApplicationConfiguration, sent straight to the webhook port, change
/// no scope and no workload: admission writes nothing, and the controller wires only what the API
/// server stored.
#[tokio::test]
async fn webhook_forged_reviews_change_nothing() {
    let ctx = TestContext::new("webhook-forged").await;
    let webhook = WebhookUnderTest::start(&ctx).await;
    let (shutdown, controller) = start_wiring(&ctx);
    let pp = PostParams::default();
    let scopes: Api<HealthScope> = ctx.api();
    scopes
        .create(&pp, &health_scope("s", json!({})))
        .await
        .unwrap();
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();
    let apps: Api<ApplicationConfiguration> = ctx.api();
    apps.create(&pp, &appconfig("shop", "web", "web-1", &["s"]))
        .await
        .unwrap();
    let deployments: Api<Deployment> = ctx.api();
    deployments
        .create(&pp, &deployment("web-1", oam_labels("shop", "web"), None))
        .await
        .unwrap();
    wait_refs(&scopes, "s", &[deployment_ref("web-1")]).await;
    let versions = || async {
        let scope = scopes.get("s").await.unwrap().metadata.resource_version;
        let web = deployments
            .get("web-1")
            .await
            .unwrap()
            .metadata
            .resource_version;
        (scope, web)
    };
    // The controller writes the scope's status once it has judged web-1: wait for that and for
    // everything to stay put, so the comparison below starts from rest.
    eventually(
        Duration::from_secs(10),
        "the scope's status judging web-1",
        || async {
            let scope = scopes.get("s").await.ok()?;
            let judged = scope.status?.health_conditions;
            judged
                .iter()
                .any(|c| c.target_workload.name == "web-1")
                .then_some(())
        },
    )
    .await;
    let mut before = versions().await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = versions().await;
        if now == before {
            break;
        }
        before = now;
    }

    let stored = serde_json::to_value(apps.get("shop").await.unwrap()).unwrap();
    let mut other_names =
        serde_json::to_value(appconfig("evil", "web", "attacker-pick", &["s"])).unwrap();
    other_names["metadata"]["namespace"] = json!(ctx.namespace);
    let mut dropped = stored.clone();
    dropped["spec"]["components"][0]["scopes"] = json!([]);
    let review = |operation: &str, object: Value, old: Value| {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "forged", "operation": operation,
                "kind": {"group": "core.oam.dev", "version": "v1alpha2", "kind": "ApplicationConfiguration"},
                "resource": {"group": "core.oam.dev", "version": "v1alpha2", "resource": "applicationconfigurations"},
                "name": object.get("metadata").or(old.get("metadata")).and_then(|m| m["name"].as_str()).unwrap_or("shop"),
                "namespace": ctx.namespace,
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object, "oldObject": old, "dryRun": false,
            }
        })
    };
    let forged = [
        review("DELETE", Value::Null, stored.clone()),
        review("CREATE", other_names, Value::Null),
        review("UPDATE", dropped, stored.clone()),
    ];
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(webhook.server.ca.ca_pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    for path in [
        healthscope::admission::APPLICATION_CONFIGURATION_PATH,
        healthscope::admission::APPLICATION_CONFIGURATION_VALIDATE_PATH,
    ] {
        for body in &forged {
            let answer = https
                .post(webhook.server.url(path))
                .json(body)
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "{path}: {}", answer.status());
            let answer: Value = answer.json().await.unwrap();
            assert!(answer["response"]["patch"].is_null(), "{path}: {answer}");
        }
    }

    // Give a write, had there been one, time to land and the controller time to react.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        versions().await,
        before,
        "a forged review changed a scope or a workload"
    );
    assert_eq!(refs_of(&scopes, "s").await, [deployment_ref("web-1")]);

    shutdown.cancel();
    controller.join().await;
    webhook.stop().await;
}
