//! What an operator installs, against the real control plane: the Helm chart (lint, values,
//! rendering, the webhook configurations and the Deployment it renders, its RBAC and status
//! protection policy applied for real, a server dry run of all of it) and the plain manifests
//! rendered from it; the examples through kubectl; docs/operations.md listing every metric.
//! healthscope's CRDs are in crds.rs.

use std::time::Duration;

use healthscope::api::{
    Health, HealthScope, HealthScopeSpec, HealthScopeStatus, HealthStatus, ScopeHealthCondition,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::support::tools::{
    find, helm, helm_template, kubectl, objects, render_chart, repo, run, run_failing,
};
use crate::support::{self, TestContext, builders};

#[test]
fn install_plain_manifests_are_the_rendered_chart() {
    let rendered = helm_template(
        "healthscope",
        "healthscope-system",
        &[
            "--include-crds",
            "--skip-tests",
            "-f",
            "manifests/install-values.yaml",
        ],
    );
    let committed = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    assert!(
        rendered == committed,
        "manifests/install.yaml differs from the chart's rendering: run `make manifests`"
    );
    // Without Helm, nothing installs the chart's crds/: the plain manifests carry the CRD.
    let plain = objects(&committed);
    let crds: Vec<&str> = find(&plain, "CustomResourceDefinition")
        .iter()
        .map(|crd| crd["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        crds,
        [
            "healthrules.healthscope.oam.dev",
            healthscope::crd::HEALTHSCOPE_CRD
        ]
    );
    assert_eq!(find(&plain, "ValidatingAdmissionPolicy").len(), 1);
    assert_eq!(find(&plain, "ValidatingAdmissionPolicyBinding").len(), 1);
}

#[test]
fn install_chart_lints_and_renders_in_both_certificate_modes() {
    let lint = run(helm().args([
        "lint",
        "--strict",
        "charts/healthscope",
        "--set",
        "certificate.allowMissingCaBundle=true",
    ]));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    // Without a caBundle the API server could not verify the webhook: refused, saying how to
    // make one, unless chosen explicitly or cert-manager injects it.
    let error = run_failing(helm().args(["template", "healthscope", "charts/healthscope"]));
    assert!(
        error.contains("certificate.caBundle is empty")
            && error.contains("make certs RELEASE=<release>")
            && error.contains("certificate.allowMissingCaBundle=true"),
        "{error}"
    );
    run(helm()
        .args(["template", "healthscope", "charts/healthscope"])
        .args(["--set", "certificate.mode=certManager"]));
    run(helm()
        .args(["template", "healthscope", "charts/healthscope"])
        .args(["--set-string", "certificate.caBundle=PEM"]));

    let cert_manager = render_chart(
        "healthscope",
        "hs",
        &["--set", "certificate.mode=certManager"],
    );
    let certificate = find(&cert_manager, "Certificate");
    assert_eq!(certificate.len(), 1);
    assert_eq!(
        certificate[0]["spec"]["dnsNames"][0], "healthscope.hs.svc",
        "the serving certificate names the Service the API server calls"
    );
    assert_eq!(
        certificate[0]["spec"]["secretName"],
        "healthscope-webhook-tls"
    );
    assert_eq!(find(&cert_manager, "Issuer").len(), 1);
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let config = find(&cert_manager, kind)[0];
        assert_eq!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "hs/healthscope-webhook",
            "{kind}"
        );
        for webhook in config["webhooks"].as_array().unwrap() {
            assert!(
                webhook["clientConfig"].get("caBundle").is_none(),
                "cert-manager injects the caBundle; the chart must not set it"
            );
        }
    }

    // selfSigned with the files `healthscope certs` writes: the Secret and the caBundle.
    let dir = tempfile::tempdir().unwrap();
    let ca = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
    for (file, text) in [("ca.crt", ca), ("tls.crt", "CERT"), ("tls.key", "KEY")] {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let file_arg = |key: &str, file: &str| format!("{key}={}", dir.path().join(file).display());
    let self_signed = render_chart(
        "healthscope",
        "hs",
        &[
            "--set-file",
            &file_arg("certificate.caBundle", "ca.crt"),
            "--set-file",
            &file_arg("certificate.tlsCrt", "tls.crt"),
            "--set-file",
            &file_arg("certificate.tlsKey", "tls.key"),
        ],
    );
    let secret = find(&self_signed, "Secret");
    assert_eq!(secret.len(), 1);
    assert_eq!(secret[0]["type"], "kubernetes.io/tls");
    assert_eq!(secret[0]["data"]["tls.key"], "S0VZ", "base64 of KEY");
    let bundle = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkNBCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        for webhook in find(&self_signed, kind)[0]["webhooks"].as_array().unwrap() {
            assert_eq!(
                webhook["clientConfig"]["caBundle"], bundle,
                "base64 of ca.crt"
            );
        }
    }
    assert!(find(&self_signed, "Certificate").is_empty());

    // Values outside what the chart supports are refused with the value's path and the reason.
    for (set, reason) in [
        (
            "certificate.mode=selfsigned",
            "value must be one of 'selfSigned', 'certManager'",
        ),
        (
            "webhook.failurePolicy.healthScope=Maybe",
            "value must be one of 'Ignore', 'Fail'",
        ),
        ("webhook.timeoutSeconds=40", "maximum: got 40, want 30"),
    ] {
        let error = run_failing(
            helm()
                .args(["template", "healthscope", "charts/healthscope"])
                .args(["--set", "certificate.allowMissingCaBundle=true"])
                .args(["--set", set]),
        );
        assert!(error.contains(reason), "--set {set}: {error}");
    }

    // Out of the cluster (development, the demo): the webhook is called at a URL.
    let local = render_chart(
        "healthscope",
        "hs",
        &["--set", "webhook.urlBase=https://127.0.0.1:9443"],
    );
    let webhook = &find(&local, "MutatingWebhookConfiguration")[0]["webhooks"][0];
    assert_eq!(
        webhook["clientConfig"]["url"],
        format!(
            "https://127.0.0.1:9443{}",
            healthscope::admission::WORKLOAD_PATH
        )
    );
    assert!(webhook["clientConfig"].get("service").is_none());

    // A gradual rollout: only labelled namespaces reach the webhooks.
    let opt_in = render_chart(
        "healthscope",
        "hs",
        &[
            "--set",
            "webhook.namespaceSelectorLabels.rollout=healthscope",
        ],
    );
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        for webhook in find(&opt_in, kind)[0]["webhooks"].as_array().unwrap() {
            let selector = &webhook["namespaceSelector"];
            assert_eq!(selector["matchLabels"]["rollout"], "healthscope");
            assert_eq!(selector["matchExpressions"][0]["operator"], "NotIn");
        }
    }

    // Half a key pair is refused with the reason.
    let error = run_failing(
        helm()
            .args(["template", "healthscope", "charts/healthscope"])
            .args(["--set", "certificate.allowMissingCaBundle=true"])
            .args(["--set-file", &file_arg("certificate.tlsCrt", "tls.crt")]),
    );
    assert!(
        error.contains("certificate.tlsCrt and certificate.tlsKey go together"),
        "{error}"
    );
}

