//! RBAC is proven, not guessed: healthscope runs as a ServiceAccount holding exactly the chart's
//! rules, authenticated by a token alone, and the end-to-end flows work; without any one of the
//! rules they do not.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use healthscope::admission::Overlay;
use healthscope::api::{
    COMPILED_CONDITION, ContainerizedWorkload, Health, HealthRule, HealthRuleSpec, HealthScope,
    RuleTarget,
};
use healthscope::controller::{self, ControllerConfig, ControllerHandle};
use healthscope::leader::{LeaderElector, LeaderState, LeaseConfig};
use healthscope::membership::scope_label_key;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::builders::{
    AppConfig, component, containerized_workload, deployment, deployment_status, endpoint_slice,
    from, health_scope, oam_labels, service, workload_spec,
};
use crate::support::rbac::{
    ChartRbac, ChartWebhook, Denial, Grant, RoleKind, ServiceAccountUnderTest, render_chart,
    request_attributes,
};
use crate::support::{self, TestContext, unique_name};

/// The chart's rules parse, and taking one grant away leaves every other one in place.
#[test]
fn rbac_chart_rules_parse_and_remove_one_grant_at_a_time() {
    let rbac = ChartRbac::from_chart(&render_chart());
    let grants = rbac.grants();
    assert!(grants.iter().any(|g| g.role == RoleKind::Cluster));
    assert!(grants.iter().any(|g| g.role == RoleKind::Lease));
    for grant in &grants {
        let rest = rbac.without(grant).grants();
        let expected: Vec<_> = grants.iter().filter(|g| *g != grant).cloned().collect();
        assert_eq!(rest, expected, "removing {grant}");
    }
    let renamed = rbac.for_lease("other-lease");
    assert!(
        renamed
            .grants()
            .iter()
            .filter(|g| g.role == RoleKind::Lease && !g.resource_names.is_empty())
            .all(|g| g.resource_names == ["other-lease"])
    );
    // Only the Lease is renamed: the CRD grants keep their name.
    let crd_grants = |rbac: &ChartRbac| -> Vec<Grant> {
        rbac.grants()
            .into_iter()
            .filter(|g| g.resource == "customresourcedefinitions")
            .collect()
    };
    assert_eq!(crd_grants(&renamed), crd_grants(&rbac));
    assert!(
        crd_grants(&rbac)
            .iter()
            .all(|g| g.resource_names == [healthscope::crd::HEALTHSCOPE_CRD]),
        "{:?}",
        crd_grants(&rbac)
    );
}

/// API request paths map to RBAC's verbs and resources.
#[test]
fn rbac_requests_map_to_verbs_and_resources() {
    let cases = [
        (
            "GET",
            "/apis/apps/v1/deployments",
            "",
            "list",
            "apps",
            "deployments",
        ),
        (
            "GET",
            "/apis/apps/v1/namespaces/a/deployments",
            "watch=true&resourceVersion=1",
            "watch",
            "apps",
            "deployments",
        ),
        (
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
            "",
            "get",
            "coordination.k8s.io",
            "leases",
        ),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/a/leases/l",
            "",
            "update",
            "coordination.k8s.io",
            "leases",
        ),
        (
            "POST",
            "/apis/events.k8s.io/v1/namespaces/a/events",
            "",
            "create",
            "events.k8s.io",
            "events",
        ),
        (
            "PATCH",
            "/apis/core.oam.dev/v1alpha2/namespaces/a/healthscopes/s/status",
            "",
            "patch",
            "core.oam.dev",
            "healthscopes/status",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/a/services/s",
            "",
            "patch",
            "",
            "services",
        ),
        (
            "GET",
            "/api/v1/namespaces/a/secrets",
            "",
            "list",
            "",
            "secrets",
        ),
        (
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "fieldSelector=metadata.name%3Dhealthscopes.core.oam.dev&watch=true",
            "watch",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
        ),
        (
            "PATCH",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/healthscopes.core.oam.dev",
            "fieldManager=healthscope&force=true",
            "patch",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
        ),
    ];
    for (method, path, query, verb, group, resource) in cases {
        assert_eq!(
            request_attributes(method, path, query),
            (verb.to_string(), group.to_string(), resource.to_string()),
            "{method} {path}?{query}"
        );
    }
}

