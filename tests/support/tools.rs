//! The external tools the tests run (helm and kubectl from `make tools`), and the chart
//! rendered by `helm template` as objects.
//!
//! Every command runs in the repository root, so paths like `charts/healthscope` and
//! `examples/` work as in the Makefile. A command that fails where it must succeed (or the
//! other way round) panics naming the command and what it printed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;
use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool installed by `make tools` (scripts/install-tools.sh) into target/tools/bin.
pub fn tool(name: &str) -> PathBuf {
    let path = repo().join("target/tools/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make tools` (scripts/install-tools.sh target/tools)",
        path.display()
    );
    path
}

/// helm for what needs no cluster (`template`, `lint`).
pub fn helm() -> Command {
    Command::new(tool("helm"))
}

/// helm against the control plane of `kubeconfig`.
pub fn helm_on(kubeconfig: &Path) -> Command {
    let mut command = helm();
    command.arg("--kubeconfig").arg(kubeconfig);
    command
}

/// kubectl against the control plane shared by this test binary.
pub fn kubectl() -> Command {
    kubectl_on(&super::env().kubeconfig)
}

/// kubectl against the control plane of `kubeconfig`.
pub fn kubectl_on(kubeconfig: &Path) -> Command {
    let mut command = Command::new(tool("kubectl"));
    command.arg("--kubeconfig").arg(kubeconfig);
    command
}

/// Runs a command to completion; panics with its output if it fails. Returns its stdout.
pub fn run(command: &mut Command) -> String {
    run_with_input(command, None)
}

/// Runs a command with `input` on its stdin; panics with its output if it fails. Returns its
/// stdout.
pub fn run_with_input(command: &mut Command, input: Option<&str>) -> String {
    let finished = finish(command, input);
    assert!(
        finished.success,
        "{command:?} failed ({}):\n{}{}",
        finished.status, finished.stdout, finished.stderr
    );
    finished.stdout
}

/// Runs a command that must fail; returns its stderr.
pub fn run_failing(command: &mut Command) -> String {
    let finished = finish(command, None);
    assert!(
        !finished.success,
        "{command:?} succeeded:\n{}{}",
        finished.stdout, finished.stderr
    );
    finished.stderr
}

/// Runs a command with `input` on its stdin; whether it succeeded, and its output (stdout,
/// then stderr).
pub fn try_run(command: &mut Command, input: Option<&str>) -> (bool, String) {
    let finished = finish(command, input);
    (
        finished.success,
        format!("{}{}", finished.stdout, finished.stderr),
    )
}

struct Finished {
    success: bool,
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a command to completion in the repository root with `input` on its stdin (closed at
/// once without). On a multi-thread runtime the wait leaves the runtime's other tasks running
/// (tests beside the OAM runtime serve the webhook the API server may call meanwhile); a
/// current-thread runtime cannot hand its task off, so it waits in place.
fn finish(command: &mut Command, input: Option<&str>) -> Finished {
    let mut run = || {
        let mut child = command
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
            stdin.write_all(input.as_bytes()).expect("writing stdin");
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {command:?}: {e}"))
    };
    let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    let output = if multi_thread {
        tokio::task::block_in_place(run)
    } else {
        run()
    };
    Finished {
        success: output.status.success(),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `helm template` of the chart with a release name, a namespace and extra arguments; without
/// a caBundle (most cases here do not need one) by the explicit choice
/// `certificate.allowMissingCaBundle`.
pub fn helm_template(release: &str, namespace: &str, args: &[&str]) -> String {
    run(helm()
        .args([
            "template",
            release,
            "charts/healthscope",
            "--namespace",
            namespace,
            "--set",
            "certificate.allowMissingCaBundle=true",
        ])
        .args(args))
}

/// [`helm_template`] as objects.
pub fn render_chart(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    objects(&helm_template(release, namespace, args))
}

/// The objects of a multi-document YAML stream (empty documents skipped).
pub fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("parsing rendered YAML: {e}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The objects of `kind`.
pub fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of `kind` (the chart renders exactly one), as `T` (e.g. a typed object, or
/// `Value` itself).
pub fn only<T: DeserializeOwned>(objects: &[Value], kind: &str) -> T {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "the chart renders one {kind}");
    serde_json::from_value(found[0].clone())
        .unwrap_or_else(|e| panic!("the chart's {kind} does not parse: {e}"))
}
