//! healthscope beside the real OAM runtime (oam-kubernetes-runtime v0.3.3, `make oam-runtime`):
//! the runtime renders ApplicationConfigurations into workloads, writes scope refs and runs its
//! own HealthScope controller; healthscope wires, labels and reports without fighting it.
//! Objects are applied with kubectl, as a user would; see tests/support/oam.rs for the setup.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use healthscope::api::{Health, HealthScope};
use healthscope::membership::scope_label_key;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;

use crate::support::builders::{
    AppConfig, claim_crd, deployment_status_at, endpoint_slice, health_scope_json,
};
use crate::support::netns::{Answer, TestHost};
use crate::support::oam::{
    self, HEALTHSCOPE_USER, RUNTIME_USER, RuntimeContext, requests_of, runtime_dir, runtime_example,
};
use crate::support::tools::{helm_on, kubectl_on, repo, run, run_with_input, try_run};
use crate::support::{self, eventually};

/// The runtime retries some reconciles only after 30 s (a ComponentRevision not made yet, a scope
/// not found): waits allow for a few of those on a loaded machine.
const WAIT: Duration = Duration::from_secs(120);
const APP_PORT: u16 = support::netns::APP_PORT;

/// The seed's HealthScope, with short probe settings, as a manifest for kubectl.
fn scope_yaml(name: &str) -> String {
    let spec = json!({"probe-method": "GET", "probe-endpoint": "/health",
                      "probe-timeout": 1, "probe-interval": 2});
    health_scope_json(name, spec).to_string()
}

/// A Component rendering a ContainerizedWorkload that listens on the test host's app port.
/// Not the shared `builders::component`: the runtime renders this one, so it carries the
/// container and its named port (the rendered Service's port, which the probe uses), and some
/// tests edit its image to make a new revision.
fn component_yaml(name: &str) -> String {
    format!(
        "apiVersion: core.oam.dev/v1alpha2\nkind: Component\nmetadata: {{name: {name}}}\nspec:\n  \
         workload:\n    apiVersion: core.oam.dev/v1alpha2\n    kind: ContainerizedWorkload\n    \
         spec:\n      containers:\n        - name: app\n          image: registry.example/app:1\n          \
         ports: [{{containerPort: {APP_PORT}, name: http}}]\n"
    )
}

fn scopes(rc: &RuntimeContext) -> Api<HealthScope> {
    rc.ctx.api()
}

/// The scope's refs as (kind, name), sorted.
async fn refs_of(rc: &RuntimeContext, scope: &str) -> BTreeSet<(String, String)> {
    scopes(rc)
        .get_opt(scope)
        .await
        .ok()
        .flatten()
        .map(|s| {
            s.spec
                .workload_refs
                .iter()
                .map(|r| (r.kind.clone(), r.name.clone()))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_refs(rc: &RuntimeContext, scope: &str, want: &[(&str, &str)]) {
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    let what = format!("scope {scope} refs {want:?}");
    eventually(WAIT, &what, || async {
        (refs_of(rc, scope).await == want).then_some(())
    })
    .await;
}

fn scope_labels(labels: Option<BTreeMap<String, String>>) -> BTreeSet<String> {
    labels
        .unwrap_or_default()
        .into_keys()
        .filter(|k| k.starts_with("healthscope.core.oam.dev/"))
        .collect()
}

fn labels_for(scopes: &[&str]) -> BTreeSet<String> {
    scopes.iter().map(|s| scope_label_key(s)).collect()
}

/// Waits until the runtime rendered the Deployment and the Service of ContainerizedWorkload
/// `name` and both carry exactly the labels of `scopes`.
async fn wait_children_labelled(rc: &RuntimeContext, name: &str, scopes: &[&str]) {
    let want = labels_for(scopes);
    let deployments: Api<Deployment> = rc.ctx.api();
    let services: Api<Service> = rc.ctx.api();
    eventually(
        WAIT,
        &format!("{name}'s Deployment and Service labelled {want:?}"),
        || async {
            let d = deployments.get_opt(name).await.ok().flatten()?;
            let s = services.get_opt(name).await.ok().flatten()?;
            (scope_labels(d.metadata.labels) == want && scope_labels(s.metadata.labels) == want)
                .then_some(())
        },
    )
    .await;
}

fn containerized_workloads(rc: &RuntimeContext) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "core.oam.dev".into(),
        version: "v1alpha2".into(),
        api_version: "core.oam.dev/v1alpha2".into(),
        kind: "ContainerizedWorkload".into(),
        plural: "containerizedworkloads".into(),
    };
    Api::namespaced_with(rc.ctx.client.clone(), rc.namespace(), &resource)
}

fn appconfigs(rc: &RuntimeContext) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "core.oam.dev".into(),
        version: "v1alpha2".into(),
        api_version: "core.oam.dev/v1alpha2".into(),
        kind: "ApplicationConfiguration".into(),
        plural: "applicationconfigurations".into(),
    };
    Api::namespaced_with(rc.ctx.client.clone(), rc.namespace(), &resource)
}

