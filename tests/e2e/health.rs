//! Health rules and HTTP probes against real objects and a real HTTP app in a test host.

use std::sync::Arc;
use std::time::Duration;

use healthscope::api::{ContainerizedWorkload, HealthStatus, WorkloadReference};
use healthscope::health::{evaluate, ready_endpoints, service};
use healthscope::prober::{ProbeTarget, Prober};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::builders::{self, Workloads, deployment, deployment_status_at, endpoint_slice};
use crate::support::netns::{Answer, TestHost, link_exists, netns_exists};
use crate::support::{self, TestContext};

const TIMEOUT: Duration = Duration::from_millis(500);

#[tokio::test]
async fn health_netns_test_host_serves_http() {
    let host = TestHost::start();
    let prober = Prober::new(4, None).unwrap();
    let target = ProbeTarget::new("GET", "/health", host.addr(), TIMEOUT).unwrap();
    let prefix = format!("GET /health on {}:8080", host.ip());

    let ok = prober.probe(&target).await;
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.reason, format!("{prefix}: HTTP 200"));

    host.answer(Answer::Status(500));
    let failed = prober.probe(&target).await;
    assert!(!failed.ok, "{failed:?}");
    assert_eq!(failed.reason, format!("{prefix}: HTTP 500"));

    host.answer(Answer::Hang);
    let hung = prober.probe(&target).await;
    assert!(!hung.ok, "{hung:?}");
    assert_eq!(hung.reason, format!("{prefix}: timed out after 500ms"));
    assert!(hung.duration >= TIMEOUT, "{hung:?}");

    let (ns, veth, pid) = (
        host.netns().to_string(),
        host.veth().to_string(),
        host.app_pid().unwrap(),
    );
    assert!(netns_exists(&ns) && link_exists(&veth));
    drop(host);
    assert!(!netns_exists(&ns), "namespace {ns} left behind");
    assert!(!link_exists(&veth), "veth {veth} left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "app process {pid} still running"
    );
}

/// The API server accepts the test host's address in an EndpointSlice; the Service rule and the
/// probe address selection read it back from the real objects and the probe reaches the app.
#[tokio::test]
async fn health_probe_reaches_endpoint_slice_address() {
    let ctx = TestContext::new("health-probe-slice").await;
    let host = TestHost::start();
    let svc = ctx
        .api::<Service>()
        .create(&PostParams::default(), &builders::service("web", json!({})))
        .await
        .unwrap();
    let slice = endpoint_slice("web", "http", &host.ip().to_string());
    ctx.api::<EndpointSlice>()
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();

    let slices: Vec<Arc<EndpointSlice>> = ctx
        .api::<EndpointSlice>()
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let verdict = service(&svc, &slices);
    assert_eq!(verdict.diagnosis, "Endpoints: 1/1 ready");
    let addresses = ready_endpoints(&svc, &slices);
    assert_eq!(addresses, vec![host.addr()]);

    let prober = Prober::new(2, None).unwrap();
    host.answer(Answer::Status(503));
    let target = ProbeTarget::new("GET", "/health", addresses[0], TIMEOUT).unwrap();
    let outcome = prober.probe(&target).await;
    assert_eq!(
        (outcome.ok, outcome.reason),
        (false, format!("GET /health on {}: HTTP 503", host.addr()))
    );
}

async fn judge(ctx: &TestContext, reference: &WorkloadReference) -> (HealthStatus, String) {
    let snapshot = Workloads::read(ctx).await;
    let condition = evaluate(&ctx.namespace, reference, &snapshot);
    (condition.health_status, condition.diagnosis)
}

/// The rules on objects as the API server returns them: the server sets `metadata.generation`
/// and bumps it on spec changes only, which is what the observedGeneration gate relies on.
#[tokio::test]
async fn health_rules_judge_objects_from_the_api_server() {
    let ctx = TestContext::new("health-rules-api").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let deployments = ctx.api::<Deployment>();
    let labels = json!({"app.oam.dev/component": "web"});
    deployments
        .create(&PostParams::default(), &deployment("web", labels, Some(2)))
        .await
        .unwrap();
    let web = WorkloadReference::new("apps/v1", "Deployment", "web");
    assert_eq!(
        judge(&ctx, &web).await,
        (
            HealthStatus::Unhealthy,
            "progressing: generation 1 not yet observed".to_string()
        )
    );

    let rolled_out = deployment_status_at(1, 2, 2);
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&rolled_out))
        .await
        .unwrap();
    assert_eq!(
        judge(&ctx, &web).await,
        (HealthStatus::Healthy, "Ready: 2/2 replicas".to_string())
    );
    let condition = evaluate(&ctx.namespace, &web, &Workloads::read(&ctx).await);
    assert_eq!(condition.component_name.as_deref(), Some("web"));
    assert!(condition.target_workload.uid.is_some());

    let scale = json!({"spec": {"replicas": 3}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    assert_eq!(
        judge(&ctx, &web).await,
        (
            HealthStatus::Unhealthy,
            "progressing: generation 2 not yet observed".to_string()
        )
    );

    // A ContainerizedWorkload whose children were rendered by hand, as its controller would.
    ctx.api::<Service>()
        .create(&PostParams::default(), &builders::service("web", json!({})))
        .await
        .unwrap();
    let slice = endpoint_slice("web", "http", "10.213.255.2");
    ctx.api::<EndpointSlice>()
        .create(&PostParams::default(), &slice)
        .await
        .unwrap();
    let cws = ctx.api::<ContainerizedWorkload>();
    cws.create(
        &PostParams::default(),
        &builders::containerized_workload("app", json!({})),
    )
    .await
    .unwrap();
    let app = WorkloadReference::new("core.oam.dev/v1alpha2", "ContainerizedWorkload", "app");
    assert_eq!(
        judge(&ctx, &app).await,
        (
            HealthStatus::Unhealthy,
            "progressing: no Deployment rendered yet (status.resources)".to_string()
        )
    );
    let children = json!({"status": {"resources": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        {"apiVersion": "v1", "kind": "Service", "name": "web"}]}});
    cws.patch_status("app", &PatchParams::default(), &Patch::Merge(&children))
        .await
        .unwrap();
    assert_eq!(
        judge(&ctx, &app).await,
        (
            HealthStatus::Unhealthy,
            "Deployment web: progressing: generation 2 not yet observed; \
             Service web: Endpoints: 1/1 ready"
                .to_string()
        )
    );
    let caught_up = deployment_status_at(2, 3, 3);
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&caught_up))
        .await
        .unwrap();
    assert_eq!(
        judge(&ctx, &app).await,
        (
            HealthStatus::Healthy,
            "Deployment web: Ready: 3/3 replicas; Service web: Endpoints: 1/1 ready".to_string()
        )
    );

    let gone = WorkloadReference::new("apps/v1", "Deployment", "gone");
    assert_eq!(
        judge(&ctx, &gone).await,
        (
            HealthStatus::Unhealthy,
            "not found: apps/v1/Deployment gone".to_string()
        )
    );
}