/// A token from the TokenRequest API authenticates as the ServiceAccount, with its rules only.
#[tokio::test]
async fn rbac_service_account_token_authenticates_as_the_service_account() {
    let ctx = TestContext::new("rbac-token").await;
    let rbac = ChartRbac::from_chart(&render_chart());
    let sa =
        ServiceAccountUnderTest::create(&ctx.client, &ctx.namespace, &ctx.namespace, &rbac).await;
    assert_eq!(
        sa.whoami().await.unwrap(),
        format!("system:serviceaccount:{}:{}", ctx.namespace, sa.name)
    );
    let ns = ctx.namespace.as_str();
    assert!(
        sa.can("list", "core.oam.dev", "healthscopes", ns, None)
            .await
    );
    assert!(!sa.can("list", "", "secrets", ns, None).await);
    assert!(
        !sa.can("delete", "core.oam.dev", "healthscopes", ns, None)
            .await
    );
    // Denied for real, not only in review: the token carries no other identity.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(sa.client.clone(), ns);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("listing Secrets as the ServiceAccount: {other:?}"),
    }
    let denied: Vec<_> = sa
        .denials
        .all()
        .into_iter()
        .map(|d| (d.verb, d.group, d.resource))
        .collect();
    assert_eq!(denied, [("list".into(), String::new(), "secrets".into())]);
    sa.delete().await;
}

// --- healthscope running as the chart's ServiceAccount ------------------------------------------

/// How long each step of the flow may take. With the chart's rules every step finishes well
/// within it; without a needed rule some step does not finish at all.
const STEP_BOUND: Duration = Duration::from_secs(6);
/// Variants running at once (each: a ServiceAccount, a webhook, a controller, a namespace).
const PARALLEL_VARIANTS: usize = 4;

const APP: &str = "app";
const SCOPE: &str = "scope";

/// healthscope's parts, in this process, all authenticated as one ServiceAccount: the webhook
/// (registered through the chart's webhook configurations), leader election and the
/// controller with its wiring loop, restricted to one namespace.
struct Running {
    sa: ServiceAccountUnderTest,
    webhook: ChartWebhook,
    controller: ControllerHandle,
    leader: LeaderState,
    elector: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    identity: String,
    lease_name: String,
}

impl Running {
    async fn start(admin: &Client, namespace: &str, chart: &[Value], rbac: &ChartRbac) -> Self {
        let lease_name = unique_name("healthscope-lease");
        let rbac = rbac.for_lease(&lease_name);
        let sa = ServiceAccountUnderTest::create(admin, namespace, namespace, &rbac).await;
        let webhook = ChartWebhook::start(
            chart,
            admin,
            namespace,
            &sa.username(),
            sa.client.clone(),
            // A snapshot that has seen nothing: every lookup misses, so the webhook reads each
            // object it needs from the API server, as it does for objects created a moment
            // before their admission.
            Arc::new(Overlay::default()),
        )
        .await;
        let shutdown = CancellationToken::new();
        let identity = format!("{}-0", sa.name);
        let lease = LeaseConfig {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(300),
            ..LeaseConfig::new(&lease_name, namespace, &identity)
        };
        let (leader, elector) = LeaderElector::spawn(sa.client.clone(), lease, shutdown.clone());
        let controller = controller::start(
            sa.client.clone(),
            ControllerConfig {
                namespace: Some(namespace.to_string()),
                min_probe_interval: Duration::from_secs(1),
                identity: identity.clone(),
                ..ControllerConfig::default()
            },
            leader.clone(),
            shutdown.clone(),
        )
        .expect("the controller starts");
        Self {
            sa,
            webhook,
            controller,
            leader,
            elector,
            shutdown,
            identity,
            lease_name,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.controller.join()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.elector).await;
        self.webhook.stop().await;
        self.sa.delete().await;
    }
}

