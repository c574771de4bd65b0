//! install tests against the real control plane: the admin server over a real reflector, the
//! generated CRDs, the Helm chart and plain manifests, and the examples through kubectl.

use std::time::Duration;

use futures::StreamExt;
use healthscope::api::{
    Health, HealthScope, HealthScopeSpec, HealthScopeStatus, HealthStatus, ScopeHealthCondition,
    WorkloadHealthCondition, WorkloadReference,
};
use healthscope::metrics::Metrics;
use healthscope::serve::{self, AdminState, ErrorBody, Readiness, ScopeDetail, ScopeSummary};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio_util::sync::CancellationToken;

use crate::support::{self, TestContext};

#[tokio::test]
async fn install_admin_server_answers_from_a_real_reflector() {
    let ctx = TestContext::new("install-admin").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let scopes = ctx.api::<HealthScope>();

    // The store watches one namespace here so parallel tests do not show up in /scopes.
    let (reader, writer) = reflector::store::<HealthScope>();
    let readiness = Readiness::new();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(scopes.clone(), watcher::Config::default()),
    )
    .applied_objects();
    let stop = CancellationToken::new();
    let reflect = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    next = stream.next() => if next.is_none() { break },
                }
            }
        }
    });
    let state = AdminState::new(reader.clone(), Metrics::new(), readiness.clone());
    let listener = serve::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve::serve(
        listener,
        serve::router(state),
        stop.clone().cancelled_owned(),
    ));
    let http = reqwest::Client::new();

    // Not ready until the cache has its first list and the certificates are loaded.
    let response = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    tokio::time::timeout(
        Duration::from_secs(10),
        healthscope::cache::store_ready(&reader),
    )
    .await
    .expect("the reflector listed within 10s")
    .unwrap();
    readiness.mark_caches_synced();
    readiness.mark_certs_loaded();
    let response = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let mut scope = HealthScope::new(
        "example-health-scope",
        HealthScopeSpec {
            probe_method: Some("GET".into()),
            probe_endpoint: Some("/health".into()),
            workload_refs: vec![WorkloadReference::new("apps/v1", "Deployment", "web")],
            ..Default::default()
        },
    );
    scope.metadata.namespace = Some(ctx.namespace.clone());
    scopes.create(&PostParams::default(), &scope).await.unwrap();

    // Before any evaluation: unknown, and the workload is listed as not evaluated.
    let detail_url = format!("{base}/scopes/{}/example-health-scope", ctx.namespace);
    let detail: ScopeDetail = support::eventually(Duration::from_secs(10), "scope served", || {
        let http = http.clone();
        let url = detail_url.clone();
        async move {
            let response = http.get(url).send().await.ok()?;
            (response.status() == 200).then_some(())?;
            response.json().await.ok()
        }
    })
    .await;
    assert_eq!(detail.summary.health, Health::Unknown);
    assert_eq!(detail.workloads[0].diagnosis, serve::NOT_EVALUATED);

    // The status the controller would write, through the real status subresource.
    let status = HealthScopeStatus {
        health: Some(Health::Healthy),
        healthy_of_total: Some("1/1".into()),
        scope_health_condition: Some(ScopeHealthCondition {
            health_status: HealthStatus::Healthy,
            total: 1,
            healthy_workloads: 1,
            ..Default::default()
        }),
        health_conditions: vec![WorkloadHealthCondition {
            component_name: Some("helloworld-python-v1".into()),
            target_workload: WorkloadReference::new("apps/v1", "Deployment", "web"),
            health_status: HealthStatus::Healthy,
            diagnosis: "Ready: 1/1 replicas".into(),
            workload_status: None,
        }],
        observed_generation: Some(1),
        ..Default::default()
    };
    scopes
        .patch_status(
            "example-health-scope",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();

    let detail: ScopeDetail =
        support::eventually(Duration::from_secs(10), "healthy status served", || {
            let http = http.clone();
            let url = detail_url.clone();
            async move {
                let detail: ScopeDetail = http.get(url).send().await.ok()?.json().await.ok()?;
                (detail.summary.health == Health::Healthy).then_some(detail)
            }
        })
        .await;
    assert_eq!((detail.summary.healthy, detail.summary.total), (1, 1));
    assert_eq!(detail.workloads[0].diagnosis, "Ready: 1/1 replicas");
    assert_eq!(
        detail.workloads[0].component.as_deref(),
        Some("helloworld-python-v1")
    );

    let list: Vec<ScopeSummary> = http
        .get(format!("{base}/scopes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, vec![detail.summary.clone()]);

    let missing = http
        .get(format!("{base}/scopes/{}/nope", ctx.namespace))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: ErrorBody = missing.json().await.unwrap();
    assert_eq!(
        body.error,
        format!("healthscope {}/nope not found", ctx.namespace)
    );

    // Deleting the scope removes it from the cache and from the API.
    Api::<HealthScope>::namespaced(ctx.client.clone(), &ctx.namespace)
        .delete("example-health-scope", &Default::default())
        .await
        .unwrap();
    support::eventually(Duration::from_secs(10), "deleted scope gone", || {
        let http = http.clone();
        let url = detail_url.clone();
        async move {
            let response = http.get(url).send().await.ok()?;
            (response.status() == 404).then_some(())
        }
    })
    .await;

    stop.cancel();
    server.await.unwrap().unwrap();
    reflect.await.unwrap();
}

// --- generated files, the chart, the plain manifests, the examples -------------------------------

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool installed by `make tools` (scripts/install-tools.sh) into target/tools/bin.
fn tool(name: &str) -> std::path::PathBuf {
    let path = repo().join("target/tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make tools` (scripts/install-tools.sh target/tools)",
        path.display()
    );
    path
}

/// Runs a command to completion; panics with its stderr if it fails.
fn run(command: &mut std::process::Command) -> String {
    let output = command
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a command that must fail; returns its stderr.
fn run_failing(command: &mut std::process::Command) -> String {
    let output = command.current_dir(repo()).output().unwrap();
    assert!(!output.status.success(), "{command:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn helm() -> std::process::Command {
    std::process::Command::new(tool("helm"))
}

fn kubectl() -> std::process::Command {
    let mut command = std::process::Command::new(tool("kubectl"));
    command.arg("--kubeconfig").arg(&support::env().kubeconfig);
    command
}

/// `helm template` of the chart with a release name, a namespace and extra arguments.
fn helm_template(release: &str, namespace: &str, args: &[&str]) -> String {
    run(helm()
        .args([
            "template",
            release,
            "charts/healthscope",
            "--namespace",
            namespace,
        ])
        .args(args))
}

/// The objects of a multi-document YAML stream (empty documents skipped).
fn objects(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml)
        .unwrap_or_else(|e| panic!("parsing rendered YAML: {e}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(objects: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn install_generated_crds_are_fresh() {
    for dir in ["manifests/crds", "charts/healthscope/files/crds"] {
        let mut expected_files = std::collections::BTreeSet::new();
        for crd in healthscope::api::crds() {
            let name = crd.metadata.name.clone().unwrap();
            let file = format!("{name}.yaml");
            let expected = format!("---\n{}", serde_saphyr::to_string(&crd).unwrap());
            let actual = std::fs::read_to_string(repo().join(dir).join(&file))
                .unwrap_or_else(|e| panic!("{dir}/{file}: {e}; run `make manifests`"));
            assert!(
                actual == expected,
                "{dir}/{file} is stale against api::crds(): run `make manifests`"
            );
            expected_files.insert(file);
        }
        let present: std::collections::BTreeSet<String> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            present, expected_files,
            "{dir} holds files that are not generated CRDs: run `make manifests`"
        );
    }
}

#[test]
fn install_plain_manifests_are_the_rendered_chart() {
    let rendered = helm_template(
        "healthscope",
        "healthscope-system",
        &["-f", "manifests/install-values.yaml"],
    );
    let committed = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    assert!(
        rendered == committed,
        "manifests/install.yaml differs from the chart's rendering: run `make manifests`"
    );
}

#[test]
fn install_chart_lints_and_renders_in_both_certificate_modes() {
    let lint = run(helm().args(["lint", "--strict", "charts/healthscope"]));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let cert_manager = objects(&helm_template(
        "healthscope",
        "hs",
        &["--set", "certificate.mode=certManager"],
    ));
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
    let self_signed = objects(&helm_template(
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
    ));
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
                .args(["--set", set]),
        );
        assert!(error.contains(reason), "--set {set}: {error}");
    }

    // Out of the cluster (development, the demo): the webhook is called at a URL.
    let local = objects(&helm_template(
        "healthscope",
        "hs",
        &["--set", "webhook.urlBase=https://127.0.0.1:9443"],
    ));
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
    let opt_in = objects(&helm_template(
        "healthscope",
        "hs",
        &[
            "--set",
            "webhook.namespaceSelectorLabels.rollout=healthscope",
        ],
    ));
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
            .args(["--set-file", &file_arg("certificate.tlsCrt", "tls.crt")]),
    );
    assert!(
        error.contains("certificate.tlsCrt and certificate.tlsKey go together"),
        "{error}"
    );
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
    let rendered = objects(&helm_template("healthscope", "healthscope-system", &[]));
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
        (
            "core.oam.dev",
            "containerizedworkloads",
            "get list watch patch",
        ),
        ("apps", "deployments", "list watch patch"),
        ("apps", "statefulsets", "list watch patch"),
        ("apps", "daemonsets", "list watch patch"),
        ("apps", "replicasets", "list watch patch"),
        ("", "services", "list watch patch"),
        ("discovery.k8s.io", "endpointslices", "list watch"),
        ("events.k8s.io", "events", "create patch"),
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
}

#[test]
fn install_webhook_configurations_follow_the_admission_guidance() {
    let rendered = objects(&helm_template("healthscope", "healthscope-system", &[]));
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
                "applicationconfigurations.mutate.healthscope.oam.dev",
                healthscope::admission::APPLICATION_CONFIGURATION_PATH,
                "Ignore",
                "NoneOnDryRun"
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
    let rendered = objects(&helm_template("healthscope", "healthscope-system", &[]));
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
    // object in a dry run, which leaves the shared control plane untouched (no webhooks
    // registered for other tests).
    let ctx = TestContext::new("install-chart").await;
    let rendered = helm_template(
        "healthscope",
        &ctx.namespace,
        &["--set", "installCRDs=true"],
    );
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
        "customresourcedefinition.apiextensions.k8s.io/applicationconfigurations.core.oam.dev",
        "serviceaccount/healthscope",
        "clusterrole.rbac.authorization.k8s.io/healthscope",
        "role.rbac.authorization.k8s.io/healthscope-leader-election",
        "service/healthscope",
        "deployment.apps/healthscope",
        "poddisruptionbudget.policy/healthscope",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/healthscope",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/healthscope",
    ] {
        assert!(
            applied.contains(&format!("{object} serverside-applied (server dry run)")),
            "{object} not applied:\n{applied}"
        );
    }
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
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "web" }] },
            },
        },
    }))
    .unwrap();
    ctx.api::<Deployment>()
        .create(&PostParams::default(), &deployment)
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

    // And nothing more: no Secrets, no deletes, no other Leases, no other namespaces' Leases.
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
                &serde_json::from_value(serde_json::json!({
                    "apiVersion": "core.oam.dev/v1alpha2", "kind": "ApplicationConfiguration",
                    "metadata": { "name": "nope" }, "spec": { "components": [] },
                }))
                .unwrap(),
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
