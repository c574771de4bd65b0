//! The status controller and its leader election, against a real API server.

use std::time::{Duration, Instant};

use healthscope::leader::{LeaderElector, LeaderState, LeaseConfig};
use tokio_util::sync::CancellationToken;

use crate::support::TestContext;

/// Short durations so a crashed leader's lease expires within the test.
fn fast_lease(ctx: &TestContext, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(300),
        ..LeaseConfig::new("healthscope-controller", &ctx.namespace, identity)
    }
}

async fn wait_for(state: &LeaderState, leader: bool, within: Duration) -> Duration {
    let start = Instant::now();
    let mut rx = state.receiver();
    tokio::time::timeout(within, rx.wait_for(|l| *l == leader))
        .await
        .unwrap_or_else(|_| panic!("leader={leader} not reached within {within:?}"))
        .expect("elector running");
    start.elapsed()
}

#[tokio::test]
async fn controller_leader_election_one_leader_and_handover_on_release() {
    let ctx = TestContext::new("controller-lease-release").await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (a, task_a) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "a"), stop_a.clone());
    wait_for(&a, true, Duration::from_secs(5)).await;
    let (b, task_b) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "b"), stop_b.clone());

    // For several renew rounds, exactly one leads.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(
            a.is_leader() ^ b.is_leader() || !b.is_leader(),
            "both lead at once"
        );
        assert!(
            a.is_leader() && !b.is_leader(),
            "a keeps the lease while renewing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a stops and releases: b takes over within about one retry period, not a lease duration.
    stop_a.cancel();
    task_a.await.expect("elector a ends");
    assert!(!a.is_leader(), "a stepped down");
    let took = wait_for(&b, true, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(2), "handover took {took:?}");
    eprintln!("lease handover after release took {took:?}");

    stop_b.cancel();
    task_b.await.expect("elector b ends");
}

#[tokio::test]
async fn controller_leader_election_standby_takes_over_after_leader_dies() {
    let ctx = TestContext::new("controller-lease-crash").await;
    let stop_b = CancellationToken::new();
    let (a, task_a) = LeaderElector::spawn(
        ctx.client.clone(),
        fast_lease(&ctx, "a"),
        CancellationToken::new(),
    );
    wait_for(&a, true, Duration::from_secs(5)).await;
    let (b, task_b) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "b"), stop_b.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.is_leader(), "b waits while a renews");

    // a dies without releasing: b takes over once the lease duration (3 s) has passed.
    task_a.abort();
    let died = Instant::now();
    wait_for(&b, true, Duration::from_secs(8)).await;
    let took = died.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "b must wait for the lease to expire, took {took:?}"
    );

    stop_b.cancel();
    task_b.await.expect("elector b ends");
}

// --- the controller against hand-made workloads -------------------------------------------------

use healthscope::api::{Health, HealthScope, HealthScopeSpec, WorkloadReference};
use healthscope::controller::{self, ControllerConfig, ControllerHandle};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::support;
use crate::support::builders::{deployment, deployment_ref, deployment_status, from};
use crate::support::scopes::{create_scope, health, wait_scope, workload_diagnosis};

/// A controller for the test's namespace only, so parallel tests never see each other.
fn start_controller(
    ctx: &TestContext,
    leader: LeaderState,
    shutdown: &CancellationToken,
) -> ControllerHandle {
    controller::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: Some(ctx.namespace.clone()),
            min_probe_interval: Duration::from_secs(1),
            ..ControllerConfig::default()
        },
        leader,
        shutdown.clone(),
    )
    .expect("the controller starts")
}

async fn create_deployment(ctx: &TestContext, name: &str, replicas: i32) {
    let labels = serde_json::json!({ "app.oam.dev/component": name });
    ctx.api::<Deployment>()
        .create(
            &PostParams::default(),
            &deployment(name, labels, Some(replicas)),
        )
        .await
        .unwrap();
}

