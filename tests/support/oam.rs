//! The real OAM runtime (oam-kubernetes-runtime, built by `make oam-runtime` into
//! `target/oam-runtime`) running against a control plane of its own, and healthscope beside it.
//!
//! The runtime watches every namespace and runs its own HealthScope controller, so it gets a
//! second kube-testenv (`target/tmp/oam-testenv/<pid>-<attempt>`), started once per test
//! binary, instead of the shared one whose tests make their objects by hand. Set up as a user
//! would: the runtime's CRDs from its chart's `crds/` folder and its definitions from its chart's
//! templates, healthscope's status protection policy from healthscope's chart, the runtime
//! started with its own client certificate (user `oam-runtime`, bound to cluster-admin) and its
//! default flags except `--metrics-addr=0` (no port on the host). healthscope runs in the test
//! process, per test and for its namespace only, as user `healthscope` (also cluster-admin).
//! FlowSchemas `count-oam-runtime` and `count-healthscope` give each user's requests their own
//! APF counter, so a test can count what each controller sends.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use healthscope::controller::{ControllerConfig, ControllerHandle};
use healthscope::leader::LeaderState;
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::tools::{helm_template, kubectl_on, repo, run, run_with_input};
use super::webhook::WebhookUnderTest;
use super::{TestContext, TestEnv, config_from};

/// The runtime's user (client certificate CN) and its FlowSchema.
pub const RUNTIME_USER: &str = "oam-runtime";
/// healthscope's user in these tests and its FlowSchema.
pub const HEALTHSCOPE_USER: &str = "healthscope";

pub struct RuntimeEnv {
    plane: TestEnv,
    pub dir: PathBuf,
    /// Kept so the runtime's wrapper stdin stays open for as long as this process lives.
    _runtime: Mutex<(Child, ChildStdin)>,
}

static RUNTIME: OnceLock<RuntimeEnv> = OnceLock::new();

/// `target/oam-runtime` (or `OAM_RUNTIME_DIR`): the runtime binary, its CRDs, chart and examples.
pub fn runtime_dir() -> PathBuf {
    let dir = std::env::var_os("OAM_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/oam-runtime"));
    if !dir.join("oam-kubernetes-runtime").exists() {
        panic!(
            "no OAM runtime: {} does not exist. Build it with `make oam-runtime`.",
            dir.join("oam-kubernetes-runtime").display()
        );
    }
    dir
}

/// The control plane with the OAM runtime running, shared by this test binary.
pub fn runtime_env() -> &'static RuntimeEnv {
    RUNTIME.get_or_init(|| {
        let runtime = runtime_dir();
        let bin = super::testenv_bin();
        let mut last_err = String::new();
        for attempt in 0..3 {
            let dir = match super::run_dir("oam-testenv", attempt) {
                Ok(dir) => dir,
                Err(e) => panic!("{e}"),
            };
            let users = ["--user", RUNTIME_USER, "--user", HEALTHSCOPE_USER];
            match super::spawn(&bin, &dir, &users) {
                Ok(plane) => {
                    let admin = plane.kubeconfig.clone();
                    prepare_cluster(&admin, &runtime);
                    let child = start_runtime(&runtime, &dir);
                    return RuntimeEnv {
                        plane,
                        dir,
                        _runtime: Mutex::new(child),
                    };
                }
                Err(err) => last_err = err,
            }
        }
        panic!("the OAM runtime's control plane did not start: {last_err}");
    })
}

impl RuntimeEnv {
    /// The admin kubeconfig.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.plane.kubeconfig
    }

    /// healthscope's kubeconfig (user `healthscope`).
    pub fn healthscope_kubeconfig(&self) -> PathBuf {
        self.dir.join(format!("{HEALTHSCOPE_USER}.kubeconfig"))
    }

    /// The runtime's log so far (its controllers log every reconcile error).
    pub fn runtime_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("oam-runtime.log")).unwrap_or_default()
    }
}