/// The container arguments of the rendered Deployment.
fn container_args(objects: &[serde_json::Value]) -> Vec<String> {
    find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The verbs the ClusterRole grants on CustomResourceDefinitions.
fn crd_verbs(objects: &[serde_json::Value]) -> serde_json::Value {
    let (cluster, _) = rbac_rules(objects);
    let rules: Vec<_> = cluster
        .iter()
        .filter(|r| r["resources"] == serde_json::json!(["customresourcedefinitions"]))
        .collect();
    assert_eq!(rules.len(), 1, "{cluster:?}");
    rules[0]["verbs"].clone()
}

#[test]
fn install_chart_crd_and_status_protection_values() {
    // healthscope's CRDs are in crds/: rendered only with --include-crds, and alone.
    let plain = render_chart("healthscope", "hs", &[]);
    assert!(find(&plain, "CustomResourceDefinition").is_empty());
    let with_crds = render_chart("healthscope", "hs", &["--include-crds"]);
    let crds: Vec<CustomResourceDefinition> = find(&with_crds, "CustomResourceDefinition")
        .into_iter()
        .map(|crd| serde_json::from_value(crd.clone()).unwrap())
        .collect();
    assert!(
        crds == [
            <healthscope::api::HealthRule as kube::CustomResourceExt>::crd(),
            healthscope::api::healthscope_crd(),
        ],
        "the chart's CRDs are the generated ones"
    );

    // crds.manage (default): healthscope installs its CRD when the served one is not its own,
    // so it may patch that CRD.
    assert!(container_args(&plain).contains(&"--manage-crd".to_string()));
    assert_eq!(
        crd_verbs(&plain),
        serde_json::json!(["list", "watch", "patch"])
    );
    // Off: it still watches the CRD but never writes it.
    let unmanaged = render_chart("healthscope", "hs", &["--set", "crds.manage=false"]);
    assert!(!container_args(&unmanaged).contains(&"--manage-crd".to_string()));
    assert_eq!(crd_verbs(&unmanaged), serde_json::json!(["list", "watch"]));

    // statusProtection (default): status writes without status.health are denied everywhere.
    let policy = find(&plain, "ValidatingAdmissionPolicy");
    assert_eq!(policy.len(), 1);
    let policy = policy[0];
    assert_eq!(policy["metadata"]["name"], "healthscope-status");
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"],
        serde_json::json!([{
            "apiGroups": ["core.oam.dev"], "apiVersions": ["v1alpha2"], "operations": ["UPDATE"],
            "resources": ["healthscopes/status"], "scope": "Namespaced",
        }])
    );
    let validation = &policy["spec"]["validations"][0];
    assert_eq!(
        validation["expression"],
        "has(object.status) && has(object.status.health)"
    );
    assert_eq!(validation["reason"], "Forbidden");
    let binding = find(&plain, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding.len(), 1);
    assert_eq!(binding[0]["metadata"]["name"], "healthscope-status");
    assert_eq!(binding[0]["spec"]["policyName"], "healthscope-status");
    assert_eq!(
        binding[0]["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    assert!(binding[0]["spec"].get("matchResources").is_none());

    // Narrowed to some namespaces, or off.
    let narrowed = render_chart(
        "healthscope",
        "hs",
        &[
            "--set",
            "statusProtection.namespaceSelector.matchLabels.team=shop",
        ],
    );
    assert_eq!(
        find(&narrowed, "ValidatingAdmissionPolicyBinding")[0]["spec"]["matchResources"],
        serde_json::json!({ "namespaceSelector": { "matchLabels": { "team": "shop" } } })
    );
    let off = render_chart(
        "healthscope",
        "hs",
        &["--set", "statusProtection.enabled=false"],
    );
    assert!(find(&off, "ValidatingAdmissionPolicy").is_empty());
    assert!(find(&off, "ValidatingAdmissionPolicyBinding").is_empty());

    // `helm test`: a hook pod checks /readyz and the webhook's TLS answer against the caBundle.
    let test_pod = find(&plain, "Pod");
    assert_eq!(test_pod.len(), 1);
    assert_eq!(
        test_pod[0]["metadata"]["annotations"]["helm.sh/hook"],
        "test"
    );
    let script = test_pod[0]["spec"]["containers"][0]["command"][2]
        .as_str()
        .unwrap();
    assert!(script.contains("/readyz") && script.contains("/validate/healthscope"));
    assert!(script.contains("--cacert /etc/healthscope/ca/ca.crt"));

    // Misspelt keys are refused rather than ignored, at every level.
    for set in [
        "crds.mange=false",
        "statusProtection.enable=false",
        "replicaCont=3",
        "webhook.timeoutSecond=3",
        "certificate.certManager.duraton=1h",
    ] {
        let error = run_failing(
            helm()
                .args(["template", "healthscope", "charts/healthscope"])
                .args(["--set", "certificate.allowMissingCaBundle=true"])
                .args(["--set", set]),
        );
        assert!(
            error.contains("additional properties"),
            "--set {set}: {error}"
        );
    }
}

#[tokio::test]
async fn install_status_protection_refuses_status_writes_without_health() {
    // The chart's policy for real, under a name no other test uses and bound to this test's
    // namespace only, so that parallel tests' status writes never meet it.
    let ctx = TestContext::new("install-status-policy").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let release = support::unique_name("hs-status");
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        serde_json::json!({ "statusProtection": { "namespaceSelector": { "matchLabels": {
            (support::TEST_NAMESPACE_LABEL): ctx.namespace } } } })
        .to_string(),
    )
    .unwrap();
    let rendered = helm_template(
        &release,
        &ctx.namespace,
        &[
            "--set",
            &format!("fullnameOverride={release}"),
            "-f",
            values.to_str().unwrap(),
            "--show-only",
            "templates/status-protection.yaml",
        ],
    );
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, &rendered).unwrap();
    run(kubectl().args(["apply", "--server-side", "-f"]).arg(&file));

    let scopes = ctx.api::<HealthScope>();
    let mut scope = HealthScope::new("protected", HealthScopeSpec::default());
    scope.metadata.namespace = Some(ctx.namespace.clone());
    scopes.create(&PostParams::default(), &scope).await.unwrap();
    // healthscope's status write: server-side apply, always with health.
    let ours = || async {
        scopes
            .patch_status(
                "protected",
                &PatchParams::apply("healthscope").force(),
                &Patch::Apply(serde_json::json!({
                    "apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
                    "status": { "health": "healthy", "healthyOfTotal": "0/0" },
                })),
            )
            .await
    };
    // The OAM runtime's: the whole object back through a type without healthscope's fields.
    let runtimes = || async {
        let mut stored = scopes.get("protected").await?;
        stored.status = Some(HealthScopeStatus {
            scope_health_condition: Some(ScopeHealthCondition {
                health_status: HealthStatus::Healthy,
                ..Default::default()
            }),
            ..Default::default()
        });
        scopes
            .replace_status("protected", &PostParams::default(), &stored)
            .await
    };

    // The policy takes effect a moment after it is created.
    let refused = support::eventually(Duration::from_secs(30), "the policy to deny", || async {
        ours().await.unwrap();
        match runtimes().await {
            Err(kube::Error::Api(status)) => Some(status),
            Ok(_) => None,
            Err(other) => panic!("the runtime's status write: {other}"),
        }
    })
    .await;
    assert_eq!(refused.code, 403, "{refused:?}");
    assert!(
        refused.message.contains("this write drops status.health"),
        "{}",
        refused.message
    );
    let stored = scopes.get("protected").await.unwrap().status.unwrap();
    assert_eq!(stored.health, Some(Health::Healthy));
    assert_eq!(stored.healthy_of_total.as_deref(), Some("0/0"));
    // healthscope's own writes still go through.
    ours().await.unwrap();

    run(kubectl().args(["delete", "-f"]).arg(&file));
}