/// Sets a Deployment's status by hand, as its controller would: `ready` of 2 replicas ready.
async fn set_ready(ctx: &TestContext, name: &str, ready: i32) {
    let status = deployment_status(ready, 2);
    ctx.api::<Deployment>()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Deployment `web` with 2 of 2 replicas ready, and scope `app` over it with `probe_interval`;
/// returns the scope once the controller reports it healthy.
async fn healthy_scope_over_ready_web(ctx: &TestContext, probe_interval: i32) -> HealthScope {
    create_deployment(ctx, "web", 2).await;
    set_ready(ctx, "web", 2).await;
    let spec = HealthScopeSpec {
        probe_interval: Some(probe_interval),
        ..Default::default()
    };
    create_scope(ctx, "app", vec![deployment_ref("web")], spec).await;
    wait_scope(ctx, "app", Duration::from_secs(5), "healthy", |s| {
        health(s) == Some(Health::Healthy)
    })
    .await
}

#[tokio::test]
async fn controller_scope_follows_deployment_status_within_two_seconds() {
    let ctx = TestContext::new("controller-follow").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let shutdown = CancellationToken::new();
    let mut handle = start_controller(&ctx, LeaderState::always(), &shutdown);
    handle.wait_ready().await;

    create_deployment(&ctx, "web", 2).await;
    create_deployment(&ctx, "worker", 2).await;
    set_ready(&ctx, "web", 2).await;
    set_ready(&ctx, "worker", 2).await;
    // A long probe interval: every change below must arrive by watch, not by the timer.
    let spec = HealthScopeSpec {
        probe_interval: Some(60),
        ..Default::default()
    };
    create_scope(
        &ctx,
        "app",
        vec![deployment_ref("web"), deployment_ref("worker")],
        spec,
    )
    .await;
    let scope = wait_scope(&ctx, "app", Duration::from_secs(5), "healthy", |s| {
        health(s) == Some(Health::Healthy)
    })
    .await;
    let status = scope.status.unwrap();
    assert_eq!(status.healthy_of_total.as_deref(), Some("2/2"));
    assert_eq!(status.observed_generation, scope.metadata.generation);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Healthy")
    );
    assert_eq!(ready.message, "2/2 workloads healthy");
    assert_eq!(
        status.health_conditions[0].component_name.as_deref(),
        Some("web")
    );

    set_ready(&ctx, "worker", 1).await;
    let changed = Instant::now();
    let scope = wait_scope(
        &ctx,
        "app",
        Duration::from_secs(2),
        "unhealthy within 2 s",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;
    eprintln!("status followed the Deployment in {:?}", changed.elapsed());
    let status = scope.status.unwrap();
    assert_eq!(status.healthy_of_total.as_deref(), Some("1/2"));
    let worker = status
        .health_conditions
        .iter()
        .find(|c| c.target_workload.name == "worker")
        .unwrap();
    assert!(
        worker.diagnosis.contains("1/2"),
        "diagnosis: {}",
        worker.diagnosis
    );

    set_ready(&ctx, "worker", 2).await;
    wait_scope(
        &ctx,
        "app",
        Duration::from_secs(2),
        "healthy again within 2 s",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;

    // One event per transition: healthy → unhealthy and unhealthy → healthy.
    let events: Api<k8s_openapi::api::events::v1::Event> = ctx.api();
    let transitions =
        support::eventually(Duration::from_secs(5), "two HealthChanged events", || {
            let events = events.clone();
            async move {
                let list = events.list(&Default::default()).await.ok()?;
                let notes: Vec<String> = list
                    .items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some(controller::HEALTH_CHANGED))
                    .filter_map(|e| e.note)
                    .collect();
                (notes.len() >= 2).then_some(notes)
            }
        })
        .await;
    assert_eq!(transitions.len(), 2, "events: {transitions:?}");
    assert!(
        transitions
            .iter()
            .any(|n| n.starts_with("healthy → unhealthy: 1 of 2 workloads unhealthy"))
    );
    assert!(
        transitions
            .iter()
            .any(|n| n.starts_with("unhealthy → healthy"))
    );

    shutdown.cancel();
    handle.join().await;
}

/// `kubectl wait --for=condition=Ready` returns only once the scope is healthy: while it is
/// unhealthy the condition is False, with the reason and the first unhealthy workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kubectl_wait_for_ready_waits_for_a_healthy_scope() {
    let ctx = TestContext::new("controller-wait").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let shutdown = CancellationToken::new();
    let mut handle = start_controller(&ctx, LeaderState::always(), &shutdown);
    handle.wait_ready().await;
    create_deployment(&ctx, "web", 2).await;
    set_ready(&ctx, "web", 1).await;
    // Created empty (healthy 0/0) a moment before its workload arrives, as wiring does it.
    create_scope(&ctx, "app", vec![], HealthScopeSpec::default()).await;
    wait_scope(&ctx, "app", Duration::from_secs(10), "healthy 0/0", |s| {
        health(s) == Some(Health::Healthy)
    })
    .await;
    ctx.api::<HealthScope>()
        .patch(
            "app",
            &PatchParams::apply("controller-test"),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "core.oam.dev/v1alpha2", "kind": "HealthScope",
                "spec": {"workloadRefs": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}]},
            })),
        )
        .await
        .unwrap();
    let scope = wait_scope(&ctx, "app", Duration::from_secs(10), "unhealthy", |s| {
        health(s) == Some(Health::Unhealthy)
    })
    .await;
    let ready = scope
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Unhealthy")
    );
    assert!(
        ready
            .message
            .starts_with("1 of 1 workloads unhealthy, first Deployment web: "),
        "{}",
        ready.message
    );

    let wait = |timeout: &str| {
        let mut command = support::tools::kubectl();
        command.args([
            "wait",
            "--for=condition=Ready",
            "healthscope/app",
            "-n",
            &ctx.namespace,
        ]);
        command.arg(format!("--timeout={timeout}"));
        command
    };
    // Unhealthy: the wait runs out.
    let timed_out = tokio::task::block_in_place(|| wait("3s").output()).unwrap();
    assert!(!timed_out.status.success(), "{timed_out:?}");
    assert!(
        String::from_utf8_lossy(&timed_out.stderr).contains("timed out"),
        "{timed_out:?}"
    );
    // Healthy: the same wait returns.
    set_ready(&ctx, "web", 2).await;
    let met = tokio::task::block_in_place(|| wait("30s").output()).unwrap();
    assert!(met.status.success(), "{met:?}");
    assert!(
        String::from_utf8_lossy(&met.stdout).contains("condition met"),
        "{met:?}"
    );

    // The first verdict with members was no transition (the empty scope had no health to
    // change from); the change to healthy was.
    let events: Api<k8s_openapi::api::events::v1::Event> = ctx.api();
    let notes = support::eventually(Duration::from_secs(5), "a HealthChanged event", || {
        let events = events.clone();
        async move {
            let notes: Vec<String> = events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(controller::HEALTH_CHANGED))
                .filter_map(|e| e.note)
                .collect();
            (!notes.is_empty()).then_some(notes)
        }
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("unhealthy → healthy"), "{notes:?}");

    shutdown.cancel();
    handle.join().await;
}