/// What the runtime's chart and healthscope's chart would put in a cluster, plus the test's
/// users and their request counters.
pub fn prepare_cluster(admin: &Path, runtime: &Path) {
    let users = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: test-{RUNTIME_USER}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {RUNTIME_USER}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: test-{HEALTHSCOPE_USER}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {HEALTHSCOPE_USER}}}]
{schemas}"#,
        schemas = [RUNTIME_USER, HEALTHSCOPE_USER]
            .iter()
            .map(|user| counting_flow_schema(user))
            .collect::<Vec<_>>()
            .join("")
    );
    run_with_input(kubectl_on(admin).args(["apply", "-f", "-"]), Some(&users));
    install_runtime_crds(admin, runtime);
    // Its definitions (plain YAML templates of its chart).
    for definitions in [
        "scopedefinitions",
        "workloaddefinitions",
        "traitdefinitions",
    ] {
        run(kubectl_on(admin)
            .args(["apply", "-f"])
            .arg(runtime.join(format!("chart/templates/{definitions}.yaml"))));
    }
    apply_status_protection(admin);
}

/// The runtime's CRDs, as its chart installs them (its crds/ folder), established.
pub fn install_runtime_crds(admin: &Path, runtime: &Path) {
    run(kubectl_on(admin)
        .args(["apply", "--server-side", "-f"])
        .arg(runtime.join("chart/crds")));
    run(kubectl_on(admin).args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "--all",
    ]));
}

/// A FlowSchema that gives `user`'s requests a counter of their own
/// (`apiserver_flowcontrol_dispatched_requests_total{flow_schema="count-<user>"}`).
fn counting_flow_schema(user: &str) -> String {
    format!(
        r#"---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: count-{user}}}
spec:
  matchingPrecedence: 500
  priorityLevelConfiguration: {{name: global-default}}
  distinguisherMethod: {{type: ByUser}}
  rules:
    - subjects: [{{kind: User, user: {{name: {user}}}}}]
      resourceRules: [{{verbs: ["*"], apiGroups: ["*"], resources: ["*"], namespaces: ["*"], clusterScope: true}}]
      nonResourceRules: [{{verbs: ["*"], nonResourceURLs: ["*"]}}]
"#
    )
}

/// healthscope's status protection, rendered from its chart and applied.
pub fn apply_status_protection(admin: &Path) {
    let policy = helm_template(
        "healthscope",
        "healthscope-system",
        &["--show-only", "templates/status-protection.yaml"],
    );
    run_with_input(kubectl_on(admin).args(["apply", "-f", "-"]), Some(&policy));
}

