#!/usr/bin/env python3
"""healthscope beside the real OAM runtime, at rest: who writes the HealthScope, and how often.

Starts a control plane of its own (kube-testenv, with client certificates for the users
`oam-runtime` and `healthscope`, both bound to cluster-admin), installs the runtime's chart and
runs the runtime (target/oam-runtime), runs `healthscope run --manage-crd` (no webhook: nothing
is admitted at rest), applies the seed's HealthScope, Component and ApplicationConfiguration,
makes the rendered Deployment ready, and once the scope has a HEALTH watches it for WINDOW seconds
in two phases, side by side in one run:

  protected    healthscope's status protection policy (from its chart) installed, as shipped;
  unprotected  the policy deleted: what the two controllers do without it (the status war).

Per phase it reports HealthScope status writes (resourceVersion changes seen by a watch), HEALTH
flips (changes of the HEALTH column, empty included, polled each second with kubectl), and the
requests per minute of each controller (the API server's APF counters of a FlowSchema per user),
plus the runtime's status writes the policy denied.

usage: bench/coexist.py [--window SECONDS] [--unprotected-window SECONDS] [--release]
Output: a Markdown table on stdout (and target/bench/coexist.md).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target/tools/bin")
OAM = os.environ.get("OAM_RUNTIME_DIR", os.path.join(ROOT, "target/oam-runtime"))
TESTENV = os.environ.get("KUBE_TESTENV_BIN", os.path.join(ROOT, "target/testenv/kube-testenv"))
NS = "bench"


def sh(*args, input=None, check=True):
    out = subprocess.run(args, input=input, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {out.stderr}{out.stdout}")
    return out.stdout


class Cluster:
    def __init__(self, work):
        self.work = work
        self.procs = []
        users = ["--user", "oam-runtime", "--user", "healthscope"]
        log = open(os.path.join(work, "apiserver.log"), "w")
        plane = subprocess.Popen([TESTENV, "--dir", work, *users], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=log, text=True)
        self.procs.append(plane)
        for line in plane.stdout:
            if line.startswith("KUBE_TESTENV_READY"):
                break
            if line.startswith("KUBE_TESTENV_FAILED"):
                sys.exit(line)
        self.kubeconfig = os.path.join(work, "kubeconfig")

    def kubectl(self, *args, input=None, check=True):
        return sh(os.path.join(TOOLS, "kubectl"), "--kubeconfig", self.kubeconfig, *args,
                  input=input, check=check)

    def helm(self, *args):
        return sh(os.path.join(TOOLS, "helm"), "--kubeconfig", self.kubeconfig, *args)

    def start(self, name, argv, user):
        env = dict(os.environ, KUBECONFIG=os.path.join(self.work, f"{user}.kubeconfig"))
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=log,
                                           stdin=subprocess.DEVNULL))

    def stop(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def counter(self, metric, label):
        total = 0.0
        for line in self.kubectl("get", "--raw", "/metrics").splitlines():
            if line.startswith(metric + "{") and label in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def requests(self, user):
        return self.counter("apiserver_flowcontrol_dispatched_requests_total",
                            f'flow_schema="count-{user}"')

    def denied(self):
        return self.counter("apiserver_validating_admission_policy_check_total",
                            'enforcement_action="deny"')


def setup(c, healthscope_bin):
    bindings = ""
    for user in ("oam-runtime", "healthscope"):
        bindings += f"""---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: bench-{user}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]