/// The steps of the end-to-end flow, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    CrdApplied,
    CrdChecked,
    LeaseAcquired,
    LeaseRenewed,
    WorkloadsRendered,
    AppConfigAdmitted,
    RefsWired,
    ChildrenLabelledAtAdmission,
    WiringLabelledWorkloads,
    ScopeHealthy,
    EventRecorded,
    EventRepeated,
    RuleCompiled,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CrdApplied => "healthscope applies its HealthScope CRD (--manage-crd)",
            Step::CrdChecked => "healthscope watches the served HealthScope CRD",
            Step::LeaseAcquired => "the Lease is acquired",
            Step::LeaseRenewed => "the Lease is renewed",
            Step::WorkloadsRendered => "the workloads are created (through the webhook)",
            Step::AppConfigAdmitted => {
                "the webhook admits the AppConfig without a warning, reading what it lacks live"
            }
            Step::RefsWired => {
                "the controller wires the stored AppConfig's workloads into the scope"
            }
            Step::ChildrenLabelledAtAdmission => {
                "the webhook labels a ContainerizedWorkload's children at admission"
            }
            Step::WiringLabelledWorkloads => {
                "the wiring loop labels the workloads rendered before the AppConfig (not the \
                 ContainerizedWorkload)"
            }
            Step::ScopeHealthy => "the scope's status turns healthy with every workload",
            Step::EventRecorded => "a HealthChanged Event is recorded on a transition",
            Step::EventRepeated => "a repeated transition updates the Event's series",
            Step::RuleCompiled => {
                "the controller sees a HealthRule and writes its Compiled condition"
            }
        })
    }
}

/// How long each step took, or the step that did not complete.
type FlowResult = Result<Vec<(Step, Duration)>, Failure>;

#[derive(Debug)]
struct Failure {
    step: Step,
    detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.detail)
    }
}

fn fail(step: Step) -> impl Fn(kube::Error) -> Failure {
    move |e| Failure {
        step,
        detail: e.to_string(),
    }
}

