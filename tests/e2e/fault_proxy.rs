//! The controller and its wiring loop through a fault-injecting proxy (tests/support/fault_proxy)
//! in front of the real API server: with 5xx answers, 409 on writes, delays, dropped
//! connections, lost answers and cut watches, the scopes' refs, the workloads' scope labels and
//! the scopes' health still end up exactly right, and stay right once the faults stop.
//!
//! Only the controller talks through the proxy; the test itself reads and writes the API server
//! directly. Set `FAULT_PROXY_LOG=healthscope=info` to see the controller's log.
//!
//! The last tests each pin down what once went wrong under a fault: a lost status answer losing
//! its HealthChanged event, a delete seen only by a relist waiting for a periodic pass, and a
//! watch cut while idle backing off for 30 s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use healthscope::api::{ApplicationConfiguration, Component, Health, HealthScope};
use healthscope::controller::wiring::owned_refs;
use healthscope::controller::{self, ControllerConfig};
use healthscope::leader::LeaderState;
use healthscope::membership::{SCOPE_LABEL_PREFIX, WIRING_FIELD_MANAGER, field_manager};
use hyper::Method;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::builders::{
    appconfig, component, deployment, deployment_status, from, health_scope, oam_labels,
};
use crate::support::fault_proxy::{Counts, Fault, FaultProxy, Rule, WatchCut};
use crate::support::{self, TestContext};

/// How long one step may take to converge under faults. Far shorter than the wiring loop's
/// 5 min resync, so a step is not passed by the periodic pass alone. Each step's time is
/// printed.
const STEP_TIMEOUT: Duration = Duration::from_secs(25);

fn init_log() {
    if let Ok(filter) = std::env::var("FAULT_PROXY_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// The Deployment the OAM runtime would render for component `web` of AppConfig `app`,
/// 2 replicas, no status yet.
fn rendered_deployment(name: &str, app: &str) -> Deployment {
    let mut labels = oam_labels(app, "web");
    labels["team"] = json!("a");
    deployment(name, labels, Some(2))
}

/// Sets a Deployment's status as its (absent) controller would: `ready` of 2 replicas ready.
async fn set_ready(deployments: &Api<Deployment>, name: &str, ready: i32) {
    let status = deployment_status(ready, 2);
    deployments
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// What the API server stores about the scopes and workloads a scenario checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct World {
    /// Scope → its workloadRefs (`name` for an apps/v1 Deployment), sorted.
    refs: BTreeMap<String, Vec<String>>,
    /// Deployment → the scopes its scope labels name, sorted.
    labels: BTreeMap<String, Vec<String>>,
    /// Scope → health, healthyOfTotal, and whether the status describes the current spec
    /// (observedGeneration is the generation, and it judged exactly the refs).
    health: BTreeMap<String, (Option<Health>, Option<String>, bool)>,
}

type Expected<'a> = (
    &'a [(&'a str, &'a [&'a str])],
    &'a [(&'a str, &'a [&'a str])],
    &'a [(&'a str, Health, &'a str)],
);

fn world((refs, labels, health): Expected) -> World {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    World {
        refs: refs
            .iter()
            .map(|(s, r)| (s.to_string(), strings(r)))
            .collect(),
        labels: labels
            .iter()
            .map(|(d, l)| (d.to_string(), strings(l)))
            .collect(),
        health: health
            .iter()
            .map(|(s, h, of)| (s.to_string(), (Some(*h), Some(of.to_string()), true)))
            .collect(),
    }
}

fn ref_name(r: &healthscope::api::WorkloadReference) -> String {
    if r.api_version == "apps/v1" && r.kind == "Deployment" {
        r.name.clone()
    } else {
        format!("{r:?}")
    }
}

async fn observe(ctx: &TestContext) -> World {
    let mut world = World::default();
    let scopes = ctx
        .api::<HealthScope>()
        .list(&ListParams::default())
        .await
        .expect("listing scopes");
    for scope in scopes {
        let name = scope.metadata.name.clone().unwrap_or_default();
        // Sorted: the order follows the field managers' applies; duplicates stay visible.
        let mut refs: Vec<String> = scope.spec.workload_refs.iter().map(ref_name).collect();
        refs.sort();
        let (health, of, current) = match &scope.status {
            Some(status) => {
                let mut judged: Vec<String> = status
                    .health_conditions
                    .iter()
                    .map(|c| ref_name(&c.target_workload))
                    .collect();
                judged.sort();
                let mut sorted = refs.clone();
                sorted.sort();
                let current =
                    status.observed_generation == scope.metadata.generation && judged == sorted;
                (status.health, status.healthy_of_total.clone(), current)
            }
            None => (None, None, false),
        };
        world.refs.insert(name.clone(), refs);
        world.health.insert(name, (health, of, current));
    }
    let deployments = ctx
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .expect("listing deployments");
    for d in deployments {
        let mut scopes: Vec<String> = d
            .metadata
            .labels
            .unwrap_or_default()
            .into_keys()
            .filter_map(|k| k.strip_prefix(SCOPE_LABEL_PREFIX).map(str::to_string))
            .collect();
        scopes.sort();
        world
            .labels
            .insert(d.metadata.name.unwrap_or_default(), scopes);
    }
    world
}