#[tokio::test]
async fn controller_scope_without_workloads_is_healthy() {
    let ctx = TestContext::new("controller-empty").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let shutdown = CancellationToken::new();
    let handle = start_controller(&ctx, LeaderState::always(), &shutdown);
    create_scope(&ctx, "empty", vec![], HealthScopeSpec::default()).await;
    let scope = wait_scope(&ctx, "empty", Duration::from_secs(5), "evaluated", |s| {
        health(s).is_some()
    })
    .await;
    let status = scope.status.unwrap();
    assert_eq!(status.health, Some(Health::Healthy));
    assert_eq!(status.healthy_of_total.as_deref(), Some("0/0"));
    assert!(status.health_conditions.is_empty());
    shutdown.cancel();
    handle.join().await;
}

#[tokio::test]
async fn controller_reports_a_deleted_workload_as_not_found() {
    let ctx = TestContext::new("controller-deleted").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let shutdown = CancellationToken::new();
    let handle = start_controller(&ctx, LeaderState::always(), &shutdown);
    healthy_scope_over_ready_web(&ctx, 60).await;

    ctx.api::<Deployment>()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let scope = wait_scope(
        &ctx,
        "app",
        Duration::from_secs(2),
        "not found within 2 s",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;
    let status = scope.status.unwrap();
    assert!(
        status.health_conditions[0].diagnosis.contains("not found"),
        "diagnosis: {}",
        status.health_conditions[0].diagnosis
    );
    shutdown.cancel();
    handle.join().await;
}

#[tokio::test]
async fn controller_does_not_rewrite_an_unchanged_status() {
    let ctx = TestContext::new("controller-no-rewrite").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let shutdown = CancellationToken::new();
    let handle = start_controller(&ctx, LeaderState::always(), &shutdown);
    // Re-evaluated every 2 s (the shortest interval validation allows): 4.5 s are two cycles.
    let scope = healthy_scope_over_ready_web(&ctx, 2).await;
    let version = scope.metadata.resource_version.clone();
    // The write that made it healthy is counted once the patch call has returned.
    let metrics = handle.metrics.clone();
    let writes = support::eventually(Duration::from_secs(2), "the first write counted", || {
        let n = metrics.status_writes();
        async move { (n >= 1).then_some(n) }
    })
    .await;
    let reconciles = handle.metrics.reconciles();

    tokio::time::sleep(Duration::from_millis(4500)).await;
    let after = ctx.api::<HealthScope>().get("app").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, version,
        "the scope was rewritten"
    );
    assert_eq!(
        handle.metrics.status_writes(),
        writes,
        "status writes while nothing changed"
    );
    let cycles = handle.metrics.reconciles() - reconciles;
    assert!(
        cycles >= 2,
        "the periodic evaluation kept running ({cycles} reconciles in 4.5 s)"
    );
    shutdown.cancel();
    handle.join().await;
}