/// Polls `check` until it succeeds, or fails the step after [`STEP_BOUND`] with the last reason.
async fn within<T, F, Fut>(step: Step, mut check: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + STEP_BOUND;
    loop {
        let last = match check().await {
            Ok(value) => return Ok(value),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            return Err(Failure {
                step,
                detail: format!("not within {STEP_BOUND:?}: {last}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The components of the application: one per built-in workload kind.
const COMPONENTS: [(&str, &str, &str); 6] = [
    ("web", "apps/v1", "Deployment"),
    ("db", "apps/v1", "StatefulSet"),
    ("agent", "apps/v1", "DaemonSet"),
    ("cache", "apps/v1", "ReplicaSet"),
    ("front", "v1", "Service"),
    ("api", "core.oam.dev/v1alpha2", "ContainerizedWorkload"),
];

/// Healthy status of every workload kind but the ContainerizedWorkload (judged by children).
async fn set_healthy(admin: &Client, ns: &str) -> Result<(), kube::Error> {
    let pp = PatchParams::default();
    Api::<Deployment>::namespaced(admin.clone(), ns)
        .patch_status("web", &pp, &Patch::Merge(deployment_status(1, 1)))
        .await?;
    Api::<StatefulSet>::namespaced(admin.clone(), ns)
        .patch_status("db", &pp, &Patch::Merge(json!({ "status": {
            "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "currentReplicas": 1,
            "updatedReplicas": 1, "availableReplicas": 1, "currentRevision": "r1", "updateRevision": "r1" } })))
        .await?;
    Api::<DaemonSet>::namespaced(admin.clone(), ns)
        .patch_status("agent", &pp, &Patch::Merge(json!({ "status": {
            "observedGeneration": 1, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
            "updatedNumberScheduled": 1, "numberReady": 1, "numberAvailable": 1, "numberMisscheduled": 0 } })))
        .await?;
    Api::<ReplicaSet>::namespaced(admin.clone(), ns)
        .patch_status(
            "cache",
            &pp,
            &Patch::Merge(json!({ "status": {
            "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "fullyLabeledReplicas": 1 } })),
        )
        .await?;
    Ok(())
}

/// The end-to-end flow, as a user and the OAM runtime drive it (through `admin`), against
/// healthscope running as the ServiceAccount. Returns how long each step took.
async fn flow(admin: &Client, ns: &str, hs: &Running) -> FlowResult {
    let mut took = Vec::new();
    let mut clock = Instant::now();
    let mut done = |step: Step, clock: &mut Instant| {
        took.push((step, clock.elapsed()));
        *clock = Instant::now();
    };
    let pp = PostParams::default();
    let label = scope_label_key(SCOPE);
    let has_label = |labels: Option<&std::collections::BTreeMap<String, String>>| {
        labels.is_some_and(|l| l.get(&label).map(String::as_str) == Some("true"))
    };

    // What `healthscope run --manage-crd` does first: watch the served HealthScope CRD by its
    // name (list, watch), which gates its writes, and install its own when the served one is
    // not this version's (patch). The CRD is the one the tests installed, so the apply changes
    // nothing but its field managers.
    let sa = &hs.sa.client;
    within(Step::CrdApplied, || async {
        healthscope::crd::apply(sa).await.map_err(|e| e.to_string())
    })
    .await?;
    done(Step::CrdApplied, &mut clock);
    within(Step::CrdChecked, || async {
        let (gate, mut open) = tokio::sync::watch::channel(false);
        let stop = tokio_util::sync::CancellationToken::new();
        let keeper = tokio::spawn(healthscope::crd::keep(
            sa.clone(),
            false,
            gate,
            None,
            stop.clone(),
        ));
        let opened = tokio::time::timeout(Duration::from_secs(2), open.wait_for(|ok| *ok)).await;
        stop.cancel();
        let _ = keeper.await;
        match opened {
            Ok(Ok(_)) => Ok(()),
            _ => Err("the CRD watch never opened the write gate".to_string()),
        }
    })
    .await?;
    done(Step::CrdChecked, &mut clock);

    // Leader election: acquired (create), then renewed (get, update).
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let acquired = within(Step::LeaseAcquired, || async {
        let lease = leases
            .get_opt(&hs.lease_name)
            .await
            .map_err(|e| e.to_string())?;
        let spec = lease.and_then(|l| l.spec).unwrap_or_default();
        match (&spec.holder_identity, hs.leader.is_leader()) {
            (Some(holder), true) if *holder == hs.identity => Ok(spec.renew_time),
            other => Err(format!("holder and leadership: {other:?}")),
        }
    })
    .await?;
    done(Step::LeaseAcquired, &mut clock);
    within(Step::LeaseRenewed, || async {
        let lease = leases
            .get(&hs.lease_name)
            .await
            .map_err(|e| e.to_string())?;
        let spec = lease.spec.unwrap_or_default();
        let renewed = spec.renew_time.is_some() && spec.renew_time != acquired;
        match (spec.holder_identity, renewed, hs.leader.is_leader()) {
            (Some(holder), true, true) if holder == hs.identity => Ok(()),
            other => Err(format!("holder, renewed, leading: {other:?}")),
        }
    })
    .await?;
    done(Step::LeaseRenewed, &mut clock);

    // The scope, the components, and the workloads the OAM runtime rendered before the
    // ApplicationConfiguration arrived (no AppConfig yet: the webhook leaves them unlabelled).
    let step = Step::WorkloadsRendered;
    let scopes: Api<HealthScope> = Api::namespaced(admin.clone(), ns);
    scopes
        .create(&pp, &health_scope(SCOPE, json!({})))
        .await
        .map_err(fail(step))?;
    let components: Api<healthscope::api::Component> = Api::namespaced(admin.clone(), ns);
    for (name, api_version, kind) in COMPONENTS {
        components
            .create(&pp, &component(name, api_version, kind))
            .await
            .map_err(fail(step))?;
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let services: Api<Service> = Api::namespaced(admin.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), ns);
    deployments
        .create(&pp, &deployment("web", oam_labels(APP, "web"), None))
        .await
        .map_err(fail(step))?;
    let mut sts = workload_spec("db");
    sts["serviceName"] = json!("db");
    Api::<StatefulSet>::namespaced(admin.clone(), ns)
        .create(
            &pp,
            &from(json!({ "metadata": { "name": "db", "labels": oam_labels(APP, "db") }, "spec": sts })),
        )
        .await
        .map_err(fail(step))?;
    Api::<DaemonSet>::namespaced(admin.clone(), ns)
        .create(&pp, &from(json!({ "metadata": { "name": "agent", "labels": oam_labels(APP, "agent") }, "spec": workload_spec("agent") })))
        .await
        .map_err(fail(step))?;
    Api::<ReplicaSet>::namespaced(admin.clone(), ns)
        .create(&pp, &from(json!({ "metadata": { "name": "cache", "labels": oam_labels(APP, "cache") }, "spec": workload_spec("cache") })))
        .await
        .map_err(fail(step))?;
    services
        .create(&pp, &service("front", oam_labels(APP, "front")))
        .await
        .map_err(fail(step))?;
    slices
        // A ready endpoint, never contacted: the scope has no probe endpoint.
        .create(&pp, &endpoint_slice("front", "http", "10.0.0.10"))
        .await
        .map_err(fail(step))?;
    let cws: Api<ContainerizedWorkload> = Api::namespaced(admin.clone(), ns);
    let cw = cws
        .create(&pp, &containerized_workload("api", oam_labels(APP, "api")))
        .await
        .map_err(fail(step))?;
    cws.patch_status(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "resources": [
            { "apiVersion": "apps/v1", "kind": "Deployment", "name": "api" },
            { "apiVersion": "v1", "kind": "Service", "name": "api" } ] } })),
    )
    .await
    .map_err(fail(step))?;
    set_healthy(admin, ns).await.map_err(fail(step))?;
    done(step, &mut clock);

    // The ApplicationConfiguration: admission writes nothing; the controller's wiring loop puts
    // the stored AppConfig's workloads into the scope moments later.
    // The webhook admits it without a warning: what its (cold) cache lacks, the scope and the
    // Components, it reads live, so it knows they exist.
    let step = Step::AppConfigAdmitted;
    let app = COMPONENTS
        .iter()
        .fold(AppConfig::new(APP), |app, (name, _, _)| {
            app.component(name, &[SCOPE])
        })
        .json();
    let url = format!("/apis/core.oam.dev/v1alpha2/namespaces/{ns}/applicationconfigurations");
    let request = kube::core::Request::new(url)
        .create(&pp, app.to_string().into_bytes())
        .map_err(|e| Failure {
            step,
            detail: e.to_string(),
        })?;
    let response = admin
        .send(request.map(kube::client::Body::from))
        .await
        .map_err(fail(step))?;
    let warnings: Vec<String> = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if !response.status().is_success() || !warnings.is_empty() {
        return Err(Failure {
            step,
            detail: format!("{}: warnings {warnings:?}", response.status()),
        });
    }
    done(step, &mut clock);

    let step = Step::RefsWired;
    within(step, || async {
        let refs: Vec<(String, String)> = scopes
            .get(SCOPE)
            .await
            .map_err(|e| e.to_string())?
            .spec
            .workload_refs
            .iter()
            .map(|r| (r.kind.clone(), r.name.clone()))
            .collect();
        if refs.len() == COMPONENTS.len() {
            Ok(())
        } else {
            Err(format!("workloadRefs: {refs:?}"))
        }
    })
    .await?;
    done(step, &mut clock);

    // The ContainerizedWorkload's children, rendered now: labelled at admission through their
    // parent.
    let step = Step::ChildrenLabelledAtAdmission;
    let owner = json!([{ "apiVersion": "core.oam.dev/v1alpha2", "kind": "ContainerizedWorkload",
        "name": "api", "uid": cw.meta().uid, "controller": true }]);
    let mut child = deployment("api", json!({}), None);
    child.metadata.owner_references = Some(from(owner.clone()));
    let child = deployments.create(&pp, &child).await.map_err(fail(step))?;
    let mut child_service = service("api", json!({}));
    child_service.metadata.owner_references = Some(from(owner));
    let child_service = services
        .create(&pp, &child_service)
        .await
        .map_err(fail(step))?;
    for (kind, labels) in [
        ("Deployment", child.metadata.labels.as_ref()),
        ("Service", child_service.metadata.labels.as_ref()),
    ] {
        if !has_label(labels) {
            return Err(Failure {
                step,
                detail: format!("the child {kind}'s labels as admitted: {labels:?}"),
            });
        }
    }
    deployments
        .patch_status(
            "api",
            &PatchParams::default(),
            &Patch::Merge(deployment_status(1, 1)),
        )
        .await
        .map_err(fail(step))?;
    slices
        .create(&pp, &endpoint_slice("api", "http", "10.0.0.10"))
        .await
        .map_err(fail(step))?;
    done(step, &mut clock);

    // Workloads rendered before the AppConfig get their labels from the wiring loop; the
    // ContainerizedWorkload never does (the OAM runtime copies its labels into its pods).
    within(Step::WiringLabelledWorkloads, || async {
        let mut missing = Vec::new();
        macro_rules! check {
            ($kind:ty, $name:expr) => {
                let obj = Api::<$kind>::namespaced(admin.clone(), ns)
                    .get($name)
                    .await
                    .map_err(|e| e.to_string())?;
                if !has_label(obj.meta().labels.as_ref()) {
                    missing.push(format!("{} {}", stringify!($kind), $name));
                }
            };
        }
        check!(Deployment, "web");
        check!(StatefulSet, "db");
        check!(DaemonSet, "agent");
        check!(ReplicaSet, "cache");
        check!(Service, "front");
        if !missing.is_empty() {
            return Err(format!("unlabelled: {}", missing.join(", ")));
        }
        let cw = cws.get("api").await.map_err(|e| e.to_string())?;
        match cw.metadata.labels.as_ref() {
            labels if has_label(labels) => {
                Err(format!("the ContainerizedWorkload is labelled: {labels:?}"))
            }
            _ => Ok(()),
        }
    })
    .await?;
    done(Step::WiringLabelledWorkloads, &mut clock);

    let scope_health = |want: Health| {
        let scopes = scopes.clone();
        async move {
            let scope = scopes.get(SCOPE).await.map_err(|e| e.to_string())?;
            let status = scope.status.unwrap_or_default();
            let total = status.scope_health_condition.as_ref().map(|c| c.total);
            if status.health == Some(want) && total == Some(COMPONENTS.len() as i64) {
                Ok(())
            } else {
                Err(format!(
                    "health {:?} of {total:?} workloads: {:?}",
                    status.health,
                    status
                        .health_conditions
                        .iter()
                        .map(|c| (&c.target_workload.name, &c.diagnosis))
                        .collect::<Vec<_>>()
                ))
            }
        }
    };
    within(Step::ScopeHealthy, || scope_health(Health::Healthy)).await?;
    done(Step::ScopeHealthy, &mut clock);

    // healthy → unhealthy: a Warning HealthChanged Event (created).
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let warning_series = || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let warnings: Vec<Option<i32>> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(controller::HEALTH_CHANGED))
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| e.series.as_ref().map(|s| s.count))
            .collect();
        Ok::<_, String>(warnings)
    };
    let set_web = |ready: i32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch_status(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(deployment_status(ready, 1)),
                )
                .await
                .map(drop)
        }
    };
    set_web(0).await.map_err(fail(Step::EventRecorded))?;
    within(Step::EventRecorded, || async {
        scope_health(Health::Unhealthy).await?;
        match warning_series().await? {
            w if !w.is_empty() => Ok(()),
            _ => Err("no Warning HealthChanged Event".to_string()),
        }
    })
    .await?;
    done(Step::EventRecorded, &mut clock);

    // unhealthy → healthy → unhealthy again: the same Warning, now a series (patched).
    set_web(1).await.map_err(fail(Step::EventRepeated))?;
    within(Step::EventRepeated, || scope_health(Health::Healthy)).await?;
    set_web(0).await.map_err(fail(Step::EventRepeated))?;
    within(Step::EventRepeated, || async {
        scope_health(Health::Unhealthy).await?;
        let series = warning_series().await?;
        if series.iter().any(|count| count.unwrap_or(1) >= 2) {
            Ok(())
        } else {
            Err(format!(
                "Warning HealthChanged Events' series counts: {series:?}"
            ))
        }
    })
    .await?;
    done(Step::EventRepeated, &mut clock);

    // A HealthRule (cluster-scoped; its target a kind of this test's own, so no other test's
    // workloads are judged by it): watched (list, watch), compiled, and its Compiled condition
    // written through the status subresource (patch).
    let rules: Api<HealthRule> = Api::all(admin.clone());
    let rule_name = format!("{ns}-rule");
    let mut rule = HealthRule::new(
        &rule_name,
        HealthRuleSpec {
            target: RuleTarget {
                api_version: format!("{ns}.example.com/v1"),
                kind: "Widget".into(),
            },
            healthy: "object.status.ready == true".into(),
            unknown: None,
            message: None,
        },
    );
    rule.metadata.labels =
        Some([(support::TEST_NAMESPACE_LABEL.to_string(), ns.to_string())].into());
    rules
        .create(&pp, &rule)
        .await
        .map_err(fail(Step::RuleCompiled))?;
    let compiled = within(Step::RuleCompiled, || async {
        let rule = rules.get(&rule_name).await.map_err(|e| e.to_string())?;
        let condition = rule.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == COMPILED_CONDITION)
        });
        match condition {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("Compiled condition: {other:?}")),
        }
    })
    .await;
    let _ = rules.delete(&rule_name, &Default::default()).await;
    compiled?;
    done(Step::RuleCompiled, &mut clock);
    Ok(took)
}

