//! Health rules and HTTP probes against real objects and a real HTTP app in a test host.

use std::sync::Arc;
use std::time::Duration;

use healthscope::health::{ready_endpoints, service};
use healthscope::probe::{ProbeTarget, Prober};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use crate::support::TestContext;
use crate::support::netns::{Answer, TestHost, link_exists, netns_exists};

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
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap();
    let svc = ctx
        .api::<Service>()
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-a", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [host.ip().to_string()], "conditions": {"ready": true}}]
    }))
    .unwrap();
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