/// Set once the status protection policy is seen denying a write.
static STATUS_PROTECTION: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Waits until the API server enforces the status protection policy applied at start: a
/// policy is compiled and bound a moment after it is created, and until then writes pass.
async fn wait_status_protection(ctx: &TestContext) {
    use healthscope::api::{HealthScope, HealthScopeStatus};
    use kube::api::{DeleteParams, PostParams};
    let scopes = ctx.api::<HealthScope>();
    let probe = "status-protection-probe";
    scopes
        .create(
            &PostParams::default(),
            &HealthScope::new(probe, Default::default()),
        )
        .await
        .expect("creating a scope to check the status protection with");
    super::eventually(
        Duration::from_secs(30),
        "the status protection policy enforced",
        || async {
            let mut scope = scopes.get(probe).await.ok()?;
            scope.status = Some(HealthScopeStatus::default());
            match scopes
                .replace_status(probe, &PostParams::default(), &scope)
                .await
            {
                Err(kube::Error::Api(status)) if status.message.contains("status.health") => {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    let _ = scopes.delete(probe, &DeleteParams::default()).await;
}

/// Starts the runtime with its own kubeconfig, logging to `dir/oam-runtime.log`. A shell
/// wrapper kills it when this process's end of its stdin closes, so it never outlives the tests.
fn start_runtime(runtime: &Path, dir: &Path) -> (Child, ChildStdin) {
    let log = std::fs::File::create(dir.join("oam-runtime.log")).expect("creating the runtime log");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#""$0" "$@" </dev/null & pid=$!; cat >/dev/null; kill "$pid"; wait "$pid""#)
        .arg(runtime.join("oam-kubernetes-runtime"))
        .arg("--metrics-addr=0")
        .env("KUBECONFIG", dir.join(format!("{RUNTIME_USER}.kubeconfig")))
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("starting the OAM runtime");
    let stdin = child.stdin.take().expect("the wrapper's stdin");
    (child, stdin)
}

/// One test beside the runtime: a fresh namespace, and healthscope (webhook and controller)
/// serving only it, as user `healthscope`.
pub struct RuntimeContext {
    pub ctx: TestContext,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    // Kept for as long as the test runs; the controller stops when `shutdown` is cancelled.
    _controller: ControllerHandle,
    _webhook: WebhookUnderTest,
    shutdown: CancellationToken,
}

impl RuntimeContext {
    /// A namespace on the runtime's control plane, healthscope's CRD applied over the
    /// runtime's (as `healthscope run --manage-crd` does), its webhook registered for the
    /// namespace and its controller running for it.
    pub async fn start(test: &str) -> Self {
        let env = runtime_env();
        let admin =
            Client::try_from(config_from(env.admin_kubeconfig()).await).expect("admin client");
        let healthscope = Client::try_from(config_from(&env.healthscope_kubeconfig()).await)
            .expect("healthscope client");
        healthscope::crd::apply(&healthscope)
            .await
            .expect("applying healthscope's HealthScope CRD");
        super::eventually(
            Duration::from_secs(30),
            "healthscope's CRD served",
            || async {
                healthscope::crd::check(&healthscope)
                    .await
                    .ok()
                    .filter(|problems| problems.is_empty())
            },
        )
        .await;
        // healthscope's HealthRule CRD, as its chart installs it beside the HealthScope one.
        super::install_crds(
            &admin,
            &[<healthscope::api::HealthRule as kube::CustomResourceExt>::crd()],
        )
        .await;
        let ctx = TestContext::on(admin, test).await;
        STATUS_PROTECTION
            .get_or_init(|| wait_status_protection(&ctx))
            .await;
        let webhook = WebhookUnderTest::serve(&ctx).await;
        let shutdown = CancellationToken::new();
        let mut controller = healthscope::controller::start(
            healthscope.clone(),
            ControllerConfig {
                namespace: Some(ctx.namespace.clone()),
                identity: format!("healthscope-{test}"),
                ..Default::default()
            },
            LeaderState::always(),
            shutdown.clone(),
        )
        .expect("starting the controller");
        controller.wait_ready().await;
        Self {
            ctx,
            kubeconfig: env.admin_kubeconfig().to_path_buf(),
            _controller: controller,
            _webhook: webhook,
            shutdown,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ctx.namespace
    }

    /// kubectl as the admin user, in this test's namespace.
    pub fn kubectl(&self) -> Command {
        let mut command = kubectl_on(&self.kubeconfig);
        command.args(["--namespace", &self.ctx.namespace]);
        command
    }

    /// `kubectl apply -f -` of `yaml` in this test's namespace.
    pub fn apply(&self, yaml: &str) -> String {
        run_with_input(self.kubectl().args(["apply", "-f", "-"]), Some(yaml))
    }
}

impl Drop for RuntimeContext {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One example manifest shipped with the runtime (`examples/<path>`).
pub fn runtime_example(path: &str) -> String {
    let file = runtime_dir().join("examples").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

/// How many requests of `user` the API server has dispatched so far (its counting FlowSchema).
pub async fn requests_of(admin: &Client, user: &str) -> f64 {
    let flow_schema = format!("count-{user}");
    super::apiserver_counter(
        admin,
        "apiserver_flowcontrol_dispatched_requests_total",
        &[("flow_schema", flow_schema.as_str())],
    )
    .await
}