/// What one run of the flow found.
struct Outcome {
    result: FlowResult,
    took: Duration,
    /// The requests of healthscope's the API server refused during the flow.
    denials: Vec<Denial>,
}

/// Runs the flow in a fresh namespace against healthscope holding `rbac`.
async fn run_variant(chart: &[Value], rbac: &ChartRbac, name: &str) -> Outcome {
    let ctx = TestContext::new(name).await;
    let hs = Running::start(&ctx.client, &ctx.namespace, chart, rbac).await;
    let start = Instant::now();
    let result = flow(&ctx.client, &ctx.namespace, &hs).await;
    let took = start.elapsed();
    let denials = hs.sa.denials.all();
    hs.stop().await;
    Outcome {
        result,
        took,
        denials,
    }
}

/// With exactly the chart's rules, as its ServiceAccount, every flow completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_chart_rules_run_every_flow_as_the_service_account() {
    let admin = support::client().await;
    support::install_crds(&admin, &healthscope::api::crds()).await;
    let chart = render_chart();
    let rbac = ChartRbac::from_chart(&chart);
    let outcome = run_variant(&chart, &rbac, "rbac-chart-rules").await;
    match &outcome.result {
        Ok(steps) => eprintln!(
            "flow with the chart's rules took {:?}: {steps:?}",
            outcome.took
        ),
        Err(failure) => panic!("with exactly the chart's rules, {failure}"),
    }
    assert!(
        outcome.denials.is_empty(),
        "with exactly the chart's rules, nothing healthscope asks for is refused: {:?}",
        outcome.denials
    );
}