/// Waits until a controller has counted at least `n` status writes.
async fn writes_reach(handle: &ControllerHandle, n: u64) {
    let metrics = handle.metrics.clone();
    support::eventually(Duration::from_secs(2), "status writes counted", || {
        let done = metrics.status_writes() >= n;
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn controller_standby_never_writes_and_takes_over_when_the_leader_stops() {
    let ctx = TestContext::new("controller-standby").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (lead_a, elector_a) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "a"), stop_a.clone());
    wait_for(&lead_a, true, Duration::from_secs(5)).await;
    let a = start_controller(&ctx, lead_a.clone(), &stop_a);
    let (lead_b, elector_b) =
        LeaderElector::spawn(ctx.client.clone(), fast_lease(&ctx, "b"), stop_b.clone());
    let b = start_controller(&ctx, lead_b.clone(), &stop_b);

    healthy_scope_over_ready_web(&ctx, 2).await;
    set_ready(&ctx, "web", 1).await;
    wait_scope(&ctx, "app", Duration::from_secs(2), "unhealthy", |s| {
        health(s) == Some(Health::Unhealthy)
    })
    .await;
    // Counted once the patch call has returned, just after the API server has it.
    writes_reach(&a, 2).await;
    assert_eq!(b.metrics.status_writes(), 0, "the standby wrote status");

    // The leader stops: it releases the lease and the standby writes the next change.
    stop_a.cancel();
    elector_a.await.unwrap();
    a.join().await;
    wait_for(&lead_b, true, Duration::from_secs(3)).await;
    set_ready(&ctx, "web", 2).await;
    wait_scope(
        &ctx,
        "app",
        Duration::from_secs(3),
        "healthy, written by the new leader",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;
    writes_reach(&b, 1).await;

    stop_b.cancel();
    elector_b.await.unwrap();
    b.join().await;
}

// --- wiring loop: the cluster is made right without the webhook ---------------------------------

use healthscope::api::{ApplicationConfiguration, Component};
use healthscope::membership::{WIRING_FIELD_MANAGER, scope_label_key};

use crate::support::builders::{AppConfig, appconfig, component, oam_labels};

async fn scope_refs(ctx: &TestContext, name: &str) -> Vec<String> {
    let scope = ctx.api::<HealthScope>().get(name).await.unwrap();
    let mut names: Vec<String> = scope
        .spec
        .workload_refs
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort();
    names
}

async fn scope_labels(ctx: &TestContext, deployment: &str) -> Vec<String> {
    let d = ctx.api::<Deployment>().get(deployment).await.unwrap();
    let mut keys: Vec<String> = d
        .metadata
        .labels
        .unwrap_or_default()
        .into_keys()
        .filter(|k| k.starts_with(healthscope::membership::SCOPE_LABEL_PREFIX))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn controller_wiring_wires_and_unwires_an_appconfig_without_the_webhook() {
    let ctx = TestContext::new("controller-wiring").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let shutdown = CancellationToken::new();
    // A full wiring pass every second, so the test also sees that passes over a right cluster
    // write nothing.
    let handle = controller::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: Some(ctx.namespace.clone()),
            wiring_resync: Some(Duration::from_secs(1)),
            ..ControllerConfig::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("the controller starts");

    let pp = PostParams::default();
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();
    create_scope(&ctx, "health", vec![], HealthScopeSpec::default()).await;
    create_scope(&ctx, "other", vec![], HealthScopeSpec::default()).await;
    // The workload the OAM runtime would render for the AppConfig.
    ctx.api::<Deployment>()
        .create(&pp, &deployment("web-1", oam_labels("shop", "web"), None))
        .await
        .unwrap();

    ctx.api::<ApplicationConfiguration>()
        .create(&pp, &appconfig("shop", "web", "web-1", &["health"]))
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(5),
        "the wiring loop filled workloadRefs and labels",
        || async {
            let refs = scope_refs(&ctx, "health").await;
            let labels = scope_labels(&ctx, "web-1").await;
            (refs == ["web-1"] && labels == [scope_label_key("health")]).then_some(())
        },
    )
    .await;
    let scope = ctx.api::<HealthScope>().get("health").await.unwrap();
    let managers: Vec<String> = scope
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == WIRING_FIELD_MANAGER),
        "managers: {managers:?}"
    );

    // The AppConfig moves its component from "health" to "other".
    let moved = AppConfig::new("shop").rendered("web", "web-1", &["other"]);
    let patch = serde_json::json!({"spec": moved.json()["spec"]});
    ctx.api::<ApplicationConfiguration>()
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(5),
        "refs and labels moved to the other scope",
        || async {
            let health = scope_refs(&ctx, "health").await;
            let other = scope_refs(&ctx, "other").await;
            let labels = scope_labels(&ctx, "web-1").await;
            (health.is_empty() && other == ["web-1"] && labels == [scope_label_key("other")])
                .then_some(())
        },
    )
    .await;

    // Several passes later nothing has been rewritten.
    let versions = || async {
        let scopes = ctx.api::<HealthScope>();
        (
            scopes
                .get("health")
                .await
                .unwrap()
                .metadata
                .resource_version,
            scopes.get("other").await.unwrap().metadata.resource_version,
            ctx.api::<Deployment>()
                .get("web-1")
                .await
                .unwrap()
                .metadata
                .resource_version,
        )
    };
    // Let the status writes that follow the membership change settle first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = versions().await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        versions().await,
        before,
        "a pass over a right cluster wrote"
    );

    shutdown.cancel();
    handle.join().await;
}