/// The rules of the rendered ClusterRole and leader-election Role.
fn rbac_rules(objects: &[serde_json::Value]) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let rules = |kind: &str| -> Vec<serde_json::Value> {
        let found = find(objects, kind);
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]["rules"].as_array().unwrap().clone()
    };
    (rules("ClusterRole"), rules("Role"))
}

/// Whether some rule grants `verb` on `group`/`resource`.
fn grants(rules: &[serde_json::Value], group: &str, resource: &str, verb: &str) -> bool {
    let has = |rule: &serde_json::Value, field: &str, value: &str| {
        rule[field]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == value))
    };
    rules.iter().any(|r| {
        has(r, "apiGroups", group) && has(r, "resources", resource) && has(r, "verbs", verb)
    })
}

#[test]
fn install_rbac_is_least_privilege() {
    let rendered = render_chart("healthscope", "healthscope-system", &[]);
    let (cluster, leases) = rbac_rules(&rendered);
    let text = serde_json::to_string(&(&cluster, &leases)).unwrap();
    assert!(!text.contains('*'), "no wildcards: {text}");
    for forbidden in [
        "secrets",
        "escalate",
        "bind",
        "impersonate",
        "delete",
        "deletecollection",
    ] {
        assert!(!text.contains(forbidden), "{forbidden} granted: {text}");
    }
    let expected = [
        ("core.oam.dev", "healthscopes", "get list watch patch"),
        ("core.oam.dev", "healthscopes/status", "patch"),
        (
            "core.oam.dev",
            "applicationconfigurations",
            "get list watch",
        ),
        ("core.oam.dev", "components", "get list watch"),
        // Never labelled: the OAM runtime copies a ContainerizedWorkload's labels into its pods.
        ("core.oam.dev", "containerizedworkloads", "get list watch"),
        ("apps", "deployments", "list watch patch"),
        ("apps", "statefulsets", "list watch patch"),
        ("apps", "daemonsets", "list watch patch"),
        ("apps", "replicasets", "list watch patch"),
        ("", "services", "list watch patch"),
        ("discovery.k8s.io", "endpointslices", "list watch"),
        ("events.k8s.io", "events", "create patch"),
        ("healthscope.oam.dev", "healthrules", "list watch"),
        ("healthscope.oam.dev", "healthrules/status", "patch"),
        // The HealthScope CRD only (checked below): watched, and applied with crds.manage.
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "list watch patch",
        ),
    ];
    for (group, resource, verbs) in expected {
        for verb in verbs.split(' ') {
            assert!(
                grants(&cluster, group, resource, verb),
                "ClusterRole lacks {verb} on {group}/{resource}"
            );
        }
    }
    // Nothing beyond that list: every granted (group, resource, verb) is expected.
    for rule in &cluster {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    assert!(
                        expected.iter().any(|(g, r, v)| group == g
                            && resource == r
                            && v.split(' ').any(|x| verb == x)),
                        "unexpected grant {verb} on {group}/{resource}"
                    );
                }
            }
        }
    }
    // Names limit the CRD grants to the HealthScope CRD; nothing else is limited by name.
    for rule in &cluster {
        let crds = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "customresourcedefinitions");
        if crds {
            assert_eq!(
                rule["resourceNames"],
                serde_json::json!([healthscope::crd::HEALTHSCOPE_CRD]),
                "{rule}"
            );
            assert_eq!(rule["resources"].as_array().unwrap().len(), 1, "{rule}");
        } else {
            assert!(rule.get("resourceNames").is_none(), "{rule}");
        }
    }
    // The Lease: create anywhere in the namespace (cannot be limited by name), the rest by name.
    assert!(grants(&leases, "coordination.k8s.io", "leases", "create"));
    let named: Vec<_> = leases
        .iter()
        .filter(|r| r.get("resourceNames").is_some())
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["resourceNames"][0], "healthscope-controller");
    assert_eq!(named[0]["verbs"], serde_json::json!(["get", "update"]));

    // The plain manifests carry exactly the same rules.
    let plain = objects(&std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap());
    assert_eq!(rbac_rules(&plain), (cluster, leases));

    // Without label repair, no workload kind can be patched, and healthscope is told so.
    let no_repair = render_chart(
        "healthscope",
        "healthscope-system",
        &["--set", "wiring.repairLabels=false"],
    );
    let (cluster, _) = rbac_rules(&no_repair);
    for (group, resource) in [
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("apps", "replicasets"),
        ("", "services"),
    ] {
        assert!(grants(&cluster, group, resource, "watch"));
        assert!(
            !grants(&cluster, group, resource, "patch"),
            "patch on {group}/{resource} without label repair"
        );
    }
    assert!(container_args(&no_repair).contains(&"--repair-labels=false".to_string()));
}

