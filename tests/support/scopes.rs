//! HealthScopes in a test namespace: create one, wait for its status, read its verdicts.

use std::time::Duration;

use healthscope::api::{Health, HealthScope, HealthScopeSpec, WorkloadReference};
use kube::api::PostParams;

use super::TestContext;

/// Creates scope `name` over `refs`, with the other settings of `spec`.
pub async fn create_scope(
    ctx: &TestContext,
    name: &str,
    refs: Vec<WorkloadReference>,
    spec: HealthScopeSpec,
) {
    let scope = HealthScope::new(
        name,
        HealthScopeSpec {
            workload_refs: refs,
            ..spec
        },
    );
    ctx.api::<HealthScope>()
        .create(&PostParams::default(), &scope)
        .await
        .unwrap();
}

/// Waits until the scope's status satisfies `check`; returns the scope.
pub async fn wait_scope(
    ctx: &TestContext,
    name: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&HealthScope) -> bool,
) -> HealthScope {
    let api = ctx.api::<HealthScope>();
    super::eventually(within, what, || {
        let api = api.clone();
        let check = &check;
        async move { api.get(name).await.ok().filter(|s| check(s)) }
    })
    .await
}

/// The scope's health, once the controller wrote one.
pub fn health(scope: &HealthScope) -> Option<Health> {
    scope.status.as_ref().and_then(|s| s.health)
}

/// The diagnosis of the scope's first workload.
pub fn workload_diagnosis(scope: &HealthScope) -> String {
    scope
        .status
        .as_ref()
        .and_then(|s| s.health_conditions.first())
        .map(|c| c.diagnosis.clone())
        .unwrap_or_default()
}