// --- HTTP probes against a real app on a test host -----------------------------------------------

use crate::support::builders::{endpoint_slice, service};
use crate::support::netns::{Answer, TestHost};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

#[tokio::test]
async fn controller_http_probe_follows_a_real_app_200_500_and_hang() {
    let ctx = TestContext::new("controller-probe").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let host = TestHost::start();
    let pp = PostParams::default();
    ctx.api::<Service>()
        .create(&pp, &service("web", serde_json::json!({})))
        .await
        .unwrap();
    let slice = endpoint_slice("web", "http", &host.ip().to_string());
    ctx.api::<EndpointSlice>()
        .create(&pp, &slice)
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let handle = start_controller(&ctx, LeaderState::always(), &shutdown);
    let spec = HealthScopeSpec {
        probe_method: Some("GET".into()),
        probe_endpoint: Some("/health".into()),
        probe_timeout: Some(1),
        probe_interval: Some(2),
        ..Default::default()
    };
    create_scope(
        &ctx,
        "web",
        vec![WorkloadReference::new("v1", "Service", "web")],
        spec,
    )
    .await;
    let scope = wait_scope(
        &ctx,
        "web",
        Duration::from_secs(6),
        "healthy after a 200 probe",
        |s| health(s) == Some(Health::Healthy) && workload_diagnosis(s).contains("probe ok"),
    )
    .await;
    assert!(
        workload_diagnosis(&scope).contains("1/1"),
        "{}",
        workload_diagnosis(&scope)
    );

    host.answer(Answer::Status(500));
    let scope = wait_scope(
        &ctx,
        "web",
        Duration::from_secs(6),
        "unhealthy after a 500",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;
    let expected = format!("GET /health on {}: HTTP 500", host.addr());
    assert!(
        workload_diagnosis(&scope).contains(&expected),
        "{}",
        workload_diagnosis(&scope)
    );

    host.answer(Answer::Hang);
    let scope = wait_scope(
        &ctx,
        "web",
        Duration::from_secs(8),
        "unhealthy with a timeout",
        |s| workload_diagnosis(s).contains("timed out"),
    )
    .await;
    assert_eq!(health(&scope), Some(Health::Unhealthy));
    assert!(
        workload_diagnosis(&scope).contains(&format!(
            "GET /health on {}: timed out after 1s",
            host.addr()
        )),
        "{}",
        workload_diagnosis(&scope)
    );

    host.answer(Answer::Status(200));
    wait_scope(&ctx, "web", Duration::from_secs(8), "healthy again", |s| {
        health(s) == Some(Health::Healthy)
    })
    .await;

    // A method that may change something is not sent unless the operator enables it; the
    // status says so.
    ctx.api::<HealthScope>()
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"probe-method": "POST"}})),
        )
        .await
        .unwrap();
    let scope = wait_scope(
        &ctx,
        "web",
        Duration::from_secs(8),
        "unhealthy: POST is not enabled",
        |s| workload_diagnosis(s).contains("not enabled"),
    )
    .await;
    assert_eq!(health(&scope), Some(Health::Unhealthy));
    assert!(
        workload_diagnosis(&scope).contains("probe-method POST is not enabled on this controller"),
        "{}",
        workload_diagnosis(&scope)
    );

    shutdown.cancel();
    handle.join().await;
}