/// One scenario: the controller running through the proxy in the test's namespace.
struct Run {
    ctx: TestContext,
    proxy: FaultProxy,
    shutdown: CancellationToken,
    controller: Option<controller::ControllerHandle>,
    started: Instant,
    /// (step, how long it took to converge).
    steps: Vec<(String, Duration)>,
    /// A pause before each change, so changes land while faults that act over time (watch
    /// cuts) are in effect.
    pace: Duration,
    step_timeout: Duration,
    /// (scope, AppConfig) pairs whose field manager must own no refs in the end.
    released: Vec<(&'static str, &'static str)>,
    /// Deployments whose other labels must have been kept.
    kept_labels: Vec<&'static str>,
}

impl Run {
    async fn start(name: &str, rules: Vec<Rule>) -> Self {
        init_log();
        let ctx = TestContext::new(name).await;
        support::install_crds(&ctx.client, &healthscope::api::crds()).await;
        let proxy = FaultProxy::start().await.expect("starting the fault proxy");
        // Faults from the first request on: the initial lists go through them too.
        proxy.set_rules(rules);
        let shutdown = CancellationToken::new();
        let controller = controller::start(
            proxy.client(),
            ControllerConfig {
                namespace: Some(ctx.namespace.clone()),
                ..Default::default()
            },
            LeaderState::always(),
            shutdown.clone(),
        )
        .expect("starting the controller");
        Self {
            ctx,
            proxy,
            shutdown,
            controller: Some(controller),
            started: Instant::now(),
            steps: Vec::new(),
            pace: Duration::ZERO,
            step_timeout: STEP_TIMEOUT,
            released: Vec::new(),
            kept_labels: Vec::new(),
        }
    }

    fn paced(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }

    /// Waits until the stored world is exactly `want`; panics with what it saw last.
    async fn converge(&mut self, step: &str, want: &World) {
        let started = Instant::now();
        let mut last = World::default();
        while started.elapsed() < self.step_timeout {
            last = observe(&self.ctx).await;
            if last == *want {
                let took = started.elapsed();
                eprintln!("[{}] {step}: converged in {took:?}", self.ctx.namespace);
                self.steps.push((step.to_string(), took));
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let injected = self.proxy.injected();
        let tail = &injected[injected.len().saturating_sub(30)..];
        panic!(
            "{step}: not converged within {:?}\n want: {want:?}\n last: {last:?}\n \
             proxy: {:?}\n last injected faults:\n  {}",
            self.step_timeout,
            self.proxy.counts(),
            tail.join("\n  ")
        );
    }

    /// The whole scenario: create, change health, change and delete AppConfigs; each step
    /// must converge to exactly its world.
    async fn scenario(&mut self) {
        let pp = PostParams::default();
        let pace = self.pace;
        let ctx = &self.ctx;
        let deployments: Api<Deployment> = ctx.api();
        let apps: Api<ApplicationConfiguration> = ctx.api();
        ctx.api::<Component>()
            .create(&pp, &component("web", "apps/v1", "Deployment"))
            .await
            .unwrap();
        for scope in ["front", "back", "all"] {
            ctx.api::<HealthScope>()
                .create(&pp, &health_scope(scope, json!({})))
                .await
                .unwrap();
        }
        for (name, app) in [
            ("web-1", "shop-1"),
            ("web-2", "shop-2"),
            ("web-3", "shop-3"),
        ] {
            deployments
                .create(&pp, &rendered_deployment(name, app))
                .await
                .unwrap();
        }
        apps.create(&pp, &appconfig("shop-1", "web", "web-1", &["front", "all"]))
            .await
            .unwrap();
        apps.create(&pp, &appconfig("shop-2", "web", "web-2", &["back", "all"]))
            .await
            .unwrap();
        apps.create(&pp, &appconfig("shop-3", "web", "web-3", &["all"]))
            .await
            .unwrap();
        let refs: &[(&str, &[&str])] = &[
            ("all", &["web-1", "web-2", "web-3"]),
            ("back", &["web-2"]),
            ("front", &["web-1"]),
        ];
        let labels: &[(&str, &[&str])] = &[
            ("web-1", &["all", "front"]),
            ("web-2", &["all", "back"]),
            ("web-3", &["all"]),
        ];
        // No Deployment has a status yet: generation 1 is not observed, so unhealthy.
        let want = world((
            refs,
            labels,
            &[
                ("all", Health::Unhealthy, "0/3"),
                ("back", Health::Unhealthy, "0/1"),
                ("front", Health::Unhealthy, "0/1"),
            ],
        ));
        self.converge("wired, workloads not ready", &want).await;

        tokio::time::sleep(pace).await;
        for name in ["web-1", "web-2", "web-3"] {
            set_ready(&deployments, name, 2).await;
        }
        let want = world((
            refs,
            labels,
            &[
                ("all", Health::Healthy, "3/3"),
                ("back", Health::Healthy, "1/1"),
                ("front", Health::Healthy, "1/1"),
            ],
        ));
        self.converge("all healthy", &want).await;

        // A flap: only the last status counts.
        tokio::time::sleep(pace).await;
        set_ready(&deployments, "web-2", 1).await;
        set_ready(&deployments, "web-2", 2).await;
        set_ready(&deployments, "web-2", 1).await;
        let want = world((
            refs,
            labels,
            &[
                ("all", Health::Unhealthy, "2/3"),
                ("back", Health::Unhealthy, "0/1"),
                ("front", Health::Healthy, "1/1"),
            ],
        ));
        self.converge("web-2 unhealthy", &want).await;

        // shop-2 leaves "back": its ref there and web-2's label for it go.
        tokio::time::sleep(pace).await;
        let params = PatchParams::apply("fault-proxy-test").force();
        let mut shop2 = appconfig("shop-2", "web", "web-2", &["all"]);
        shop2.metadata.namespace = Some(self.ctx.namespace.clone());
        apps.patch("shop-2", &params, &Patch::Apply(&shop2))
            .await
            .unwrap();
        let refs: &[(&str, &[&str])] = &[
            ("all", &["web-1", "web-2", "web-3"]),
            ("back", &[]),
            ("front", &["web-1"]),
        ];
        let labels: &[(&str, &[&str])] = &[
            ("web-1", &["all", "front"]),
            ("web-2", &["all"]),
            ("web-3", &["all"]),
        ];
        let want = world((
            refs,
            labels,
            &[
                ("all", Health::Unhealthy, "2/3"),
                ("back", Health::Healthy, "0/0"),
                ("front", Health::Healthy, "1/1"),
            ],
        ));
        self.converge("shop-2 left back", &want).await;

        // shop-1 is deleted, and its Deployment with it (as the garbage collector would).
        tokio::time::sleep(pace).await;
        apps.delete("shop-1", &DeleteParams::default())
            .await
            .unwrap();
        deployments
            .delete("web-1", &DeleteParams::default())
            .await
            .unwrap();
        let refs: &[(&str, &[&str])] =
            &[("all", &["web-2", "web-3"]), ("back", &[]), ("front", &[])];
        let labels: &[(&str, &[&str])] = &[("web-2", &["all"]), ("web-3", &["all"])];
        let want = world((
            refs,
            labels,
            &[
                ("all", Health::Unhealthy, "1/2"),
                ("back", Health::Healthy, "0/0"),
                ("front", Health::Healthy, "0/0"),
            ],
        ));
        self.converge("shop-1 deleted", &want).await;

        tokio::time::sleep(pace).await;
        set_ready(&deployments, "web-2", 2).await;
        let want = world((
            refs,
            labels,
            &[
                ("all", Health::Healthy, "2/2"),
                ("back", Health::Healthy, "0/0"),
                ("front", Health::Healthy, "0/0"),
            ],
        ));
        self.converge("web-2 healthy again", &want).await;
        self.released = vec![("front", "shop-1"), ("all", "shop-1"), ("back", "shop-2")];
        self.kept_labels = vec!["web-2", "web-3"];
    }

    /// Faults off: the last world stays exactly as it is, nothing keeps being rewritten, no
    /// field manager of a gone membership still owns refs, and other labels were kept.
    async fn faults_off_and_check(&mut self) -> Counts {
        let counts = self.proxy.counts();
        self.proxy.clear();
        let want = observe(&self.ctx).await;
        // Let writes already under way (and their watch events) land.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let versions = |world_ctx: &TestContext| {
            let scopes = world_ctx.api::<HealthScope>();
            let deployments = world_ctx.api::<Deployment>();
            async move {
                let mut v: Vec<(String, Option<String>)> = Vec::new();
                for s in scopes.list(&ListParams::default()).await.unwrap() {
                    v.push((
                        format!("scope {}", s.metadata.name.unwrap_or_default()),
                        s.metadata.resource_version,
                    ));
                }
                for d in deployments.list(&ListParams::default()).await.unwrap() {
                    v.push((
                        format!("deployment {}", d.metadata.name.unwrap_or_default()),
                        d.metadata.resource_version,
                    ));
                }
                v
            }
        };
        let before = versions(&self.ctx).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            observe(&self.ctx).await,
            want,
            "the world changed after the faults stopped"
        );
        assert_eq!(
            versions(&self.ctx).await,
            before,
            "objects kept being rewritten after the faults stopped"
        );

        let scopes = self.ctx.api::<HealthScope>();
        for (scope, gone) in self.released.clone() {
            let stored = scopes.get(scope).await.unwrap();
            let managed = stored.metadata.managed_fields.clone().unwrap_or_default();
            let per_app = owned_refs(&managed, &field_manager(gone));
            assert!(
                per_app.is_empty(),
                "{gone}'s field manager of earlier versions owns {per_app:?} in scope {scope}"
            );
            // The wiring owns exactly what the scope holds: nothing of the released AppConfig.
            let wired = owned_refs(&managed, WIRING_FIELD_MANAGER);
            let held: std::collections::BTreeSet<_> = stored
                .spec
                .workload_refs
                .iter()
                .map(|r| (r.api_version.clone(), r.kind.clone(), r.name.clone()))
                .collect();
            assert_eq!(wired, held, "scope {scope} after {gone} was released");
        }
        for name in self.kept_labels.clone() {
            let labels = self
                .ctx
                .api::<Deployment>()
                .get(name)
                .await
                .unwrap()
                .metadata
                .labels
                .unwrap_or_default();
            assert_eq!(
                labels.get("team").map(String::as_str),
                Some("a"),
                "{name}: {labels:?}"
            );
            assert_eq!(
                labels.get("app.oam.dev/component").map(String::as_str),
                Some("web"),
                "{name}: {labels:?}"
            );
        }
        counts
    }

