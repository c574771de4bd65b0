//! webhook tests against the real control plane.

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