#[test]
fn install_webhook_configurations_follow_the_admission_guidance() {
    let rendered = render_chart("healthscope", "healthscope-system", &[]);
    let mut paths = Vec::new();
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        for webhook in find(&rendered, kind)[0]["webhooks"].as_array().unwrap() {
            let name = webhook["name"].as_str().unwrap();
            assert_eq!(webhook["timeoutSeconds"], 3, "{name}");
            assert_eq!(webhook["matchPolicy"], "Equivalent", "{name}");
            assert_eq!(
                webhook["admissionReviewVersions"],
                serde_json::json!(["v1"])
            );
            let excluded = &webhook["namespaceSelector"]["matchExpressions"][0];
            assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
            assert_eq!(excluded["operator"], "NotIn");
            assert_eq!(
                excluded["values"],
                serde_json::json!(["kube-system", "kube-node-lease", "healthscope-system"])
            );
            let service = &webhook["clientConfig"]["service"];
            assert_eq!(service["name"], "healthscope");
            assert_eq!(service["port"], 443);
            paths.push((
                name.to_string(),
                service["path"].as_str().unwrap().to_string(),
                webhook["failurePolicy"].as_str().unwrap().to_string(),
                webhook["sideEffects"].as_str().unwrap().to_string(),
            ));
        }
    }
    // The OAM runtime copies a ContainerizedWorkload's labels into its pod template: a scope
    // label there would restart the app's pods, so the webhook never sees one.
    let workload_rules =
        &find(&rendered, "MutatingWebhookConfiguration")[0]["webhooks"][0]["rules"];
    let resources: Vec<&str> = workload_rules
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["resources"].as_array().unwrap())
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        [
            "deployments",
            "statefulsets",
            "daemonsets",
            "replicasets",
            "services"
        ]
    );
    let row = |name: &str, path: &str, policy: &str, effects: &str| {
        (
            name.to_string(),
            path.to_string(),
            policy.to_string(),
            effects.to_string(),
        )
    };
    assert_eq!(
        paths,
        vec![
            row(
                "workloads.mutate.healthscope.oam.dev",
                healthscope::admission::WORKLOAD_PATH,
                "Ignore",
                "None"
            ),
            row(
                "applicationconfigurations.validate.healthscope.oam.dev",
                healthscope::admission::APPLICATION_CONFIGURATION_VALIDATE_PATH,
                "Ignore",
                "None"
            ),
            row(
                "healthrules.validate.healthscope.oam.dev",
                healthscope::admission::HEALTH_RULE_PATH,
                "Fail",
                "None"
            ),
            row(
                "healthscopes.validate.healthscope.oam.dev",
                healthscope::admission::HEALTH_SCOPE_PATH,
                "Fail",
                "None"
            ),
        ]
    );
}