// --- `healthscope run`, the process as it runs in a pod ------------------------------------------

use k8s_openapi::api::coordination::v1::Lease;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the process on drop, so a failed test leaves nothing running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn controller_run_command_serves_scopes_and_releases_its_lease_on_sigterm() {
    let ctx = TestContext::new("controller-run").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    create_deployment(&ctx, "web", 2).await;
    set_ready(&ctx, "web", 2).await;
    create_scope(
        &ctx,
        "app",
        vec![deployment_ref("web")],
        HealthScopeSpec::default(),
    )
    .await;

    let port = free_port();
    let api_port = free_port();
    let webhook_port = free_port();
    let certs = tempfile::tempdir().unwrap();
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_healthscope"))
        .args([
            "certs",
            "--service",
            "healthscope",
            "--namespace",
            &ctx.namespace,
        ])
        .args(["--ip", "127.0.0.1", "--out-dir"])
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_healthscope"))
        .args([
            "run",
            "--namespace",
            &ctx.namespace,
            "--lease-namespace",
            &ctx.namespace,
        ])
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{port}"),
            "--api-addr",
            &format!("127.0.0.1:{api_port}"),
            "--log-format",
            "json",
        ])
        .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
        .arg("--tls-cert")
        .arg(certs.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.path().join("tls.key"))
        .env("KUBECONFIG", &support::env().kubeconfig)
        .env("POD_NAME", "healthscope-0")
        .env_remove("RUST_LOG")
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut running = Running(child);

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    support::eventually(Duration::from_secs(20), "/readyz answers 200", || {
        let http = http.clone();
        let url = format!("{base}/readyz");
        async move {
            let response = http.get(url).send().await.ok()?;
            (response.status() == 200).then_some(())
        }
    })
    .await;
    wait_scope(
        &ctx,
        "app",
        Duration::from_secs(10),
        "healthy, written by the process",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;
    let detail: serde_json::Value =
        support::eventually(Duration::from_secs(5), "/scopes shows the scope", || {
            let http = http.clone();
            let url = format!("http://127.0.0.1:{api_port}/scopes/{}/app", ctx.namespace);
            async move {
                let body: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
                (body["health"] == "healthy").then_some(body)
            }
        })
        .await;
    assert_eq!(detail["name"], "app", "{detail}");
    // The cluster-reachable admin port shows no scope, and says where they are.
    let elsewhere = http
        .get(format!("{base}/scopes/{}/app", ctx.namespace))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);
    let body: serde_json::Value = elsewhere.json().await.unwrap();
    assert_eq!(
        body["error"],
        healthscope::admin::SCOPES_ELSEWHERE,
        "{body}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("healthscope_leader 1"), "{metrics}");
    assert!(
        metrics.contains("healthscope_status_patch_total{result=\"success\"}"),
        "{metrics}"
    );

    // The webhook answers over TLS with the certificate given; a body that is no
    // AdmissionReview is a 400.
    let ca = std::fs::read(certs.path().join("ca.crt")).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let answer = https
        .post(format!(
            "https://127.0.0.1:{webhook_port}{}",
            healthscope::admission::APPLICATION_CONFIGURATION_PATH
        ))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);

    let leases = ctx.api::<Lease>();
    let lease = leases
        .get(healthscope::leader::DEFAULT_LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("healthscope-0")
    );

    // SIGTERM: the lease is released and the process exits well inside the grace period.
    let pid = running.0.id().to_string();
    let stopped = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = running.0.wait();
        (status, running)
    });
    let (status, _running) = tokio::time::timeout(Duration::from_secs(25), status)
        .await
        .expect("exited within 25 s")
        .unwrap();
    assert!(
        status.unwrap().success(),
        "log: {}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        stopped.elapsed()
    );
    let lease = leases
        .get(healthscope::leader::DEFAULT_LEASE_NAME)
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None, "lease released");

    // JSON logs: one object per line, plain values (no Rust debug forms), dates as dates.
    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        !text.contains("Some(") && !text.contains("\"None\""),
        "{text}"
    );
    let field = |message: &str, name: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .map(|l| l[name].clone())
            .unwrap_or_else(|| panic!("no {message:?} line: {text}"))
    };
    assert_eq!(
        field("starting healthscope", "namespace"),
        ctx.namespace.as_str()
    );
    assert_eq!(field("status written", "health"), "healthy");
    assert_eq!(field("status written", "healthy"), "1/1");
    let not_after = field("serving certificate loaded", "not_after");
    assert!(
        not_after
            .as_str()
            .is_some_and(|d| d.ends_with('Z') && d.contains('T')),
        "{not_after}"
    );
}

