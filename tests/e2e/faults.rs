//! Operational faults against the real API server: it calls a webhook that is down (failing
//! open, and the controller's wiring loop wires afterwards) or hangs (cut off at its
//! timeoutSeconds); it crashes and restarts under a running controller; it throttles the
//! controller with 429s (API Priority and Fairness). Hostile input to the webhook's own server
//! is in webhook_server.rs; faults injected between the controller and the API server are in
//! fault_proxy.rs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use healthscope::admission;
use healthscope::api::{
    ApplicationConfiguration, Component, Health, HealthScope, HealthScopeSpec, WorkloadReference,
};
use healthscope::controller::{self, ControllerConfig};
use healthscope::leader::LeaderState;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::builders::{self, appconfig, deployment, deployment_status, oam_labels};
use crate::support::rbac::{ChartRbac, ServiceAccountUnderTest, render_chart};
use crate::support::tls::TestWebhookServer;
use crate::support::{self, TEST_NAMESPACE_LABEL, TestContext, unique_name};

// ---- the real API server calling a webhook that is down or hangs ----

/// Registers one mutating webhook for Deployments and AppConfigs in `ctx.namespace` only, at
/// `url`, trusting `ca_pem`. Returns the configuration's name (deleted by the caller).
async fn register_mutating(
    ctx: &TestContext,
    webhook: &str,
    url: String,
    ca_pem: &str,
    failure_policy: &str,
    timeout_seconds: i32,
) -> String {
    let name = unique_name("faults-webhook");
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": webhook,
            "clientConfig": {"url": url, "caBundle": base64_encode(ca_pem.as_bytes())},
            "rules": [
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["deployments"]},
                {"apiGroups": ["core.oam.dev"], "apiVersions": ["v1alpha2"],
                 "operations": ["CREATE", "UPDATE"], "resources": ["applicationconfigurations"]}
            ],
            "namespaceSelector": {"matchLabels": {TEST_NAMESPACE_LABEL: ctx.namespace}},
            "failurePolicy": failure_policy,
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
            "admissionReviewVersions": ["v1"]
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("registering the webhook");
    name
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn deregister(ctx: &TestContext, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(ctx.client.clone())
        .delete(name, &Default::default())
        .await;
}

/// A Deployment rendered by AppConfig `app` for component `web`: the workload webhook is called
/// for it.
fn rendered_deployment(name: &str) -> Deployment {
    deployment(name, oam_labels("app", "web"), Some(1))
}