#[test]
fn install_deployment_is_hardened_and_probed_on_the_admin_port() {
    let rendered = render_chart("healthscope", "healthscope-system", &[]);
    let deployment = find(&rendered, "Deployment")[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for limit in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][limit][resource].is_string(),
                "{limit}.{resource}"
            );
        }
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--tls-cert=/etc/healthscope/tls/tls.crt"));
    assert!(args.contains(&"--tls-key=/etc/healthscope/tls/tls.key"));
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"));
    assert!(
        container["volumeMounts"][0].get("subPath").is_none(),
        "a subPath mount would never see a rotated Secret"
    );
    let pdb = find(&rendered, "PodDisruptionBudget")[0];
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let service = find(&rendered, "Service")[0];
    let ports: Vec<(i64, &str)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, vec![(443, "webhook"), (8080, "admin")]);
}

#[tokio::test]
async fn install_rendered_chart_is_accepted_by_the_api_server() {
    // A fresh namespace as the release namespace; the API server validates and admits every
    // object in a dry run, which leaves the shared control plane untouched (no webhooks or
    // admission policy registered for other tests, the served CRD unchanged).
    let ctx = TestContext::new("install-chart").await;
    // The HealthRule CRD must be served for a dry run of a rule (a dry-run CRD is not).
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let rule = serde_json::json!([{
        "name": format!("{}-claims", ctx.namespace),
        "target": {"apiVersion": "database.example.com/v1", "kind": "PostgresClaim"},
        "healthy": "object.status.readyInstances == object.spec.instances",
        "unknown": "!has(object.status) || !has(object.status.readyInstances)",
        "message": "'ready ' + string(object.status.readyInstances)",
    }]);
    let rendered = helm_template(
        "healthscope",
        &ctx.namespace,
        &[
            "--include-crds",
            "--set-json",
            &format!("healthRules={rule}"),
        ],
    );
    let rule_object = format!("healthrule.healthscope.oam.dev/{}-claims", ctx.namespace);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let applied = run(kubectl()
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
        ])
        .args(["--field-manager", "healthscope-install-test", "-f"])
        .arg(&file));
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/healthscopes.core.oam.dev",
        "customresourcedefinition.apiextensions.k8s.io/healthrules.healthscope.oam.dev",
        rule_object.as_str(),
        "serviceaccount/healthscope",
        "clusterrole.rbac.authorization.k8s.io/healthscope",
        "role.rbac.authorization.k8s.io/healthscope-leader-election",
        "service/healthscope",
        "deployment.apps/healthscope",
        "poddisruptionbudget.policy/healthscope",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/healthscope",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/healthscope",
        "validatingadmissionpolicy.admissionregistration.k8s.io/healthscope-status",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/healthscope-status",
    ] {
        assert!(
            applied.contains(&format!("{object} serverside-applied (server dry run)")),
            "{object} not applied:\n{applied}"
        );
    }
    assert!(
        !applied.contains("applicationconfigurations"),
        "the OAM CRDs are the runtime's:\n{applied}"
    );
}

