//! The harness itself: a real API server that installs CRDs, serves watches and the status
//! subresource.

use std::time::Duration;

use futures::StreamExt;
use healthscope::api::{Health, HealthScope, HealthScopeSpec, HealthScopeStatus};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};

use crate::support::{self, TestContext};

#[tokio::test]
async fn testenv_serves_crds_watches_and_status() {
    let ctx = TestContext::new("testenv-watch").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let scopes = ctx.api::<HealthScope>();

    let mut events = watcher::watcher(scopes.clone(), watcher::Config::default()).boxed();
    // The initial list of an empty namespace completes before anything is created.
    loop {
        match events.next().await {
            Some(Ok(Event::InitDone)) => break,
            Some(Ok(_)) => {}
            other => panic!("watch did not start: {other:?}"),
        }
    }

    let scope = HealthScope::new("watched", HealthScopeSpec::default());
    scopes
        .create(&PostParams::default(), &scope)
        .await
        .expect("creating the scope");

    let status = HealthScopeStatus {
        health: Some(Health::Healthy),
        ..Default::default()
    };
    let patch = serde_json::json!({ "status": status });
    scopes
        .patch_status("watched", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching status");

    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(obj)) = event
                && obj.status.as_ref().and_then(|s| s.health) == Some(Health::Healthy)
            {
                return obj;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the status change reached the watcher within 10s");
    assert_eq!(
        seen.spec.workload_refs,
        vec![],
        "spec defaulted to an empty workloadRefs list"
    );
    assert_eq!(
        seen.metadata.namespace.as_deref(),
        Some(ctx.namespace.as_str())
    );
}

#[tokio::test]
async fn testenv_status_subresource_ignores_spec_changes() {
    let ctx = TestContext::new("testenv-status").await;
    support::install_crds(&ctx.client, &healthscope::api::crds()).await;
    let scopes = ctx.api::<HealthScope>();
    scopes
        .create(
            &PostParams::default(),
            &HealthScope::new("s", HealthScopeSpec::default()),
        )
        .await
        .expect("creating the scope");

    // A write to /status that also carries a spec change must leave the spec alone.
    let patch = serde_json::json!({ "spec": { "probe-interval": 99 }, "status": { "health": "unhealthy" } });
    let after = scopes
        .patch_status("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patching status");
    assert_eq!(after.spec.probe_interval, None);
    assert_eq!(after.status.and_then(|s| s.health), Some(Health::Unhealthy));
}