#[tokio::test]
async fn fault_webhook_down_with_ignore_admits_and_the_controller_back_fills() {
    let ctx = TestContext::new("fault-webhook-down").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    // A loopback port nobody listens on: the webhook is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ca = crate::support::tls::TestCa::new();
    let webhook = format!("down-{}.faults.healthscope.oam.dev", ctx.namespace);
    let url = format!("https://127.0.0.1:{port}{}", admission::WORKLOAD_PATH);
    let config = register_mutating(&ctx, &webhook, url, ca.ca_pem(), "Ignore", 3).await;

    let fail_open = |client: kube::Client, webhook: String| async move {
        support::apiserver_counter(
            &client,
            "apiserver_admission_webhook_fail_open_count",
            &[("name", &webhook)],
        )
        .await
    };
    // Creates go through once the API server has the configuration; every call to the dead
    // webhook is counted as failing open.
    let deployments = ctx.api::<Deployment>();
    let mut n = 0;
    support::eventually(Duration::from_secs(30), "a create to fail open", || {
        n += 1;
        let deployments = deployments.clone();
        let (client, webhook) = (ctx.client.clone(), webhook.clone());
        async move {
            deployments
                .create(
                    &PostParams::default(),
                    &rendered_deployment(&format!("web-{n}")),
                )
                .await
                .expect("creating a Deployment with the webhook down (Ignore)");
            (fail_open(client, webhook).await >= 1.0).then_some(())
        }
    })
    .await;
    let before = fail_open(ctx.client.clone(), webhook.clone()).await;
    // An application created while the webhook is down: its Component, scope and rendered
    // workload, then the AppConfig itself. All are admitted, none is wired.
    let pp = PostParams::default();
    ctx.api::<Component>()
        .create(&pp, &builders::component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();
    ctx.api::<HealthScope>()
        .create(&pp, &HealthScope::new("scope", HealthScopeSpec::default()))
        .await
        .unwrap();
    ctx.api::<Deployment>()
        .create(&pp, &rendered_deployment("rendered"))
        .await
        .unwrap();
    ctx.api::<ApplicationConfiguration>()
        .create(&pp, &appconfig("app", "web", "rendered", &["scope"]))
        .await
        .expect("creating an ApplicationConfiguration with the webhook down (Ignore)");
    let after = fail_open(ctx.client.clone(), webhook.clone()).await;
    assert!(after > before, "fail-open count {before} -> {after}");

    // The controller's wiring loop wires what admission did not (it writes nothing): refs and the label.
    let shutdown = CancellationToken::new();
    let running = controller::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: Some(ctx.namespace.clone()),
            wiring_resync: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("starting the controller");
    let label = healthscope::membership::scope_label_key("scope");
    support::eventually(
        Duration::from_secs(30),
        "the wiring loop to fill the scope's workloadRefs and the workload's label",
        || async {
            let scope = ctx.api::<HealthScope>().get("scope").await.ok()?;
            let wired = scope
                .spec
                .workload_refs
                .iter()
                .any(|r| r.name == "rendered");
            let deployment = ctx.api::<Deployment>().get("rendered").await.ok()?;
            let labelled = deployment
                .metadata
                .labels
                .unwrap_or_default()
                .get(&label)
                .is_some_and(|v| v == "true");
            (wired && labelled).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    running.join().await;
    deregister(&ctx, &config).await;
}

#[tokio::test]
async fn fault_webhook_hanging_is_cut_off_by_timeout_seconds() {
    let ctx = TestContext::new("fault-webhook-hang").await;
    // Accepts the connection and the request, never answers.
    let router = axum::Router::new().route(
        admission::WORKLOAD_PATH,
        axum::routing::post(std::future::pending::<()>),
    );
    let server = TestWebhookServer::start(router).await;
    let webhook = format!("hang-{}.faults.healthscope.oam.dev", ctx.namespace);
    let config = register_mutating(
        &ctx,
        &webhook,
        server.url(admission::WORKLOAD_PATH),
        server.ca.ca_pem(),
        "Fail",
        1,
    )
    .await;

    // Fail closed: the create is refused, and the reason is the webhook's deadline, not a hang.
    let deployments = ctx.api::<Deployment>();
    let mut n = 0;
    let message = support::eventually(
        Duration::from_secs(60),
        "the API server to give up on the hanging webhook",
        || {
            n += 1;
            let deployments = deployments.clone();
            async move {
                match deployments
                    .create(
                        &PostParams::default(),
                        &rendered_deployment(&format!("hang-{n}")),
                    )
                    .await
                {
                    Err(kube::Error::Api(status)) => Some(status.message),
                    _ => None, // not registered yet: the create went through
                }
            }
        },
    )
    .await;
    assert!(message.contains(&webhook), "{message}");
    assert!(
        message.contains("deadline") || message.contains("timeout") || message.contains("Timeout"),
        "{message}"
    );
    deregister(&ctx, &config).await;
}

// ---- the controller through an API server restart ----

/// A kube-testenv of this test's own (never the shared one), so it can be stopped and started
/// again on the same port with the same data, as an API server restart in a cluster.
struct OwnControlPlane {
    child: Child,
    _stdin: ChildStdin,
    dir: PathBuf,
}

impl OwnControlPlane {
    fn start(dir: &Path, port: Option<u16>) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("apiserver.log"))
            .unwrap();
        let mut cmd = Command::new(support::testenv_bin());
        cmd.arg("--dir").arg(dir);
        if let Some(port) = port {
            cmd.arg("--port").arg(port.to_string());
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawning kube-testenv");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("KUBE_TESTENV_READY") => break,
                Some(Ok(line)) if line.starts_with("KUBE_TESTENV_FAILED") => {
                    panic!("own control plane failed: {line}")
                }
                Some(Ok(_)) => {}
                _ => panic!(
                    "own control plane exited before ready; log: {}",
                    dir.join("apiserver.log").display()
                ),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            _stdin: stdin,
            dir: dir.to_path_buf(),
        }
    }

    fn port(&self) -> u16 {
        let kubeconfig = Kubeconfig::read_from(self.dir.join("kubeconfig")).unwrap();
        let server = kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
            .unwrap();
        server.rsplit(':').next().unwrap().parse().unwrap()
    }

    async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.dir.join("kubeconfig")).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    /// Kills it (SIGKILL, as a crash; a graceful stop waits up to a minute for open watches)
    /// and waits: the etcd data stays in the directory for the next start.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn scope_health(scopes: &Api<HealthScope>, name: &str) -> Option<Health> {
    scopes
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|s| s.status)
        .and_then(|s| s.health)
}