/// Text logs written to a file (not a terminal) carry no colour codes and no Rust debug forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_text_logs_in_a_file_are_plain() {
    let ctx = TestContext::new("controller-text-log").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_healthscope"))
        .args([
            "run",
            "--namespace",
            &ctx.namespace,
            "--leader-election=false",
        ])
        .args(["--admin-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
        .args(["--log-format", "text"])
        .env("KUBECONFIG", &support::env().kubeconfig)
        .env_remove("RUST_LOG")
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let _running = Running(child);
    let text = support::eventually(Duration::from_secs(20), "caches synced logged", || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        async move { text.contains("caches synced").then_some(text) }
    })
    .await;
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
    assert!(!text.contains("Some(") && !text.contains("=None"), "{text}");
    assert!(
        text.contains(&format!("namespace=\"{}\"", ctx.namespace))
            || text.contains(&format!("namespace={}", ctx.namespace)),
        "{text}"
    );
}

// --- kinds without a built-in cache ---------------------------------------------------------------

#[tokio::test]
async fn controller_watches_other_kinds_on_demand_and_reports_unknown_kinds() {
    let ctx = TestContext::new("controller-dynamic").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = ctx.api();
    let claim = from(serde_json::json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }));
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let phase = |p: &str| serde_json::json!({"status": {"phase": p}});
    claims
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(&phase("Bound")),
        )
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let allowed = ["PersistentVolumeClaim", "Widget.example.com"].map(String::from);
    let handle = controller::start(
        ctx.client.clone(),
        ControllerConfig {
            namespace: Some(ctx.namespace.clone()),
            extra_kinds: healthscope::controller::cache::ExtraKinds::parse(&allowed).unwrap(),
            ..ControllerConfig::default()
        },
        LeaderState::always(),
        shutdown.clone(),
    )
    .expect("the controller starts");
    let spec = HealthScopeSpec {
        probe_interval: Some(60),
        ..Default::default()
    };
    create_scope(
        &ctx,
        "data",
        vec![WorkloadReference::new(
            "v1",
            "PersistentVolumeClaim",
            "data",
        )],
        spec.clone(),
    )
    .await;
    wait_scope(
        &ctx,
        "data",
        Duration::from_secs(8),
        "a bound claim is healthy",
        |s| health(s) == Some(Health::Healthy),
    )
    .await;
    // The watch started for this kind delivers the change at once.
    claims
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(&phase("Lost")),
        )
        .await
        .unwrap();
    let scope = wait_scope(
        &ctx,
        "data",
        Duration::from_secs(2),
        "a lost claim is unhealthy within 2 s",
        |s| health(s) == Some(Health::Unhealthy),
    )
    .await;
    assert!(
        workload_diagnosis(&scope).contains("Lost"),
        "{}",
        workload_diagnosis(&scope)
    );

    create_scope(
        &ctx,
        "widgets",
        vec![WorkloadReference::new("example.com/v1", "Widget", "w")],
        spec,
    )
    .await;
    let scope = wait_scope(&ctx, "widgets", Duration::from_secs(8), "evaluated", |s| {
        health(s).is_some()
    })
    .await;
    assert_eq!(health(&scope), Some(Health::Unknown));
    let diagnosis = workload_diagnosis(&scope);
    assert!(diagnosis.contains("example.com/v1/Widget"), "{diagnosis}");
    assert!(diagnosis.contains("not served"), "{diagnosis}");

    // A kind the operator did not allow is never watched; the diagnosis says how to allow it.
    create_scope(
        &ctx,
        "gadgets",
        vec![WorkloadReference::new("example.org/v1", "Gadget", "g")],
        HealthScopeSpec::default(),
    )
    .await;
    let scope = wait_scope(&ctx, "gadgets", Duration::from_secs(8), "evaluated", |s| {
        health(s).is_some()
    })
    .await;
    assert_eq!(health(&scope), Some(Health::Unknown));
    let diagnosis = workload_diagnosis(&scope);
    assert!(
        diagnosis.contains("not watched") && diagnosis.contains("--extra-kinds Gadget.example.org"),
        "{diagnosis}"
    );

    shutdown.cancel();
    handle.join().await;
}