/// `kubectl get healthscope` as rows of columns (header first).
fn get_healthscopes(namespace: &str) -> Vec<Vec<String>> {
    run(kubectl().args(["get", "healthscope", "-n", namespace]))
        .lines()
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn install_examples_apply_and_show_health_in_kubectl_get() {
    let ctx = TestContext::new("install-examples").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let applied = run(kubectl().args(["apply", "-n", &ctx.namespace, "-f", "examples/"]));
    for object in [
        "healthscope.core.oam.dev/example-health-scope created",
        "component.core.oam.dev/helloworld-python-v1 created",
        "applicationconfiguration.core.oam.dev/first-app created",
    ] {
        assert!(applied.contains(object), "{object}:\n{applied}");
    }

    // The seed's flat scope reference is accepted as well.
    let flat = std::fs::read_to_string(repo().join("examples/appconfig.yaml"))
        .unwrap()
        .replace("name: first-app", "name: first-app-flat")
        .replace(
            "        - scopeRef:\n            apiVersion",
            "        - apiVersion",
        )
        .replace(
            "            kind: HealthScope",
            "          kind: HealthScope",
        )
        .replace(
            "            name: example-health-scope",
            "          name: example-health-scope",
        );
    assert!(!flat.contains("- scopeRef:"), "{flat}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flat.yaml"), &flat).unwrap();
    run(kubectl()
        .args(["apply", "-n", &ctx.namespace, "-f"])
        .arg(dir.path().join("flat.yaml")));

    let rows = get_healthscopes(&ctx.namespace);
    assert_eq!(rows[0], ["NAME", "HEALTH", "HEALTHY", "AGE"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][0], "example-health-scope");
    assert_eq!(rows[1].len(), 2, "no health before evaluation: {rows:?}");

    // The status the controller writes once the workload is evaluated.
    let status = HealthScopeStatus {
        health: Some(Health::Healthy),
        healthy_of_total: Some("1/1".into()),
        ..Default::default()
    };
    ctx.api::<HealthScope>()
        .patch_status(
            "example-health-scope",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
    let rows = get_healthscopes(&ctx.namespace);
    assert_eq!(rows[1][..3], ["example-health-scope", "healthy", "1/1"]);
    // -o wide adds the unknown count, when health last changed, and the probed path.
    let wide: Vec<Vec<String>> =
        run(kubectl().args(["get", "healthscope", "-n", &ctx.namespace, "-o", "wide"]))
            .lines()
            .map(|line| line.split_whitespace().map(str::to_string).collect())
            .collect();
    assert_eq!(
        wide[0],
        [
            "NAME", "HEALTH", "HEALTHY", "AGE", "UNKNOWN", "CHANGED", "PROBE"
        ]
    );

    // Re-applying the examples leaves what healthscope wrote alone.
    let refs = serde_json::json!({ "spec": { "workloadRefs": [
        { "apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload", "name": "helloworld-python-v1" }
    ] } });
    ctx.api::<HealthScope>()
        .patch(
            "example-health-scope",
            &PatchParams::apply("healthscope/first-app"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "core.oam.dev/v1alpha2",
                "kind": "HealthScope",
                "metadata": { "name": "example-health-scope" },
                "spec": refs["spec"],
            })),
        )
        .await
        .unwrap();
    run(kubectl().args([
        "apply",
        "-n",
        &ctx.namespace,
        "-f",
        "examples/healthscope.yaml",
    ]));
    let scope = ctx
        .api::<HealthScope>()
        .get("example-health-scope")
        .await
        .unwrap();
    assert_eq!(scope.spec.workload_refs.len(), 1, "{:?}", scope.spec);
}