/// Writes what a Deployment controller would: every replica ready, at the current generation.
async fn make_ready(rc: &RuntimeContext, name: &str, ready: bool) {
    let deployments: Api<Deployment> = rc.ctx.api();
    let d = deployments
        .get(name)
        .await
        .expect("the rendered Deployment");
    let replicas = d.spec.replicas.unwrap_or(1);
    let ready_count = if ready { replicas } else { 0 };
    let generation = d
        .metadata
        .generation
        .expect("the API server sets a generation");
    let status = deployment_status_at(generation, ready_count, replicas);
    deployments
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("writing the Deployment's status");
}

/// What the EndpointSlice controller would make for Service `name`: the test host, ready.
async fn add_endpoint(rc: &RuntimeContext, name: &str, host: &TestHost) {
    // The runtime names the Service's port after the component.
    let slice = endpoint_slice(name, name, &host.ip().to_string());
    rc.ctx
        .api::<EndpointSlice>()
        .create(&PostParams::default(), &slice)
        .await
        .expect("creating the EndpointSlice");
}

async fn wait_health(rc: &RuntimeContext, scope: &str, health: Health) -> HealthScope {
    eventually(WAIT, &format!("scope {scope} {health}"), || async {
        scopes(rc)
            .get(scope)
            .await
            .ok()
            .filter(|s| s.status.as_ref().and_then(|st| st.health) == Some(health))
    })
    .await
}

