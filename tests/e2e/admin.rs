//! The admin server (`healthscope::admin`) answering from a real reflector of HealthScopes:
//! `/readyz` 503 until the reflector has listed and the certificates are loaded; a scope
//! unknown before evaluation and healthy once its status is written, in `/scopes` and
//! `/scopes/{namespace}/{name}`; a missing scope a 404 naming it; a deleted scope gone.

use std::time::Duration;

use futures::StreamExt;
use healthscope::admin::{self, AdminState, ErrorBody, Readiness, ScopeDetail, ScopeSummary};
use healthscope::api::{
    Health, HealthScope, HealthScopeSpec, HealthScopeStatus, HealthStatus, ScopeHealthCondition,
    WorkloadHealthCondition, WorkloadReference,
};
use healthscope::metrics::Metrics;
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
    let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(admin::serve_plain(
        listener,
        admin::router(state),
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
    assert_eq!(detail.workloads[0].diagnosis, admin::NOT_EVALUATED);

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
