//! The admission webhook running in the test process and registered with the real API server
//! for one test namespace only.

use std::sync::Arc;
use std::time::Duration;

use healthscope::admission::{
    APPLICATION_CONFIGURATION_VALIDATE_PATH, HEALTH_RULE_PATH, HEALTH_SCOPE_PATH, WORKLOAD_PATH,
};
use healthscope::cache::OamCache;
use healthscope::webhook::{AdmissionState, router};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::json;

use super::builders::{AppConfig, deployment, from, health_scope_json};
use super::tls::TestWebhookServer;
use super::{TEST_NAMESPACE_LABEL, TestContext, eventually, unique_name};

/// How long the API server may take to start calling newly registered webhooks.
const LIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The webhook serving one test: its cache, its HTTPS server, and its two configurations.
pub struct WebhookUnderTest {
    pub cache: OamCache,
    /// The metrics the admission routes record into.
    pub metrics: healthscope::metrics::Metrics,
    pub server: TestWebhookServer,
    pub mutating: String,
    pub validating: String,
    client: kube::Client,
}

fn rule(group: &str, version: &str, resources: &[&str], operations: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec![version.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        operations: Some(operations.iter().map(|o| o.to_string()).collect()),
        scope: Some("Namespaced".into()),
    }
}

impl WebhookUnderTest {
    /// Installs the CRDs, starts the cache and the server, registers the webhooks for
    /// `ctx.namespace` only, and waits until the API server calls them.
    pub async fn start(ctx: &TestContext) -> Self {
        super::install_crds(&ctx.client, &healthscope::api::crds()).await;
        Self::serve(ctx).await
    }