/// Applies the seed's objects: scope, component, application; waits for the rendered children.
async fn seed_app(rc: &RuntimeContext, scope: &str, component: &str, app: &str) {
    rc.apply(&scope_yaml(scope));
    rc.apply(&component_yaml(component));
    rc.apply(
        &AppConfig::new(app)
            .component(component, &[scope])
            .manifest(),
    );
    wait_refs(rc, scope, &[("ContainerizedWorkload", component)]).await;
    wait_children_labelled(rc, component, &[scope]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_wires_refs_and_labels_the_rendered_deployment_and_service_not_the_cw() {
    let rc = RuntimeContext::start("oam-runtime-wire").await;
    // The runtime's own example, with the seed's scope in the nested form.
    rc.apply(&runtime_example(
        "containerized-workload/sample_secret.yaml",
    ));
    rc.apply(&runtime_example(
        "containerized-workload/sample_component.yaml",
    ));
    rc.apply(&scope_yaml("example-health-scope"));
    let app = runtime_example("containerized-workload/sample_application_config.yaml");
    assert!(app.contains("scopeRef:") && app.contains("example-health-scope"));
    rc.apply(&app);

    // The runtime names the workload after the AppConfig's instance-name parameter or the
    // component; whatever it rendered is what the scope refers to.
    let cw_name = eventually(
        WAIT,
        "the runtime renders a ContainerizedWorkload",
        || async {
            let list = containerized_workloads(&rc)
                .list(&Default::default())
                .await
                .ok()?;
            list.items.first().and_then(|cw| cw.metadata.name.clone())
        },
    )
    .await;
    wait_refs(
        &rc,
        "example-health-scope",
        &[("ContainerizedWorkload", &cw_name)],
    )
    .await;
    wait_children_labelled(&rc, &cw_name, &["example-health-scope"]).await;

    // The ContainerizedWorkload itself is never labelled, so its pods are never restarted.
    let cw = containerized_workloads(&rc).get(&cw_name).await.unwrap();
    assert_eq!(scope_labels(cw.metadata.labels), BTreeSet::new());
    let deployment: Deployment = rc.ctx.api().get(&cw_name).await.unwrap();
    let template_labels = deployment.spec.template.metadata.and_then(|m| m.labels);
    assert_eq!(scope_labels(template_labels), BTreeSet::new());

    // The runtime re-applies its workloads (a changed parameter): labels and refs survive.
    let changed = app.replace("wordpress:php7.2", "wordpress:php7.3");
    rc.apply(&changed);
    eventually(WAIT, "the runtime re-applied the new image", || async {
        let d: Deployment = rc.ctx.api().get(&cw_name).await.ok()?;
        let image = d.spec.template.spec?.containers.first()?.image.clone()?;
        (image == "wordpress:php7.3").then_some(())
    })
    .await;
    wait_children_labelled(&rc, &cw_name, &["example-health-scope"]).await;
    wait_refs(
        &rc,
        "example-health-scope",
        &[("ContainerizedWorkload", &cw_name)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_scope_turns_healthy_then_unhealthy_when_the_app_fails_its_probe() {
    let rc = RuntimeContext::start("oam-runtime-health").await;
    let host = TestHost::start();
    seed_app(&rc, "health", "web", "shop").await;
    make_ready(&rc, "web", true).await;
    add_endpoint(&rc, "web", &host).await;
    let scope = wait_health(&rc, "health", Health::Healthy).await;
    let status = scope.status.unwrap();
    assert_eq!(status.healthy_of_total.as_deref(), Some("1/1"));

    host.answer(Answer::Status(500));
    let scope = wait_health(&rc, "health", Health::Unhealthy).await;
    let text = serde_json::to_string(&scope.status).unwrap();
    assert!(
        text.contains("500"),
        "the diagnosis names the answer: {text}"
    );

    host.answer(Answer::Status(200));
    wait_health(&rc, "health", Health::Healthy).await;
}

/// `kubectl get healthscope NAME` columns: NAME, HEALTH, HEALTHY, AGE.
fn health_column(kubeconfig: &Path, namespace: &str, scope: &str) -> String {
    let out = run(kubectl_on(kubeconfig).args([
        "get",
        "healthscope",
        scope,
        "-n",
        namespace,
        "--no-headers",
        "-o",
        "custom-columns=HEALTH:.status.health",
    ]));
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_no_status_war_at_rest_and_one_write_per_change() {
    let rc = RuntimeContext::start("oam-runtime-war").await;
    let host = TestHost::start();
    seed_app(&rc, "calm", "web", "calm").await;
    make_ready(&rc, "web", true).await;
    add_endpoint(&rc, "web", &host).await;
    wait_health(&rc, "calm", Health::Healthy).await;
    // Let the first writes and the runtime's first attempts settle.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let admin = rc.ctx.client.clone();
    let denied_before = denied_status_writes(&admin).await;
    let runtime_before = requests_of(&admin, RUNTIME_USER).await;
    let healthscope_before = requests_of(&admin, HEALTHSCOPE_USER).await;
    let version = scopes(&rc)
        .get("calm")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let window = Duration::from_secs(60);
    let started = Instant::now();
    let mut polls = 0;
    while started.elapsed() < window {
        let health = health_column(&rc.kubeconfig, rc.namespace(), "calm");
        assert_eq!(
            health,
            "healthy",
            "HEALTH column after {:?}",
            started.elapsed()
        );
        let now = scopes(&rc)
            .get("calm")
            .await
            .unwrap()
            .metadata
            .resource_version;
        assert_eq!(
            now,
            version,
            "the scope changed at rest after {:?}",
            started.elapsed()
        );
        polls += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let runtime_requests = requests_of(&admin, RUNTIME_USER).await - runtime_before;
    let healthscope_requests = requests_of(&admin, HEALTHSCOPE_USER).await - healthscope_before;
    let denied = denied_status_writes(&admin).await - denied_before;
    println!(
        "at rest for {window:?} ({polls} polls): runtime {runtime_requests} requests (all \
         namespaces), healthscope {healthscope_requests}, runtime status writes denied {denied}"
    );
    // The counts cover every namespace of this control plane, where other tests run at the same
    // time: printed for the record, not bounded here (bench/coexist.py measures one scope alone).

    // One real change: exactly one status write follows.
    let mut watcher_versions = BTreeSet::new();
    make_ready(&rc, "web", false).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let scope = scopes(&rc).get("calm").await.unwrap();
        if let Some(v) = scope.metadata.resource_version
            && Some(&v) != version.as_ref()
        {
            watcher_versions.insert(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        watcher_versions.len(),
        1,
        "one change, one status write: saw versions {watcher_versions:?}"
    );
    wait_health(&rc, "calm", Health::Unhealthy).await;
}

/// Status writes the status protection policy denied so far (the runtime's, here).
async fn denied_status_writes(admin: &kube::Client) -> f64 {
    support::apiserver_counter(
        admin,
        "apiserver_validating_admission_policy_check_total",
        &[("enforcement_action", "deny")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_status_writes_without_health_are_denied_and_health_stays() {
    let rc = RuntimeContext::start("oam-runtime-protect").await;
    seed_app(&rc, "kept", "web", "kept").await;
    // Unhealthy: the Deployment never got ready and its Service has no endpoints.
    wait_health(&rc, "kept", Health::Unhealthy).await;
    // What the runtime's HealthScope controller does: a whole-status update through a type
    // that lacks healthscope's fields. Others write the scope meanwhile (the runtime's refs), so
    // an update from a stale read is refused with 409 before admission: read again and retry.
    let err = eventually(WAIT, "the stripped status write answered", || async {
        let mut stripped = scopes(&rc).get("kept").await.ok()?;
        if let Some(status) = stripped.status.as_mut() {
            status.health = None;
            status.healthy_of_total = None;
            status.observed_generation = None;
        }
        match scopes(&rc)
            .replace_status("kept", &PostParams::default(), &stripped)
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 409 => None,
            Err(err) => Some(err),
            Ok(_) => panic!("a status write that drops health is denied"),
        }
    })
    .await;
    assert!(err.to_string().contains("status.health"), "{err}");
    let after = scopes(&rc).get("kept").await.unwrap();
    assert_eq!(after.status.and_then(|s| s.health), Some(Health::Unhealthy));
    // The runtime's own attempts were denied too, and logged by it as errors.
    eventually(WAIT, "the runtime's status update denied", || async {
        oam::runtime_env()
            .runtime_log()
            .contains("cannot update health scope status")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_component_removed_from_the_appconfig_leaves_the_scope() {
    let rc = RuntimeContext::start("oam-runtime-remove").await;
    rc.apply(&scope_yaml("pair"));
    rc.apply(&component_yaml("front"));
    rc.apply(&component_yaml("back"));
    rc.apply(
        &AppConfig::new("pair")
            .component("front", &["pair"])
            .component("back", &["pair"])
            .manifest(),
    );
    wait_refs(
        &rc,
        "pair",
        &[
            ("ContainerizedWorkload", "front"),
            ("ContainerizedWorkload", "back"),
        ],
    )
    .await;
    wait_children_labelled(&rc, "back", &["pair"]).await;

    rc.apply(
        &AppConfig::new("pair")
            .component("front", &["pair"])
            .manifest(),
    );
    wait_refs(&rc, "pair", &[("ContainerizedWorkload", "front")]).await;
    // Stays out: neither the runtime nor healthscope's wiring loop puts it back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        refs_of(&rc, "pair").await,
        BTreeSet::from([("ContainerizedWorkload".to_string(), "front".to_string())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_revision_named_workload_follows_status_workloads() {
    let rc = RuntimeContext::start("oam-runtime-revision").await;
    let admin = oam::runtime_env().admin_kubeconfig().to_path_buf();
    // The runtime's versioning example: a trait whose definition enables revisions. Its CRD
    // (SimpleRolloutTrait) is not shipped by the runtime; the test defines a minimal one.
    run(kubectl_on(&admin)
        .args(["apply", "-f"])
        .arg(runtime_dir().join("examples/component-versioning/definition.yaml")));
    run_with_input(
        kubectl_on(&admin).args(["apply", "-f", "-"]),
        Some(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
             metadata: {name: simplerollouttraits.extend.oam.dev}\nspec:\n  group: extend.oam.dev\n  \
             names: {kind: SimpleRolloutTrait, plural: simplerollouttraits, singular: simplerollouttrait}\n  \
             scope: Namespaced\n  versions:\n    - name: v1alpha2\n      served: true\n      storage: true\n      \
             schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
        ),
    );
    run(kubectl_on(&admin).args([
        "wait",
        "--for=condition=Established",
        "crd/simplerollouttraits.extend.oam.dev",
    ]));
    rc.apply(&scope_yaml("versions"));
    rc.apply(&component_yaml("web"));
    let app = runtime_example("component-versioning/versioning-demo-app.yaml")
        .replace("example-component", "web")
        + "      scopes:\n        - scopeRef: {apiVersion: core.oam.dev/v1alpha2, kind: HealthScope, name: versions}\n";
    rc.apply(&app);
    wait_refs(&rc, "versions", &[("ContainerizedWorkload", "web-v1")]).await;
    wait_children_labelled(&rc, "web-v1", &["versions"]).await;
    // Never the predicted name: the runtime never rendered `web`.
    assert!(
        !refs_of(&rc, "versions")
            .await
            .contains(&("ContainerizedWorkload".to_string(), "web".to_string()))
    );

    // A new component revision: the runtime renders web-v2; the scope follows.
    rc.apply(&component_yaml("web").replace("registry.example/app:1", "registry.example/app:2"));
    wait_refs(&rc, "versions", &[("ContainerizedWorkload", "web-v2")]).await;
    wait_children_labelled(&rc, "web-v2", &["versions"]).await;
    // The old revision's workload stays (its trait would remove it) but leaves the scope.
    wait_children_labelled(&rc, "web-v1", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_flat_scope_form_is_denied_naming_the_scope_ref_form() {
    let rc = RuntimeContext::start("oam-runtime-flat").await;
    rc.apply(&scope_yaml("flat"));
    rc.apply(&component_yaml("web"));
    // The seed wrote the scope flat. kubectl's strict field validation refuses it against the
    // runtime's CRD; without that validation our webhook still refuses it, naming the form.
    let flat = "apiVersion: core.oam.dev/v1alpha2\nkind: ApplicationConfiguration\n\
                metadata: {name: flat}\nspec:\n  components:\n    - componentName: web\n      \
                scopes:\n        - {apiVersion: core.oam.dev/v1alpha2, kind: HealthScope, name: flat}\n";
    let (ok, out) = try_run(rc.kubectl().args(["apply", "-f", "-"]), Some(flat));
    assert!(!ok, "the flat form is refused: {out}");
    let (ok, out) = try_run(
        rc.kubectl().args(["apply", "--validate=false", "-f", "-"]),
        Some(flat),
    );
    assert!(
        !ok,
        "the flat form is refused without validation too: {out}"
    );
    assert!(
        out.contains("scopeRef"),
        "the message names the right form: {out}"
    );
    assert!(appconfigs(&rc).get_opt("flat").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_own_updates_go_through_and_delete_unwires() {
    let rc = RuntimeContext::start("oam-runtime-finalize").await;
    seed_app(&rc, "bye", "web", "bye").await;
    // The runtime's own writes went through the webhooks: its finalizer and its status.
    eventually(
        WAIT,
        "the runtime's finalizer and status.workloads",
        || async {
            let app = appconfigs(&rc).get("bye").await.ok()?;
            let finalizers = app.metadata.finalizers.clone().unwrap_or_default();
            (finalizers
                .iter()
                .any(|f| f == "scope.finalizer.core.oam.dev")
                && app.data["status"]["workloads"].is_array())
            .then_some(())
        },
    )
    .await;

    appconfigs(&rc)
        .delete("bye", &DeleteParams::default())
        .await
        .unwrap();
    // The runtime removes its finalizer (an update our webhooks must let through) and its refs.
    eventually(WAIT, "the AppConfig is gone", || async {
        appconfigs(&rc)
            .get_opt("bye")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    wait_refs(&rc, "bye", &[]).await;
    assert!(
        !oam::runtime_env()
            .runtime_log()
            .contains("denied the request"),
        "a webhook denied one of the runtime's writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_spec_example_probe_timeout_equal_to_interval_is_accepted() {
    let rc = RuntimeContext::start("oam-runtime-spec-example").await;
    // The OAM spec's HealthScope example (with the workloadRefs the runtime's CRD requires).
    let example = json!({"probe-timeout": 5, "probe-interval": 5});
    rc.apply(&health_scope_json("example-health-scope", example).to_string());
    let scope = wait_health(&rc, "example-health-scope", Health::Healthy).await;
    assert_eq!(scope.spec.probe_timeout, Some(5));
    // Above the interval is still refused, with the reason (by the CRD schema itself).
    let (ok, out) = try_run(
        rc.kubectl().args(["apply", "-f", "-"]),
        Some(
            &health_scope_json("too-slow", json!({"probe-timeout": 6, "probe-interval": 5}))
                .to_string(),
        ),
    );
    assert!(
        !ok && out.contains("probe-timeout may not exceed probe-interval"),
        "{out}"
    );
}

/// A control plane of the test's own for installing both charts (they install cluster-wide
/// objects that would reach other tests).
fn own_plane(name: &str) -> support::TestEnv {
    let dir = support::run_dir(name, 0).expect("a run directory");
    support::spawn(&support::testenv_bin(), &dir, &[]).expect("a control plane of its own")
}

/// healthscope's chart, installed or upgraded as the README says (certificates from a test CA).
fn helm_healthscope(kubeconfig: &Path, verb: &str, certs: &Path) {
    run(helm_on(kubeconfig)
        .args([verb, "healthscope"])
        .arg(repo().join("charts/healthscope"))
        .args(["-n", "healthscope-system", "--create-namespace"])
        .arg("--set-file")
        .arg(format!(
            "certificate.caBundle={}",
            certs.join("ca.crt").display()
        ))
        .arg("--set-file")
        .arg(format!(
            "certificate.tlsCrt={}",
            certs.join("tls.crt").display()
        ))
        .arg("--set-file")
        .arg(format!(
            "certificate.tlsKey={}",
            certs.join("tls.key").display()
        )));
}

/// The runtime's chart, installed or upgraded as its README says.
fn helm_runtime(kubeconfig: &Path, verb: &str) {
    run(helm_on(kubeconfig)
        .args([verb, "oam"])
        .arg(runtime_dir().join("chart"))
        .args(["-n", "oam-system", "--create-namespace"]));
}

/// Certificates for the chart, as `make certs` makes them.
fn certs(dir: &Path) {
    run(
        std::process::Command::new(env!("CARGO_BIN_EXE_healthscope"))
            .args([
                "certs",
                "--service",
                "healthscope",
                "--namespace",
                "healthscope-system",
                "--out-dir",
            ])
            .arg(dir),
    );
}

/// What both install orders must end with: healthscope's HealthScope CRD (a superset of the
/// runtime's, with both categories), the runtime's other CRDs untouched by healthscope's chart.
async fn assert_working_crds(kubeconfig: &Path, runtime_installed: bool) {
    let client = kube::Client::try_from(support::config_from(kubeconfig).await).unwrap();
    let problems = healthscope::crd::check(&client).await.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let hs = crds.get(healthscope::crd::HEALTHSCOPE_CRD).await.unwrap();
    let categories = hs.spec.names.categories.clone().unwrap_or_default();
    assert!(
        categories.contains(&"oam".to_string()) && categories.contains(&"crossplane".to_string()),
        "{categories:?}"
    );
    let runtime_crds = [
        "applicationconfigurations.core.oam.dev",
        "components.core.oam.dev",
        "containerizedworkloads.core.oam.dev",
    ];
    // The rest of the working state: healthscope's status protection from its chart, and the
    // runtime's ScopeDefinition (without it the runtime adds no scope refs).
    run(kubectl_on(kubeconfig).args([
        "get",
        "validatingadmissionpolicy/healthscope-status",
        "validatingadmissionpolicybinding/healthscope-status",
    ]));
    if runtime_installed {
        run(kubectl_on(kubeconfig).args(["get", "scopedefinition", "healthscopes.core.oam.dev"]));
    }
    for name in runtime_crds.iter().filter(|_| runtime_installed) {
        let crd = crds.get(name).await.unwrap();
        let release = crd
            .metadata
            .annotations
            .unwrap_or_default()
            .get("meta.helm.sh/release-name")
            .cloned();
        assert_ne!(
            release.as_deref(),
            Some("healthscope"),
            "{name} taken by healthscope's chart"
        );
        assert!(
            crd.metadata
                .managed_fields
                .unwrap_or_default()
                .iter()
                .all(|m| m.manager.as_deref() != Some(healthscope::crd::CRD_FIELD_MANAGER)),
            "{name} written by healthscope"
        );
    }
    // Everything the runtime writes into a HealthScope is still valid: every field of its
    // schema is in the served one, with the same type.
    let runtime_crd: serde_json::Value = serde_saphyr::from_str(
        std::fs::read_to_string(runtime_dir().join("crds/core.oam.dev_healthscopes.yaml"))
            .unwrap()
            .trim_start()
            .trim_start_matches("---"),
    )
    .unwrap();
    let served = serde_json::to_value(&hs.spec.versions[0].schema).unwrap();
    let mut missing = Vec::new();
    superset(
        &served["openAPIV3Schema"],
        &runtime_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        "",
        &mut missing,
    );
    assert!(missing.is_empty(), "not in healthscope's CRD: {missing:?}");
}

/// Every property (and its type) of `theirs` that `ours` lacks, by path.
fn superset(
    ours: &serde_json::Value,
    theirs: &serde_json::Value,
    path: &str,
    missing: &mut Vec<String>,
) {
    if theirs["type"] != ours["type"] && !theirs["type"].is_null() {
        missing.push(format!(
            "{path}: type {} vs {}",
            theirs["type"], ours["type"]
        ));
    }
    if let Some(properties) = theirs["properties"].as_object() {
        for (name, schema) in properties {
            let child = format!("{path}.{name}");
            // The API server serves these for every custom resource, declared or not.
            if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                continue;
            }
            if ours["properties"][name].is_null() {
                missing.push(child);
            } else {
                superset(&ours["properties"][name], schema, &child, missing);
            }
        }
    }
    if !theirs["items"].is_null() {
        superset(
            &ours["items"],
            &theirs["items"],
            &format!("{path}[]"),
            missing,
        );
    }
}

/// healthscope's CRD keeper as `healthscope run --manage-crd` (the chart's default) runs it,
/// against `kubeconfig`, until the returned token is cancelled; the receiver follows its gate.
async fn run_keeper(
    kubeconfig: &Path,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::sync::watch::Receiver<bool>,
) {
    let client = kube::Client::try_from(support::config_from(kubeconfig).await).unwrap();
    let (gate, open) = tokio::sync::watch::channel(false);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(healthscope::crd::keep(
        client,
        true,
        gate,
        None,
        stop.clone(),
    ));
    (stop, open)
}

/// Waits until the served HealthScope CRD is healthscope's and the keeper's gate is open.
async fn wait_ours(
    kubeconfig: &Path,
    open: &mut tokio::sync::watch::Receiver<bool>,
    runtime_installed: bool,
) {
    let client = kube::Client::try_from(support::config_from(kubeconfig).await).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    eventually(WAIT, "healthscope's HealthScope CRD served", || async {
        let crd = crds.get(healthscope::crd::HEALTHSCOPE_CRD).await.ok()?;
        healthscope::crd::is_current(&crd).then_some(())
    })
    .await;
    tokio::time::timeout(WAIT, open.wait_for(|ok| *ok))
        .await
        .expect("the write gate opens")
        .expect("the keeper runs");
    assert_working_crds(kubeconfig, runtime_installed).await;
}

/// A control plane of its own with certificates for healthscope's chart, where both charts
/// are installed and upgraded as their READMEs say.
struct InstallPlane {
    _plane: support::TestEnv,
    kubeconfig: std::path::PathBuf,
    certs: tempfile::TempDir,
}

impl InstallPlane {
    fn start(name: &str) -> Self {
        let plane = own_plane(name);
        let kubeconfig = plane.kubeconfig.clone();
        let certs_dir = tempfile::tempdir().unwrap();
        certs(certs_dir.path());
        Self {
            _plane: plane,
            kubeconfig,
            certs: certs_dir,
        }
    }

    fn runtime(&self, verb: &str) {
        helm_runtime(&self.kubeconfig, verb);
    }

    fn healthscope(&self, verb: &str) {
        helm_healthscope(&self.kubeconfig, verb, self.certs.path());
    }

    /// Upgrades both charts, and checks healthscope's CRD is still served and writable.
    async fn upgrade_both(&self, open: &mut tokio::sync::watch::Receiver<bool>) {
        self.runtime("upgrade");
        self.healthscope("upgrade");
        wait_ours(&self.kubeconfig, open, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_install_runtime_first_then_healthscope_then_upgrades() {
    let plane = InstallPlane::start("oam-install-runtime-first");

    plane.runtime("install");
    // healthscope's process is not running yet: the runtime's CRD is served.
    let client = kube::Client::try_from(support::config_from(&plane.kubeconfig).await).unwrap();
    let problems = healthscope::crd::check(&client).await.unwrap();
    assert!(
        problems.iter().any(|p| p.contains("atomic list")),
        "{problems:?}"
    );

    plane.healthscope("install");
    let (stop, mut open) = run_keeper(&plane.kubeconfig).await;
    wait_ours(&plane.kubeconfig, &mut open, true).await;

    plane.upgrade_both(&mut open).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_install_healthscope_first_then_runtime_then_upgrades() {
    let plane = InstallPlane::start("oam-install-healthscope-first");

    plane.healthscope("install");
    let (stop, mut open) = run_keeper(&plane.kubeconfig).await;
    wait_ours(&plane.kubeconfig, &mut open, false).await;

    // The runtime's chart installs cleanly (healthscope owns no field of the CRD it serves
    // already) and brings its own CRD; healthscope puts its own back.
    plane.runtime("install");
    wait_ours(&plane.kubeconfig, &mut open, true).await;

    plane.upgrade_both(&mut open).await;
    stop.cancel();
}

/// `healthscope run` without `--manage-crd` on a cluster that serves the runtime's HealthScope
/// CRD: it says so once, writes nothing, and starts writing once healthscope's CRD is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_wrong_crd_pauses_writes_until_healthscope_crd_is_served() {
    let plane = own_plane("oam-wrong-crd");
    let kubeconfig = plane.kubeconfig.clone();
    oam::install_runtime_crds(&kubeconfig, &runtime_dir());
    run_with_input(
        kubectl_on(&kubeconfig).args(["apply", "-n", "default", "-f", "-"]),
        // The runtime's CRD knows no probe-method or probe-endpoint (strict decoding refuses them).
        Some(&health_scope_json("paused", json!({})).to_string()),
    );
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("healthscope.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut healthscope = std::process::Command::new(env!("CARGO_BIN_EXE_healthscope"))
        .args([
            "run",
            "--leader-election=false",
            "--admin-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting healthscope run");
    let client = kube::Client::try_from(support::config_from(&kubeconfig).await).unwrap();
    let scopes: Api<DynamicObject> =
        Api::namespaced_with(client, "default", &ApiResource::erase::<HealthScope>(&()));
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually(WAIT, "healthscope reports the wrong CRD", || async {
        read_log().contains("is not healthscope's").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scope = scopes.get("paused").await.unwrap();
    assert!(
        scope.data["status"].is_null(),
        "no status written against the runtime's CRD: {}",
        scope.data["status"]
    );
    assert_eq!(
        read_log().matches("is not healthscope's").count(),
        1,
        "said once: {}",
        read_log()
    );

    // healthscope's CRD, as a user would install it: writes start.
    let crd = run(std::process::Command::new(env!("CARGO_BIN_EXE_healthscope")).arg("crd"));
    run_with_input(
        kubectl_on(&kubeconfig).args(["apply", "--server-side", "--force-conflicts", "-f", "-"]),
        Some(&crd),
    );
    eventually(WAIT, "the scope's status written", || async {
        let scope = scopes.get("paused").await.ok()?;
        scope.data["status"]["health"].as_str().map(str::to_string)
    })
    .await;
    assert!(read_log().contains("writes enabled"), "{}", read_log());
    let _ = healthscope.kill();
    let _ = healthscope.wait();
}

/// A workload kind of the operator's own (a CRD with a WorkloadDefinition), rendered by the
/// runtime from a Component, wired into the scope, and judged by a HealthRule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oam_runtime_health_rule_judges_a_rendered_custom_workload() {
    let rc = RuntimeContext::start("oam-runtime-rule").await;
    let group = format!("{}.example.com", rc.namespace());
    support::install_crds(&rc.ctx.client, &[claim_crd(&group)]).await;
    let api_version = format!("{group}/v1");
    rc.apply(&format!(
        "apiVersion: core.oam.dev/v1alpha2\nkind: WorkloadDefinition\n\
         metadata: {{name: claims.{group}}}\nspec:\n  definitionRef: {{name: claims.{group}}}\n"
    ));
    let rule_name = format!("{}-claims", rc.namespace());
    rc.apply(&format!(
        "apiVersion: healthscope.oam.dev/v1alpha1\nkind: HealthRule\nmetadata: {{name: {rule_name}}}\n\
         spec:\n  target: {{apiVersion: {api_version}, kind: Claim}}\n  \
         unknown: \"!has(object.status) || !has(object.status.readyInstances)\"\n  \
         healthy: object.status.readyInstances == object.spec.instances\n  \
         message: \"'ready ' + string(object.status.readyInstances) + '/' + string(object.spec.instances)\"\n"
    ));
    rc.apply(&scope_yaml("data"));
    rc.apply(&format!(
        "apiVersion: core.oam.dev/v1alpha2\nkind: Component\nmetadata: {{name: db}}\nspec:\n  \
         workload:\n    apiVersion: {api_version}\n    kind: Claim\n    spec: {{instances: 2}}\n"
    ));
    rc.apply(
        &AppConfig::new("store")
            .component("db", &["data"])
            .manifest(),
    );
    wait_refs(&rc, "data", &[("Claim", "db")]).await;

    // Rendered without a status: the rule says its health cannot be told yet.
    let scope = wait_health(&rc, "data", Health::Unknown).await;
    let diagnosis = &scope.status.unwrap().health_conditions[0].diagnosis;
    assert!(
        diagnosis.starts_with(&format!("rule {rule_name}: unknown is true")),
        "{diagnosis}"
    );

    let resource = ApiResource {
        group: group.clone(),
        version: "v1".into(),
        api_version: api_version.clone(),
        kind: "Claim".into(),
        plural: "claims".into(),
    };
    let claims: Api<DynamicObject> =
        Api::namespaced_with(rc.ctx.client.clone(), rc.namespace(), &resource);
    let set_ready = |ready: i64| {
        let claims = claims.clone();
        async move {
            claims
                .patch_status(
                    "db",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"readyInstances": ready}})),
                )
                .await
                .unwrap();
        }
    };
    set_ready(2).await;
    let scope = wait_health(&rc, "data", Health::Healthy).await;
    let diagnosis = &scope.status.unwrap().health_conditions[0].diagnosis;
    assert_eq!(diagnosis, &format!("rule {rule_name}: ready 2/2"));
    set_ready(1).await;
    wait_health(&rc, "data", Health::Unhealthy).await;
    run(kubectl_on(&rc.kubeconfig).args(["delete", "healthrule", &rule_name]));
}