#[test]
fn install_operations_doc_lists_every_metric() {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    for name in healthscope::metrics::METRIC_NAMES {
        assert!(
            doc.contains(&format!("| `{name}` |")),
            "docs/operations.md has no row for {name}"
        );
    }
}

/// A client authenticated as `user` in `groups` (admin impersonation): the API server then
/// authorizes exactly as it would for that identity.
async fn client_as(user: &str, groups: &[&str]) -> kube::Client {
    let mut config = support::config().await;
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    kube::Client::try_from(config).unwrap()
}

/// Whether the API answered 403 Forbidden.
fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(ref status)) if status.code == 403)
}

#[tokio::test]
async fn install_rbac_grants_what_healthscope_does_and_nothing_else() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Secret, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{DeleteParams, ListParams};

    // The chart's RBAC objects, for real, under a release name no other test uses; the
    // release namespace is this test's namespace.
    let ctx = TestContext::new("install-rbac").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let release = support::unique_name("hs-rbac");
    let rendered = helm_template(
        &release,
        &ctx.namespace,
        &[
            "--set",
            &format!("fullnameOverride={release}"),
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rbac.yaml"), &rendered).unwrap();
    run(kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(dir.path().join("rbac.yaml")));

    let service_account = format!("system:serviceaccount:{}:{release}", ctx.namespace);
    let sa_groups = [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{}", ctx.namespace),
        "system:authenticated",
    ];
    let sa_groups: Vec<&str> = sa_groups.iter().map(|g| g.as_ref()).collect();
    let sa = client_as(&service_account, &sa_groups).await;
    let ns = ctx.namespace.as_str();

    // RBAC bindings take effect at once, but allow the authorizer cache a moment.
    support::eventually(
        Duration::from_secs(10),
        "the binding to take effect",
        || {
            let api = Api::<HealthScope>::all(sa.clone());
            async move { api.list(&ListParams::default()).await.ok() }
        },
    )
    .await;

    // Reads of every kind healthscope watches, in all namespaces.
    let lp = ListParams::default().limit(1);
    Api::<HealthScope>::all(sa.clone()).list(&lp).await.unwrap();
    Api::<healthscope::api::ApplicationConfiguration>::all(sa.clone())
        .list(&lp)
        .await
        .unwrap();
    Api::<healthscope::api::Component>::all(sa.clone())
        .list(&lp)
        .await
        .unwrap();
    Api::<healthscope::api::ContainerizedWorkload>::all(sa.clone())
        .list(&lp)
        .await
        .unwrap();
    Api::<Deployment>::all(sa.clone()).list(&lp).await.unwrap();
    Api::<k8s_openapi::api::apps::v1::StatefulSet>::all(sa.clone())
        .list(&lp)
        .await
        .unwrap();
    Api::<k8s_openapi::api::apps::v1::DaemonSet>::all(sa.clone())
        .list(&lp)
        .await
        .unwrap();
    Api::<k8s_openapi::api::apps::v1::ReplicaSet>::all(sa.clone())
        .list(&lp)
        .await
        .unwrap();
    Api::<Service>::all(sa.clone()).list(&lp).await.unwrap();
    Api::<EndpointSlice>::all(sa.clone())
        .list(&lp)
        .await
        .unwrap();

    // The writes: workloadRefs by server-side apply, status by server-side apply, labels on
    // workloads, an Event.
    let mut scope = HealthScope::new("rbac-scope", HealthScopeSpec::default());
    scope.metadata.namespace = Some(ns.to_string());
    ctx.api::<HealthScope>()
        .create(&PostParams::default(), &scope)
        .await
        .unwrap();
    let scopes = Api::<HealthScope>::namespaced(sa.clone(), ns);
    scopes
        .patch(
            "rbac-scope",
            &PatchParams::apply("healthscope/first-app").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
                "metadata": { "name": "rbac-scope" },
                "spec": { "workloadRefs": [{ "apiVersion": "apps/v1", "kind": "Deployment", "name": "web" }] },
            })),
        )
        .await
        .unwrap();
    scopes
        .patch_status(
            "rbac-scope",
            &PatchParams::apply("healthscope").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
                "status": { "health": "healthy" },
            })),
        )
        .await
        .unwrap();
    ctx.api::<Deployment>()
        .create(
            &PostParams::default(),
            &builders::deployment("web", serde_json::json!({}), None),
        )
        .await
        .unwrap();
    let label = serde_json::json!({ "metadata": { "labels": { "healthscope.core.oam.dev/rbac-scope": "true" } } });
    Api::<Deployment>::namespaced(sa.clone(), ns)
        .patch("web", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let event: Event = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "rbac-scope.transition" },
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "healthscope",
        "reportingInstance": "test",
        "action": "Evaluate",
        "reason": "HealthChanged",
        "type": "Normal",
        "regarding": { "apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope", "name": "rbac-scope", "namespace": ns },
    }))
    .unwrap();
    Api::<Event>::namespaced(sa.clone(), ns)
        .create(&PostParams::default(), &event)
        .await
        .unwrap();

    // Leader election: the one Lease, in the release namespace only.
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "healthscope-controller" },
        "spec": { "holderIdentity": "a" },
    }))
    .unwrap();
    let leases = Api::<Lease>::namespaced(sa.clone(), ns);
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut renewed = leases.get("healthscope-controller").await.unwrap();
    renewed.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("healthscope-controller", &PostParams::default(), &renewed)
        .await
        .unwrap();
    assert_eq!(
        created.metadata.name.as_deref(),
        Some("healthscope-controller")
    );

    // The HealthScope CRD: read, and applied as `healthscope run --manage-crd` does (a dry run:
    // the shared control plane keeps its CRD as it is).
    let crds = Api::<CustomResourceDefinition>::all(sa.clone());
    let by_name = kube::api::ListParams::default().fields(&format!(
        "metadata.name={}",
        healthscope::crd::HEALTHSCOPE_CRD
    ));
    crds.list(&by_name).await.unwrap();
    let mut apply = PatchParams::apply(healthscope::crd::CRD_FIELD_MANAGER).force();
    apply.dry_run = true;
    crds.patch(
        healthscope::crd::HEALTHSCOPE_CRD,
        &apply,
        &Patch::Apply(healthscope::api::healthscope_crd()),
    )
    .await
    .unwrap();

    // HealthRules: listed and watched, and the Compiled condition written through the status
    // subresource; never the rule itself, never a delete.
    use healthscope::api::{HealthRule, HealthRuleSpec, RuleTarget};
    let rule_name = format!("{ns}-rbac");
    let rule = HealthRule::new(
        &rule_name,
        HealthRuleSpec {
            target: RuleTarget {
                api_version: format!("{ns}.example.com/v1"),
                kind: "Widget".into(),
            },
            healthy: "true".into(),
            unknown: None,
            message: None,
        },
    );
    Api::<HealthRule>::all(ctx.client.clone())
        .create(&PostParams::default(), &rule)
        .await
        .unwrap();
    let rules = Api::<HealthRule>::all(sa.clone());
    rules.list(&lp).await.unwrap();
    rules
        .patch_status(
            &rule_name,
            &PatchParams::apply(healthscope::controller::STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "healthscope.oam.dev/v1alpha1", "kind": "HealthRule",
                "status": { "observedGeneration": 1 },
            })),
        )
        .await
        .unwrap();
    assert!(forbidden(
        rules
            .patch(
                &rule_name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"healthy": "false"}})),
            )
            .await
    ));
    assert!(forbidden(rules.get(&rule_name).await));
    assert!(forbidden(
        rules.delete(&rule_name, &DeleteParams::default()).await
    ));
    Api::<HealthRule>::all(ctx.client.clone())
        .delete(&rule_name, &DeleteParams::default())
        .await
        .unwrap();

    // And nothing more: no Secrets, no deletes, no other Leases, no other namespaces' Leases,
    // no other CRD, no labels on ContainerizedWorkloads.
    assert!(forbidden(
        crds.get("applicationconfigurations.core.oam.dev").await
    ));
    assert!(forbidden(crds.list(&lp).await));
    assert!(forbidden(
        crds.patch(
            "applicationconfigurations.core.oam.dev",
            &apply,
            &Patch::Apply(healthscope::api::ApplicationConfiguration::crd()),
        )
        .await
    ));
    assert!(forbidden(
        Api::<healthscope::api::ContainerizedWorkload>::namespaced(sa.clone(), ns)
            .patch("api", &PatchParams::default(), &Patch::Merge(&label))
            .await
    ));
    assert!(forbidden(
        Api::<Secret>::namespaced(sa.clone(), ns).list(&lp).await
    ));
    assert!(forbidden(Api::<Secret>::all(sa.clone()).list(&lp).await));
    assert!(forbidden(
        Api::<Deployment>::namespaced(sa.clone(), ns)
            .delete("web", &DeleteParams::default())
            .await
    ));
    assert!(forbidden(
        scopes.delete("rbac-scope", &DeleteParams::default()).await
    ));
    assert!(forbidden(
        Api::<healthscope::api::ApplicationConfiguration>::namespaced(sa.clone(), ns)
            .create(
                &PostParams::default(),
                &builders::AppConfig::new("nope").build(),
            )
            .await
    ));
    assert!(forbidden(leases.get("someone-elses-lease").await));
    assert!(forbidden(
        Api::<Lease>::namespaced(sa.clone(), "default")
            .create(&PostParams::default(), &lease)
            .await
    ));
    assert!(forbidden(
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(sa.clone(), ns)
            .list(&lp)
            .await
    ));
}