    async fn finish(mut self, test: &str) -> Counts {
        let counts = self.faults_off_and_check().await;
        if std::env::var_os("FAULT_PROXY_LOG").is_some() {
            eprintln!(
                "{test}: injected:\n  {}",
                self.proxy.injected().join("\n  ")
            );
        }
        self.shutdown.cancel();
        if let Some(controller) = self.controller.take() {
            controller.join().await;
        }
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(s, d)| format!("{s} {:.1}s", d.as_secs_f64()))
            .collect();
        eprintln!(
            "{test}: {:.1}s in all; steps: {}; proxy: {counts:?}",
            self.started.elapsed().as_secs_f64(),
            steps.join(", ")
        );
        self.proxy.stop().await;
        counts
    }
}

// ---- the proxy itself --------------------------------------------------------------------------

/// Each fault does what it says, seen from a plain client through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_injects_each_fault_as_configured() {
    let ctx = TestContext::new("fault-proxy-self").await;
    let proxy = FaultProxy::start().await.expect("starting the fault proxy");
    let maps: Api<ConfigMap> = Api::namespaced(proxy.client(), &ctx.namespace);
    let pp = PostParams::default();
    let cm = |name: &str| -> ConfigMap { from(json!({"metadata": {"name": name}})) };

    // Without rules: everything is forwarded.
    maps.create(&pp, &cm("a")).await.unwrap();
    assert_eq!(
        maps.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // 500 on every 2nd list: the first passes, the second is the injected Status.
    proxy.set_rules([Rule::every(2, Fault::ServerError(500))
        .path("configmaps")
        .methods(&[Method::GET])]);
    maps.list(&ListParams::default()).await.unwrap();
    match maps.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 500);
            assert_eq!(status.reason, "InternalError");
            assert!(status.message.contains("fault proxy"), "{status:?}");
        }
        other => panic!("expected an injected 500, got {other:?}"),
    }
    // 503 is retried by kube's default client: the caller never sees it.
    proxy.set_rules([Rule::every(1, Fault::ServerError(503))
        .path("configmaps")
        .limit(2)]);
    maps.get("a").await.expect("503 retried by the client");
    assert_eq!(proxy.counts().server_errors, 3);

    // 409 on writes only; reads pass.
    proxy.set_rules([Rule::every(1, Fault::Conflict)]);
    maps.get("a").await.unwrap();
    match maps.create(&pp, &cm("b")).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
        }
        other => panic!("expected an injected 409, got {other:?}"),
    }
    assert!(
        ctx.api::<ConfigMap>().get_opt("b").await.unwrap().is_none(),
        "a 409 forwards nothing"
    );

    // A lost answer: the write happened, the client is told 500.
    proxy.set_rules([Rule::every(1, Fault::LostAnswer(500)).writes()]);
    match maps.create(&pp, &cm("c")).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 500),
        other => panic!("expected a lost answer, got {other:?}"),
    }
    assert!(
        ctx.api::<ConfigMap>().get_opt("c").await.unwrap().is_some(),
        "the write happened"
    );

    // A reset: no answer at all.
    proxy.set_rules([Rule::every(1, Fault::Reset)]);
    let reset = maps.get("a").await;
    assert!(
        matches!(
            reset,
            Err(kube::Error::HyperError(_)) | Err(kube::Error::Service(_))
        ),
        "expected a dropped connection, got {reset:?}"
    );

    // A delay.
    proxy.set_rules([Rule::every(1, Fault::Delay(Duration::from_millis(300)))]);
    let started = Instant::now();
    maps.get("a").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A watch cut cleanly after 2 events: the stream ends after exactly 2.
    proxy.set_rules([Rule::every(
        1,
        Fault::CutWatch(WatchCut {
            after_events: Some(2),
            after: Some(Duration::from_secs(20)),
            abrupt: false,
        }),
    )]);
    let version = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for name in ["w1", "w2", "w3"] {
        ctx.api::<ConfigMap>().create(&pp, &cm(name)).await.unwrap();
    }
    let events = watch_events(&maps, &version).await;
    assert_eq!(events, Ok(vec!["w1".to_string(), "w2".to_string()]));
    // ... and abruptly after 1 s: the body breaks instead of ending. (kube's watch stream
    // reads a broken chunked body as a resumable end, like a clean one, after a warning.)
    proxy.set_rules([Rule::every(
        1,
        Fault::CutWatch(WatchCut {
            after_events: None,
            after: Some(Duration::from_secs(1)),
            abrupt: true,
        }),
    )]);
    let version = maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let request = hyper::Request::get(format!(
        "/api/v1/namespaces/{}/configmaps?watch=true&resourceVersion={version}",
        ctx.namespace
    ))
    .body(kube::client::Body::empty())
    .unwrap();
    let answer = proxy.client().send(request).await.unwrap();
    assert!(answer.status().is_success(), "{answer:?}");
    let started = Instant::now();
    let body = http_body_util::BodyExt::collect(answer.into_body()).await;
    assert!(body.is_err(), "expected a broken watch body");
    assert!(started.elapsed() < Duration::from_secs(5));
    let events = watch_events(&maps, &version).await;
    assert_eq!(events, Ok(vec![]), "kube ends a broken watch quietly");

    // An expired watch: the one event is a 410 Expired error.
    proxy.set_rules([Rule::every(1, Fault::ExpireWatch)]);
    let events = watch_events(&maps, &version).await;
    assert!(
        matches!(&events, Err(e) if e.contains("Expired")),
        "expected a 410 Expired, got {events:?}"
    );

    // A watch without rules, ended on demand.
    proxy.clear();
    let watching = tokio::spawn({
        let maps = maps.clone();
        async move { watch_events(&maps, &version).await }
    });
    support::eventually(Duration::from_secs(5), "the watch to be open", || async {
        (proxy.counts().forwarded_watches == 4).then_some(())
    })
    .await;
    assert_eq!(proxy.cut_open_watches("/configmaps"), 1);
    assert_eq!(watching.await.unwrap(), Ok(vec![]));

    let counts = proxy.counts();
    eprintln!("proxy self-test: {counts:?}");
    assert_eq!(counts.conflicts, 1);
    assert_eq!(counts.lost_answers, 1);
    assert_eq!(counts.resets, 1);
    assert!(counts.delays >= 1);
    assert_eq!(counts.watch_cuts, 4);
    assert_eq!(counts.expired_watches, 1);
    proxy.stop().await;
}