/// The API server goes away and comes back on the same port with the same data: the controller's
/// watches reconnect, and a change made after the restart reaches the scope's status.
#[tokio::test]
async fn fault_apiserver_restart_watches_recover_and_status_converges() {
    let dir = tempfile::Builder::new()
        .prefix("kube-testenv-restart-")
        .tempdir()
        .unwrap();
    let plane = OwnControlPlane::start(dir.path(), None);
    let port = plane.port();
    let client = plane.client().await;
    support::install_crds(&client, &healthscope::api::crds()).await;
    let namespace = support::unique_name("fault-restart");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, scopes) = ready_deployment_in_scope(&client, &namespace, "restart").await;

    let shutdown = CancellationToken::new();
    let mut running = controller::start(
        client.clone(),
        ControllerConfig {
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("starting the controller");
    running.wait_ready().await;
    support::eventually(
        Duration::from_secs(15),
        "scope healthy before the restart",
        || {
            let scopes = scopes.clone();
            async move {
                (scope_health(&scopes, "restart").await == Some(Health::Healthy)).then_some(())
            }
        },
    )
    .await;

    // Crashed and down for a few seconds: the controller's watches fail and back off meanwhile.
    plane.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plane = OwnControlPlane::start(dir.path(), Some(port));
    let admin = plane.client().await;
    Api::<Deployment>::namespaced(admin.clone(), &namespace)
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(deployment_status(1, 2)),
        )
        .await
        .unwrap();
    let scopes = Api::<HealthScope>::namespaced(admin, &namespace);
    // Watcher backoff tops out at 30 s in kube-runtime; allow one full step plus the reconcile.
    support::eventually(
        Duration::from_secs(45),
        "scope unhealthy after a change made once the API server came back",
        || {
            let scopes = scopes.clone();
            async move {
                (scope_health(&scopes, "restart").await == Some(Health::Unhealthy)).then_some(())
            }
        },
    )
    .await;

    shutdown.cancel();
    running.join().await;
    drop(plane);
}

// ---- API Priority and Fairness: the real API server answers 429 ----

/// A client that authenticates as `namespace/name` by a fresh token and does not retry, so a
/// 429 reaches the caller.
async fn service_account_client_without_retry(
    admin: &Client,
    namespace: &str,
    name: &str,
) -> Client {
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(
            name,
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            }))
            .unwrap(),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let admin_config = support::config().await;
    let mut config = Config::new(admin_config.cluster_url.clone());
    config.root_cert = admin_config.root_cert.clone();
    config.tls_server_name = admin_config.tls_server_name.clone();
    config.auth_info = serde_json::from_value(json!({ "token": token })).unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// A FlowSchema sending every request of one ServiceAccount to `level`.