    /// Starts the cache and the server and registers the webhooks for `ctx.namespace` only, on
    /// CRDs that are already installed (the OAM runtime's, with healthscope's HealthScope).
    pub async fn serve(ctx: &TestContext) -> Self {
        let cache = OamCache::spawn(ctx.client.clone());
        cache
            .wait_synced(Duration::from_secs(30))
            .await
            .expect("the OAM caches sync");
        let metrics = healthscope::metrics::Metrics::new();
        let state =
            AdmissionState::new(Arc::new(cache.clone()), ctx.client.clone()).with_metrics(&metrics);
        let server = TestWebhookServer::start(router(state)).await;

        let url = |path: &str| format!("https://{}{path}", server.addr);
        let client_config = |path: &str| WebhookClientConfig {
            url: Some(url(path)),
            ca_bundle: Some(server.ca.ca_bundle()),
            service: None,
        };
        let only_this_namespace = LabelSelector {
            match_labels: Some([(TEST_NAMESPACE_LABEL.to_string(), ctx.namespace.clone())].into()),
            ..Default::default()
        };
        let write_ops = ["CREATE", "UPDATE"];

        // The same webhooks as the chart: labelling mutates; HealthScopes and AppConfig
        // references are validated. None writes anything.
        let mutating = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(unique_name("healthscope-mutating")),
                ..Default::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: "workloads.mutate.healthscope.oam.dev".into(),
                client_config: client_config(WORKLOAD_PATH),
                rules: Some(vec![
                    rule(
                        "apps",
                        "v1",
                        &["deployments", "statefulsets", "daemonsets"],
                        &write_ops,
                    ),
                    rule("", "v1", &["services"], &write_ops),
                ]),
                namespace_selector: Some(only_this_namespace.clone()),
                failure_policy: Some("Fail".into()),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(10),
                ..Default::default()
            }]),
        };
        let validating = ValidatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(unique_name("healthscope-validating")),
                ..Default::default()
            },
            webhooks: Some(vec![
                ValidatingWebhook {
                    name: "applicationconfigurations.validate.healthscope.oam.dev".into(),
                    client_config: client_config(APPLICATION_CONFIGURATION_VALIDATE_PATH),
                    rules: Some(vec![rule(
                        "core.oam.dev",
                        "v1alpha2",
                        &["applicationconfigurations"],
                        &write_ops,
                    )]),
                    namespace_selector: Some(only_this_namespace.clone()),
                    failure_policy: Some("Fail".into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    timeout_seconds: Some(10),
                    ..Default::default()
                },
                ValidatingWebhook {
                    name: "healthscopes.validate.healthscope.oam.dev".into(),
                    client_config: client_config(HEALTH_SCOPE_PATH),
                    rules: Some(vec![rule(
                        "core.oam.dev",
                        "v1alpha2",
                        &["healthscopes"],
                        &write_ops,
                    )]),
                    namespace_selector: Some(only_this_namespace),
                    failure_policy: Some("Fail".into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    timeout_seconds: Some(10),
                    ..Default::default()
                },
                // HealthRules are cluster-scoped: only those labelled with this test's
                // namespace go to this webhook.
                ValidatingWebhook {
                    name: "healthrules.validate.healthscope.oam.dev".into(),
                    client_config: client_config(HEALTH_RULE_PATH),
                    rules: Some(vec![RuleWithOperations {
                        scope: Some("Cluster".into()),
                        ..rule(
                            "healthscope.oam.dev",
                            "v1alpha1",
                            &["healthrules"],
                            &write_ops,
                        )
                    }]),
                    object_selector: Some(LabelSelector {
                        match_labels: Some(
                            [(TEST_NAMESPACE_LABEL.to_string(), ctx.namespace.clone())].into(),
                        ),
                        ..Default::default()
                    }),
                    failure_policy: Some("Fail".into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    timeout_seconds: Some(10),
                    ..Default::default()
                },
            ]),
        };
        let pp = PostParams::default();
        Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
            .create(&pp, &mutating)
            .await
            .expect("registering the mutating webhook");
        Api::<ValidatingWebhookConfiguration>::all(ctx.client.clone())
            .create(&pp, &validating)
            .await
            .expect("registering the validating webhook");
        let this = Self {
            cache,
            metrics,
            server,
            mutating: mutating.metadata.name.unwrap_or_default(),
            validating: validating.metadata.name.unwrap_or_default(),
            client: ctx.client.clone(),
        };
        this.wait_live(ctx).await;
        this
    }

    /// Waits until both webhooks answer: a dry-run HealthScope with a bad method is rejected by
    /// ours, and a dry-run Deployment of an ApplicationConfiguration loses a stale scope label.
    async fn wait_live(&self, ctx: &TestContext) {
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let scopes: Api<kube::api::DynamicObject> = Api::namespaced_with(
            ctx.client.clone(),
            &ctx.namespace,
            &kube::api::ApiResource::erase::<healthscope::api::HealthScope>(&()),
        );
        let probe: kube::api::DynamicObject = from(health_scope_json(
            "webhook-live-probe",
            json!({"probe-method": "NOT-A-METHOD"}),
        ));
        eventually(
            LIVE_TIMEOUT,
            "the HealthScope webhook to answer",
            || async {
                match scopes.create(&dry_run, &probe).await {
                    Err(kube::Error::Api(e)) if e.message.contains("NOT-A-METHOD") => Some(()),
                    _ => None,
                }
            },
        )
        .await;

        // An application with no scopes: its workloads must carry no scope labels.
        let apps: Api<healthscope::api::ApplicationConfiguration> = ctx.api();
        let app = AppConfig::new("webhook-live-probe").build();
        apps.create(&PostParams::default(), &app)
            .await
            .expect("creating the probe ApplicationConfiguration");
        let deployments: Api<Deployment> = ctx.api();
        let labels = json!({
            "app.oam.dev/name": "webhook-live-probe",
            "healthscope.core.oam.dev/stale": "true",
        });
        let deployment = deployment("webhook-live-probe", labels, None);
        eventually(LIVE_TIMEOUT, "the workload webhook to answer", || async {
            match deployments.create(&dry_run, &deployment).await {
                Ok(created) => {
                    let labels = created.metadata.labels.unwrap_or_default();
                    (!labels.contains_key("healthscope.core.oam.dev/stale")).then_some(())
                }
                Err(_) => None,
            }
        })
        .await;
    }

    /// Deregisters the webhooks (they are cluster-scoped) and stops the cache.
    pub async fn stop(mut self) {
        delete_configurations(&self.client, &self.mutating, &self.validating).await;
        self.mutating.clear();
        self.validating.clear();
        self.cache.shutdown();
    }
}

async fn delete_configurations(client: &kube::Client, mutating: &str, validating: &str) {
    let dp = DeleteParams::default();
    if !mutating.is_empty() {
        let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(mutating, &dp)
            .await;
    }
    if !validating.is_empty() {
        let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(validating, &dp)
            .await;
    }
}

/// A test that failed before [`WebhookUnderTest::stop`] still deregisters its webhooks, from a
/// thread with its own runtime (the test's runtime may be unwinding).
impl Drop for WebhookUnderTest {
    fn drop(&mut self) {
        self.cache.shutdown();
        if self.mutating.is_empty() && self.validating.is_empty() {
            return;
        }
        let (mutating, validating) = (self.mutating.clone(), self.validating.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return;
            };
            runtime.block_on(async {
                let client = super::client().await;
                delete_configurations(&client, &mutating, &validating).await;
            });
        });
        let _ = cleanup.join();
    }
}