/// The names of the ADDED events of one watch until it ends; Err when it breaks.
async fn watch_events(maps: &Api<ConfigMap>, version: &str) -> Result<Vec<String>, String> {
    use futures::StreamExt;
    let params = WatchParams::default().timeout(30);
    let stream = maps
        .watch(&params, version)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = std::pin::pin!(stream);
    let mut names = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(25), stream.next())
        .await
        .map_err(|_| "watch neither ended nor broke".to_string())?
    {
        match event.map_err(|e| e.to_string())? {
            WatchEvent::Added(cm) => names.push(cm.metadata.name.unwrap_or_default()),
            WatchEvent::Error(e) => return Err(e.to_string()),
            _ => {}
        }
    }
    Ok(names)
}

// ---- the controller through the proxy ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_5xx_on_every_third_request() {
    let mut run = Run::start(
        "fault-proxy-5xx",
        vec![
            Rule::every(3, Fault::ServerError(500)),
            // 503 on some more: kube's client retries those by itself.
            Rule::every(7, Fault::ServerError(503)),
        ],
    )
    .await;
    run.scenario().await;
    let counts = run.finish("fault_proxy_5xx_on_every_third_request").await;
    assert!(counts.server_errors >= 20, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_409_on_every_second_write() {
    let mut run = Run::start("fault-proxy-409", vec![Rule::every(2, Fault::Conflict)]).await;
    run.scenario().await;
    let counts = run.finish("fault_proxy_409_on_every_second_write").await;
    assert!(counts.conflicts >= 10, "{counts:?}");
    assert!(counts.forwarded_writes >= 10, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_300ms_delay_on_every_request() {
    let mut run = Run::start(
        "fault-proxy-delay",
        vec![Rule::every(1, Fault::Delay(Duration::from_millis(300)))],
    )
    .await;
    run.scenario().await;
    let counts = run.finish("fault_proxy_300ms_delay_on_every_request").await;
    assert!(counts.delays >= 30, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_connection_reset_on_every_fourth_request() {
    let mut run = Run::start("fault-proxy-reset", vec![Rule::every(4, Fault::Reset)]).await;
    run.scenario().await;
    let counts = run
        .finish("fault_proxy_connection_reset_on_every_fourth_request")
        .await;
    assert!(counts.resets >= 10, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_lost_answers_on_every_third_write() {
    let mut run = Run::start(
        "fault-proxy-lost",
        vec![Rule::every(3, Fault::LostAnswer(500)).writes()],
    )
    .await;
    run.scenario().await;
    let counts = run
        .finish("fault_proxy_lost_answers_on_every_third_write")
        .await;
    assert!(counts.lost_answers >= 5, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_watches_cut_every_few_seconds() {
    let mut run = Run::start(
        "fault-proxy-watch-cut",
        vec![
            // Every other watch breaks mid-stream after 1 s ...
            Rule::every(
                2,
                Fault::CutWatch(WatchCut {
                    after_events: None,
                    after: Some(Duration::from_secs(1)),
                    abrupt: true,
                }),
            ),
            // ... the others end cleanly after 1 event or 2 s, like an API server's timeout.
            Rule::every(
                1,
                Fault::CutWatch(WatchCut {
                    after_events: Some(1),
                    after: Some(Duration::from_secs(2)),
                    abrupt: false,
                }),
            ),
        ],
    )
    .await
    .paced(Duration::from_millis(2500));
    run.scenario().await;
    let counts = run
        .finish("fault_proxy_watches_cut_every_few_seconds")
        .await;
    assert!(counts.watch_cuts >= 50, "{counts:?}");
}

/// Every fault at once, at lower rates, with watches cut often: the same end state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_all_faults_at_once() {
    let mut run = Run::start(
        "fault-proxy-all",
        vec![
            Rule::every(2, Fault::Delay(Duration::from_millis(100))),
            Rule::every(5, Fault::ServerError(500)).watches(false),
            Rule::every(3, Fault::Conflict),
            Rule::every(4, Fault::LostAnswer(500)).writes(),
            Rule::every(7, Fault::Reset).watches(false),
            // Watches fail to start now and then. Only a few times: a watch cut with no event
            // in it does not reset the watcher's backoff, so failures between cuts add up (see
            // fault_proxy_flapping_watches_keep_the_caches_fresh).
            Rule::every(4, Fault::ServerError(500))
                .watches(true)
                .limit(4),
            Rule::every(5, Fault::Reset).watches(true).limit(2),
            Rule::every(
                1,
                Fault::CutWatch(WatchCut {
                    after_events: Some(2),
                    after: Some(Duration::from_millis(1500)),
                    abrupt: false,
                }),
            ),
        ],
    )
    .await
    .paced(Duration::from_millis(1000));
    run.scenario().await;
    let counts = run.finish("fault_proxy_all_faults_at_once").await;
    for (kind, n) in [
        ("delays", counts.delays),
        ("server errors", counts.server_errors),
        ("conflicts", counts.conflicts),
        ("lost answers", counts.lost_answers),
        ("resets", counts.resets),
        ("watch cuts", counts.watch_cuts),
    ] {
        assert!(n >= 3, "only {n} {kind}: {counts:?}");
    }
}

/// The HealthChanged events of scope `scope`, by note.
async fn health_events(ctx: &TestContext, scope: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = ctx.api();
    let mut notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(controller::HEALTH_CHANGED))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(scope))
        .filter_map(|e| e.note)
        .collect();
    notes.sort();
    notes
}

/// Every status write takes effect but its answer is lost: the status still follows the
/// Deployment, and each health transition still gets its event.
///
/// Finding: the status converges, but no HealthChanged event is recorded. The failed write
/// records nothing; the retry finds the cached status already equal to the desired one (the
/// write did land) and returns before the event code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_lost_status_answers_keep_health_events() {
    let mut run = Run::start(
        "fault-proxy-lost-status",
        vec![Rule::every(1, Fault::LostAnswer(500)).path("/status")],
    )
    .await;
    let pp = PostParams::default();
    let deployments: Api<Deployment> = run.ctx.api();
    let mut web = rendered_deployment("web", "none");
    web.metadata.labels = None;
    deployments.create(&pp, &web).await.unwrap();
    set_ready(&deployments, "web", 2).await;
    let mut scope = health_scope("app", json!({}));
    scope.spec.workload_refs = vec![healthscope::api::WorkloadReference::new(
        "apps/v1",
        "Deployment",
        "web",
    )];
    run.ctx
        .api::<HealthScope>()
        .create(&pp, &scope)
        .await
        .unwrap();
    let labels: &[(&str, &[&str])] = &[("web", &[])];
    let refs: &[(&str, &[&str])] = &[("app", &["web"])];
    run.converge(
        "healthy",
        &world((refs, labels, &[("app", Health::Healthy, "1/1")])),
    )
    .await;
    set_ready(&deployments, "web", 1).await;
    run.converge(
        "unhealthy",
        &world((refs, labels, &[("app", Health::Unhealthy, "0/1")])),
    )
    .await;
    set_ready(&deployments, "web", 2).await;
    run.converge(
        "healthy again",
        &world((refs, labels, &[("app", Health::Healthy, "1/1")])),
    )
    .await;
    let counts = run.proxy.counts();
    assert!(counts.lost_answers >= 3, "{counts:?}");

    // healthy → unhealthy and unhealthy → healthy.
    let ctx = &run.ctx;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let notes = health_events(ctx, "app").await;
            if notes.len() >= 2 {
                return notes;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let notes = health_events(ctx, "app").await;
    run.shutdown.cancel();
    if let Some(controller) = run.controller.take() {
        controller.join().await;
    }
    assert!(
        found.is_ok(),
        "health transitions without their events: {notes:?} ({counts:?})"
    );
    assert!(notes[0].starts_with("healthy → unhealthy"), "{notes:?}");
    assert!(notes[1].starts_with("unhealthy → healthy"), "{notes:?}");
}

/// Expires every watch of one kind (410 Gone, `Expired`), cutting the open ones, and waits
/// until the controller met that: from now on it sees the kind only by listing it again.
async fn expire_watches_of(run: &Run, path: &str) {
    let before = run.proxy.counts().expired_watches;
    run.proxy
        .set_rules([Rule::every(1, Fault::ExpireWatch).path(path)]);
    run.proxy.cut_open_watches(path);
    support::eventually(Duration::from_secs(10), "a watch expired", || async {
        (run.proxy.counts().expired_watches > before).then_some(())
    })
    .await;
}

/// Asserts every step converged well before the 30 s periodic passes and the 30 s watch
/// backoff of kube's default would have made it; `why` says what it waited for otherwise.
fn assert_prompt(steps: &[(String, Duration)], why: &str) {
    for (step, took) in steps {
        assert!(
            *took < Duration::from_secs(12),
            "{step} took {took:?}: {why}"
        );
    }
}

/// Watches that expire (410) make the controller list again, and a list shows a delete only as
/// an object missing from it, with no watch event. With the ApplicationConfiguration watches
/// expiring, deleting a namespace's only AppConfig must still remove its refs, as promptly as
/// any other change.
///
/// Finding (fixed: a relist now marks everything for the wiring loop): the wiring loop saw such
/// a delete only at its next periodic pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_expired_appconfig_watches_still_see_a_delete_promptly() {
    let mut run = Run::start("fault-proxy-expired-app", vec![]).await;
    // Long enough to see whether the step converges at all without the periodic pass.
    run.step_timeout = Duration::from_secs(35);
    let pp = PostParams::default();
    let ctx = &run.ctx;
    let deployments: Api<Deployment> = ctx.api();
    ctx.api::<Component>()
        .create(&pp, &component("web", "apps/v1", "Deployment"))
        .await
        .unwrap();
    ctx.api::<HealthScope>()
        .create(&pp, &health_scope("s", json!({})))
        .await
        .unwrap();
    deployments
        .create(&pp, &rendered_deployment("web-1", "solo"))
        .await
        .unwrap();
    set_ready(&deployments, "web-1", 2).await;
    ctx.api::<ApplicationConfiguration>()
        .create(&pp, &appconfig("solo", "web", "web-1", &["s"]))
        .await
        .unwrap();
    run.converge(
        "wired",
        &world((
            &[("s", &["web-1"])],
            &[("web-1", &["s"])],
            &[("s", Health::Healthy, "1/1")],
        )),
    )
    .await;

    // The namespace's only AppConfig goes: its ref must go. (Its Deployment keeps its label:
    // without its AppConfig the wiring no longer knows its scopes; the garbage collector would
    // delete it.)
    expire_watches_of(&run, "/applicationconfigurations").await;
    run.ctx
        .api::<ApplicationConfiguration>()
        .delete("solo", &DeleteParams::default())
        .await
        .unwrap();
    run.converge(
        "the only AppConfig deleted (AppConfig watches expiring)",
        &world((
            &[("s", &[])],
            &[("web-1", &["s"])],
            &[("s", Health::Healthy, "0/0")],
        )),
    )
    .await;
    let steps = run.steps.clone();
    let counts = run
        .finish("fault_proxy_expired_appconfig_watches_still_see_a_delete_promptly")
        .await;
    assert!(counts.expired_watches >= 1, "{counts:?}");
    assert_prompt(
        &steps,
        "a delete seen only by a relist waited for a periodic pass",
    );
}

/// As above for a Deployment a scope references: with the Deployment watches expiring,
/// deleting it must reach the scope's health promptly.
///
/// Finding: the scope is reconciled only at its next periodic requeue (its probe interval, 10 s
/// by default, here 30 s), as no watch event names the deleted Deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_expired_deployment_watches_still_see_a_delete_promptly() {
    let mut run = Run::start("fault-proxy-expired-deploy", vec![]).await;
    run.step_timeout = Duration::from_secs(35);
    let pp = PostParams::default();
    let ctx = &run.ctx;
    let deployments: Api<Deployment> = ctx.api();
    let mut scope = health_scope("t", json!({}));
    scope.spec.probe_interval = Some(30);
    scope.spec.workload_refs = vec![healthscope::api::WorkloadReference::new(
        "apps/v1",
        "Deployment",
        "web",
    )];
    ctx.api::<HealthScope>().create(&pp, &scope).await.unwrap();
    let mut web = rendered_deployment("web", "none");
    web.metadata.labels = None;
    deployments.create(&pp, &web).await.unwrap();
    set_ready(&deployments, "web", 2).await;
    run.converge(
        "healthy",
        &world((
            &[("t", &["web"])],
            &[("web", &[])],
            &[("t", Health::Healthy, "1/1")],
        )),
    )
    .await;

    expire_watches_of(&run, "/deployments").await;
    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    run.converge(
        "a referenced Deployment deleted (Deployment watches expiring)",
        &world((&[("t", &["web"])], &[], &[("t", Health::Unhealthy, "0/1")])),
    )
    .await;
    let steps = run.steps.clone();
    let counts = run
        .finish("fault_proxy_expired_deployment_watches_still_see_a_delete_promptly")
        .await;
    assert!(counts.expired_watches >= 1, "{counts:?}");
    assert_prompt(
        &steps,
        "a delete seen only by a relist waited for a periodic pass",
    );
}

/// Deployment watches are cut every 0.3 s with no event in them, and every other attempt to
/// start one fails (500): the Deployment cache must still follow a status change promptly.
///
/// Finding: it does not. The watches use kube-runtime's default backoff, which is reset only
/// by an item from the watch; a watch that starts, carries no event and is cut yields none, so
/// each failure doubles the backoff of the last (0.8 s, 1.6 s, ... up to 30 s), and the cache
/// goes blind for that long although every other watch attempt works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_flapping_watches_keep_the_caches_fresh() {
    let mut run = Run::start("fault-proxy-flapping", vec![]).await;
    run.step_timeout = Duration::from_secs(35);
    let pp = PostParams::default();
    let deployments: Api<Deployment> = run.ctx.api();
    let mut scope = health_scope("t", json!({}));
    scope.spec.workload_refs = vec![healthscope::api::WorkloadReference::new(
        "apps/v1",
        "Deployment",
        "web",
    )];
    run.ctx
        .api::<HealthScope>()
        .create(&pp, &scope)
        .await
        .unwrap();
    let mut web = rendered_deployment("web", "none");
    web.metadata.labels = None;
    deployments.create(&pp, &web).await.unwrap();
    set_ready(&deployments, "web", 2).await;
    let healthy = world((
        &[("t", &["web"])],
        &[("web", &[])],
        &[("t", Health::Healthy, "1/1")],
    ));
    run.converge("healthy", &healthy).await;

    run.proxy.set_rules([
        Rule::every(2, Fault::ServerError(500))
            .path("/deployments")
            .watches(true),
        Rule::every(
            1,
            Fault::CutWatch(WatchCut {
                after_events: None,
                after: Some(Duration::from_millis(300)),
                abrupt: false,
            }),
        )
        .path("/deployments"),
    ]);
    run.proxy.cut_open_watches("/deployments");
    // The 4th failed start: with a backoff that climbed to 30 s the next watch would come 6.4 to
    // 12.8 s later; healthscope's watch backoff stops at 5 s.
    let proxy = &run.proxy;
    support::eventually(
        Duration::from_secs(40),
        "4 failed Deployment watch starts",
        || async { (proxy.counts().server_errors >= 4).then_some(()) },
    )
    .await;
    let flapped = run.proxy.counts();
    set_ready(&deployments, "web", 1).await;
    run.converge(
        "unhealthy while Deployment watches flap",
        &world((
            &[("t", &["web"])],
            &[("web", &[])],
            &[("t", Health::Unhealthy, "0/1")],
        )),
    )
    .await;
    // How long the Deployment watch stayed down after each failed start: until the watch that
    // followed it was cut (0.3 s after it started).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let timed = run.proxy.injected_timed();
    let blind: Vec<Duration> = timed
        .windows(2)
        .filter(|w| w[0].1.ends_with("-> 500") && w[1].1.ends_with("watch ended"))
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .collect();
    eprintln!(
        "Deployment watch down after each failed start: {blind:?} (proxy when the status changed: {flapped:?})"
    );
    let steps = run.steps.clone();
    let counts = run
        .finish("fault_proxy_flapping_watches_keep_the_caches_fresh")
        .await;
    assert!(counts.server_errors >= 3, "{counts:?}");
    let longest = blind.iter().max().copied().unwrap_or_default();
    assert!(
        longest < Duration::from_secs(8),
        "the Deployment watch stayed down for {longest:?} after one failed start, although \
         every other start worked: {blind:?}"
    );
    assert_prompt(
        &steps,
        "the Deployment watch was backing off although every other attempt worked",
    );
}