/// Whether healthscope was refused exactly `grant` during the run.
fn denied(outcome: &Outcome, grant: &Grant) -> bool {
    outcome
        .denials
        .iter()
        .any(|d| d.verb == grant.verb && d.group == grant.group && d.resource == grant.resource)
}

/// Without any one grant of the chart's rules, some step of the flow does not complete, and
/// healthscope was refused that grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_without_any_one_rule_the_flow_breaks() {
    let admin = support::client().await;
    support::install_crds(&admin, &healthscope::api::crds()).await;
    let chart = render_chart();
    let rbac = ChartRbac::from_chart(&chart);
    let grants = rbac.grants();
    let started = Instant::now();
    let outcomes: Vec<(Grant, Outcome)> = futures::stream::iter(grants.iter().cloned())
        .map(|grant| {
            let (chart, rbac) = (&chart, &rbac);
            async move {
                let without = rbac.without(&grant);
                let name = format!(
                    "rbac-no-{}-{}",
                    grant.verb,
                    grant.resource.replace('/', "-")
                );
                let mut outcome = run_variant(chart, &without, &name).await;
                // A step may stop for another reason than the missing grant; a run counts only
                // when healthscope was refused that very grant. Otherwise try once more.
                if outcome.result.is_err() && !denied(&outcome, &grant) {
                    outcome = run_variant(chart, &without, &name).await;
                }
                (grant, outcome)
            }
        })
        .buffer_unordered(PARALLEL_VARIANTS)
        .collect()
        .await;
    // Grants that make healthscope timely rather than able: without `watch` on its CRD the
    // watcher falls back to listing it again after each refused watch, which still opens the
    // write gate, so no step of the flow can tell the difference.
    // The same holds for the HealthRule watch. And HealthRules are cluster-scoped: every
    // controller running on this shared control plane (the other variants, the other tests)
    // reads every rule and writes its Compiled condition, so no step of one variant can tell
    // its own missing grant; install_rbac_grants_what_healthscope_does_and_nothing_else proves
    // those grants one by one instead.
    let timeliness_only = [
        "watch apiextensions.k8s.io/customresourcedefinitions",
        "watch healthscope.oam.dev/healthrules",
        "list healthscope.oam.dev/healthrules",
        "patch healthscope.oam.dev/healthrules/status",
    ];
    let mut unneeded = Vec::new();
    let mut unexplained = Vec::new();
    for (grant, outcome) in &outcomes {
        match &outcome.result {
            Ok(_)
                if timeliness_only
                    .iter()
                    .any(|g| grant.to_string().starts_with(g)) =>
            {
                eprintln!("without {grant}: the flow completes (timeliness only, or shared)")
            }
            Ok(_) => unneeded.push(grant.to_string()),
            Err(failure) if denied(outcome, grant) => {
                eprintln!("without {grant}: {failure} ({:.1?})", outcome.took)
            }
            Err(failure) => unexplained.push(format!(
                "without {grant}: {failure}, but {grant} was never refused (refused: {:?})",
                outcome.denials
            )),
        }
    }
    eprintln!("{} variants in {:.1?}", outcomes.len(), started.elapsed());
    assert!(
        unneeded.is_empty(),
        "the flow completes without these grants, so the chart does not need them: {unneeded:?}"
    );
    assert!(
        unexplained.is_empty(),
        "the flow stopped for another reason than the missing grant: {unexplained:#?}"
    );
}