fn flow_schema_for(name: &str, level: &str, namespace: &str, account: &str) -> FlowSchema {
    serde_json::from_value(json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": level},
            "matchingPrecedence": 100,
            "rules": [{
                "subjects": [{
                    "kind": "ServiceAccount",
                    "serviceAccount": {"namespace": namespace, "name": account},
                }],
                "resourceRules": [{
                    "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "clusterScope": true, "namespaces": ["*"],
                }],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }))
    .unwrap()
}

/// `concurrent` simultaneous lists; how many the API server answered with 429.
async fn list_burst(client: &Client, namespace: &str, concurrent: usize) -> usize {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let lp = ListParams::default();
    futures::future::join_all((0..concurrent).map(|_| deployments.list(&lp)))
        .await
        .iter()
        .filter(|r| matches!(r, Err(kube::Error::Api(s)) if s.code == 429))
        .count()
}

/// Requests of one FlowSchema the API server dispatched and rejected so far.
async fn flow_counts(admin: &Client, flow_schema: &str) -> (f64, f64) {
    let labels = [("flow_schema", flow_schema)];
    let dispatched = support::apiserver_counter(
        admin,
        "apiserver_flowcontrol_dispatched_requests_total",
        &labels,
    )
    .await;
    let rejected = support::apiserver_counter(
        admin,
        "apiserver_flowcontrol_rejected_requests_total",
        &labels,
    )
    .await;
    (dispatched, rejected)
}