---
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
"""
    c.kubectl("apply", "-f", "-", input=bindings)
    c.helm("install", "oam", os.path.join(OAM, "chart"), "-n", "oam-system", "--create-namespace")
    c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    policy = sh(os.path.join(TOOLS, "helm"), "template", "healthscope",
                os.path.join(ROOT, "charts/healthscope"), "--namespace", "healthscope-system",
                "--show-only", "templates/status-protection.yaml",
                "--set", "certificate.allowMissingCaBundle=true")
    c.kubectl("apply", "-f", "-", input=policy)
    c.start("oam-runtime", [os.path.join(OAM, "oam-kubernetes-runtime"), "--metrics-addr=0"],
            "oam-runtime")
    c.start("healthscope", [healthscope_bin, "run", "--manage-crd", "--leader-election=false",
                            "--admin-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--log-level", "info"], "healthscope")
    c.kubectl("create", "namespace", NS)
    examples = os.path.join(ROOT, "examples")
    for _ in range(60):
        out = c.kubectl("get", "crd", "healthscopes.core.oam.dev", "-o",
                        "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.status.properties.health.type}",
                        check=False)
        if out.strip() == "string":
            break
        time.sleep(1)
    for name in ("healthscope", "component", "appconfig"):
        c.kubectl("apply", "-n", NS, "-f", os.path.join(examples, f"{name}.yaml"))
    deployment = "helloworld-python-v1"
    for _ in range(120):
        if c.kubectl("get", "deployment", "-n", NS, deployment, check=False):
            break
        time.sleep(0.5)
    generation = c.kubectl("get", "deployment", "-n", NS, deployment, "-o",
                           "jsonpath={.metadata.generation}")
    status = {"status": {"observedGeneration": int(generation), "replicas": 1,
                         "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}
    c.kubectl("patch", "deployment", "-n", NS, deployment, "--subresource=status",
              "--type=merge", "-p", json.dumps(status))
    # No EndpointSlice: nothing here may receive probes, so the Service has no ready endpoint
    # and the steady verdict is unhealthy. At rest is at rest either way.
    for _ in range(120):
        if health(c) in ("healthy", "unhealthy"):
            return
        time.sleep(0.5)
    sys.exit("the scope never got a HEALTH")


def health(c):
    return c.kubectl("get", "healthscope", "-n", NS, "example-health-scope", "--no-headers",
                     "-o", "custom-columns=H:.status.health", check=False).strip()


def measure(c, window):
    """Watches the scope for `window` seconds; returns the phase's figures."""
    versions = []
    watch = subprocess.Popen(
        [os.path.join(TOOLS, "kubectl"), "--kubeconfig", c.kubeconfig, "get", "healthscope",
         "-n", NS, "example-health-scope", "--watch-only", "--output-watch-events", "-o",
         "jsonpath={.object.metadata.resourceVersion}{\"\\n\"}"],
        stdout=subprocess.PIPE, text=True)
    threading.Thread(target=lambda: versions.extend(line.strip() for line in watch.stdout),
                     daemon=True).start()
    before = (c.requests("oam-runtime"), c.requests("healthscope"), c.denied())
    start = time.time()
    flips, empty, last, polls = 0, 0, health(c), 0
    while time.time() - start < window:
        now = health(c)
        polls += 1
        empty += now in ("", "<none>")
        flips += now != last
        last = now
        time.sleep(1)
    elapsed = time.time() - start
    after = (c.requests("oam-runtime"), c.requests("healthscope"), c.denied())
    watch.terminate()
    minutes = elapsed / 60
    return {
        "seconds": round(elapsed),
        "status writes": len(set(versions)),
        "HEALTH flips": flips,
        "polls with empty HEALTH": f"{empty}/{polls}",
        "runtime req/min": round((after[0] - before[0]) / minutes, 1),
        "healthscope req/min": round((after[1] - before[1]) / minutes, 1),
        "runtime writes denied": int(after[2] - before[2]),
        "HEALTH at the end": last or "(empty)",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=300)
    parser.add_argument("--unprotected-window", type=int, default=60)
    parser.add_argument("--release", action="store_true", help="use target/release/healthscope")
    args = parser.parse_args()
    healthscope_bin = os.path.join(ROOT, "target", "release" if args.release else "debug",
                                   "healthscope")
    with tempfile.TemporaryDirectory(prefix="healthscope-coexist.") as work:
        c = Cluster(work)
        try:
            setup(c, healthscope_bin)
            time.sleep(10)  # first writes and the runtime's first attempts settle
            rows = [("protected (as shipped)", measure(c, args.window))]
            c.kubectl("delete", "validatingadmissionpolicybinding", "--all")
            rows.append(("unprotected (policy deleted)", measure(c, args.unprotected_window)))
        finally:
            c.stop()
    keys = list(rows[0][1].keys())
    lines = ["| phase | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in rows:
        lines.append(f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |")
    report = "\n".join(lines)
    print(report)
    os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target/bench/coexist.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