/// The controller runs as a ServiceAccount with the chart's rules whose requests API Priority
/// and Fairness squeezes into a priority level of a few seats that rejects the excess with 429,
/// shared with a noisy neighbour: the scope still converges and follows a change, and the
/// controller backs off instead of hammering the API server.
#[tokio::test]
async fn fault_apiserver_throttling_429_is_backed_off_and_converges() {
    let ctx = TestContext::new("fault-throttle").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let admin = ctx.client.clone();
    let ns = ctx.namespace.clone();
    let sa =
        ServiceAccountUnderTest::create(&admin, &ns, &ns, &ChartRbac::from_chart(&render_chart()))
            .await;
    // The neighbour needs no permissions: the API server classifies and rejects requests before
    // it authorizes them.
    let neighbour = unique_name("noisy");
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": neighbour}})).unwrap(),
        )
        .await
        .unwrap();
    let noisy = service_account_client_without_retry(&admin, &ns, &neighbour).await;

    // One nominal share of the server's concurrency (a few seats), nothing borrowed or lent,
    // no queues: whatever finds the seats taken is answered 429.
    let level = unique_name("healthscope-throttle");
    let controller_flow = format!("{level}-controller");
    let neighbour_flow = format!("{level}-neighbour");
    let pp = PostParams::default();
    let levels = Api::<PriorityLevelConfiguration>::all(admin.clone());
    let flows = Api::<FlowSchema>::all(admin.clone());
    levels
        .create(
            &pp,
            &serde_json::from_value(json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "PriorityLevelConfiguration",
                "metadata": {"name": level},
                "spec": {"type": "Limited", "limited": {
                    "nominalConcurrencyShares": 1,
                    "lendablePercent": 0,
                    "borrowingLimitPercent": 0,
                    "limitResponse": {"type": "Reject"},
                }},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    flows
        .create(
            &pp,
            &flow_schema_for(&controller_flow, &level, &ns, &sa.name),
        )
        .await
        .unwrap();
    flows
        .create(
            &pp,
            &flow_schema_for(&neighbour_flow, &level, &ns, &neighbour),
        )
        .await
        .unwrap();

    // The throttling is real: bursts from the neighbour get 429 once the configuration is in.
    let rejected_in_burst = support::eventually(
        Duration::from_secs(20),
        "the API server to answer a burst with 429",
        || async {
            let n = list_burst(&noisy, &ns, 30).await;
            (n > 0).then_some(n)
        },
    )
    .await;
    // From now on the neighbour keeps taking the level's seats in bursts.
    let stop_noise = CancellationToken::new();
    let noise = tokio::spawn({
        let (noisy, ns, stop) = (noisy.clone(), ns.clone(), stop_noise.clone());
        async move {
            let mut rejected = 0;
            while !stop.is_cancelled() {
                rejected += list_burst(&noisy, &ns, 20).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            rejected
        }
    });

    let (deployments, scopes) = ready_deployment_in_scope(&admin, &ns, "throttled").await;

    let (dispatched_before, rejected_before) = flow_counts(&admin, &controller_flow).await;
    let started = std::time::Instant::now();
    let shutdown = CancellationToken::new();
    let running = controller::start(
        sa.client.clone(),
        ControllerConfig {
            namespace: Some(ns.clone()),
            min_probe_interval: Duration::from_secs(1),
            ..Default::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("starting the controller");
    let health_is = |want: Health| {
        let scopes = scopes.clone();
        move || {
            let scopes = scopes.clone();
            async move { (scope_health(&scopes, "throttled").await == Some(want)).then_some(()) }
        }
    };
    support::eventually(
        Duration::from_secs(30),
        "the throttled controller to report the scope healthy",
        health_is(Health::Healthy),
    )
    .await;
    let healthy_after = started.elapsed();
    deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(deployment_status(1, 2)),
        )
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(30),
        "the throttled controller to follow the Deployment to unhealthy",
        health_is(Health::Unhealthy),
    )
    .await;
    let unhealthy_after = started.elapsed();
    // Average over at least 10 s of running under throttling.
    if let Some(rest) = Duration::from_secs(10).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let (dispatched_after, rejected_after) = flow_counts(&admin, &controller_flow).await;
    let window = started.elapsed().as_secs_f64();
    stop_noise.cancel();
    let neighbour_rejected = noise.await.unwrap();
    shutdown.cancel();
    running.join().await;

    let sent = (dispatched_after - dispatched_before) + (rejected_after - rejected_before);
    let controller_rejected = rejected_after - rejected_before;
    let rate = sent / window;
    eprintln!(
        "throttling: burst 429s {rejected_in_burst}/30, neighbour 429s {neighbour_rejected}, \
         controller sent {sent} requests ({controller_rejected} rejected with 429) in {window:.1} s \
         = {rate:.1}/s; healthy after {healthy_after:?}, unhealthy after {unhealthy_after:?}"
    );
    let _ = flows.delete(&controller_flow, &Default::default()).await;
    let _ = flows.delete(&neighbour_flow, &Default::default()).await;
    let _ = levels.delete(&level, &Default::default()).await;
    sa.delete().await;

    assert!(
        controller_rejected > 0.0,
        "the API server answered none of the controller's {sent} requests with 429: not throttled"
    );
    assert!(
        rate < 20.0,
        "the controller sent {sent} requests in {window:.1} s ({rate:.1}/s) while throttled: a hot loop"
    );
}

/// A Deployment "web" with 2 of 2 replicas ready, and HealthScope `scope` referencing it.
async fn ready_deployment_in_scope(
    client: &Client,
    namespace: &str,
    scope: &str,
) -> (Api<Deployment>, Api<HealthScope>) {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let scopes = Api::<HealthScope>::namespaced(client.clone(), namespace);
    deployments
        .create(
            &PostParams::default(),
            &deployment("web", json!({}), Some(2)),
        )
        .await
        .unwrap();
    deployments
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(deployment_status(2, 2)),
        )
        .await
        .unwrap();
    let scope = HealthScope::new(
        scope,
        HealthScopeSpec {
            workload_refs: vec![WorkloadReference::new("apps/v1", "Deployment", "web")],
            ..Default::default()
        },
    );
    scopes.create(&PostParams::default(), &scope).await.unwrap();
    (deployments, scopes)
}
