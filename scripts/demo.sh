#!/usr/bin/env bash
# `make demo`: healthscope end to end beside the real OAM runtime, no cluster needed.
#
# Starts a real control plane (kube-apiserver + etcd from tests/apiserver), installs the OAM
# runtime's chart (its CRDs and definitions) and runs the runtime itself (oam-kubernetes-runtime
# v0.3.3 from tests/oam-runtime), installs healthscope's status protection and webhooks from its
# chart and runs healthscope (which puts its HealthScope CRD over the runtime's), applies the
# seed's example (examples/), lets the runtime render the ContainerizedWorkload, its Deployment and
# Service, plays what a bare control plane lacks (the Deployment controller's status, the
# EndpointSlice controller, a small real HTTP app answering /health in a network namespace of its
# own), and shows the scope turning healthy, then unhealthy when the app fails, then healthy
# again. Everything it started is stopped and removed when it exits, however it exits.
#
# Needs root (the app's network namespace), iproute2 and python3, plus
# `make build testenv oam-runtime tools`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/target/debug/healthscope
kubectl=$root/target/tools/bin/kubectl
helm=$root/target/tools/bin/helm
testenv_bin=$root/target/testenv/kube-testenv
oam_dir=$root/target/oam-runtime
TIMEOUT=${DEMO_TIMEOUT:-60}   # seconds to wait for each state

if [[ -t 1 ]]; then
  bold() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  bold() { printf '\n==> %s\n' "$*"; }
fi
die() { echo "demo: $*" >&2; exit 1; }

for need in "$bin" "$kubectl" "$helm" "$testenv_bin" "$oam_dir/oam-kubernetes-runtime"; do
  [[ -x $need ]] || die "$need is missing: run \`make build testenv oam-runtime tools\` (or \`make demo\`)"
done
[[ $EUID -eq 0 ]] || die "needs root, for the network namespace the demo app runs in"
command -v ip >/dev/null || die "needs iproute2 (ip)"
command -v python3 >/dev/null || die "needs python3 (the demo app)"

work=$(mktemp -d -t healthscope-demo.XXXXXX)
pids=()
netns="" veth=""

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  if ((status != 0)); then
    for log in healthscope oam-runtime; do
      [[ -f $work/$log.log ]] || continue
      echo "--- last lines of the $log log:" >&2
      tail -n 30 "$work/$log.log" >&2
    done
  fi
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  [[ -f $work/testenv/pid ]] && scripts/testenv-down.sh "$work/testenv" >/dev/null
  [[ -n $netns ]] && ip netns del "$netns" 2>/dev/null
  [[ -n $veth ]] && ip link del "$veth" 2>/dev/null
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs "$@" every half second until it succeeds, for at most TIMEOUT seconds.
wait_for() {
  local what=$1; shift
  for _ in $(seq 1 $((TIMEOUT * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "timed out after ${TIMEOUT}s waiting for $what"
}

k() { "$kubectl" "$@"; }
scope_health() { [[ $(k get healthscope example-health-scope -o jsonpath='{.status.health}') == "$1" ]]; }

show_scope() {
  echo "\$ kubectl get healthscope"
  k get healthscope
  echo "\$ curl -s localhost:$api_port/scopes/example-health-scope"
  curl -sS "http://127.0.0.1:$api_port/scopes/example-health-scope" | python3 -m json.tool
}

bold "Starting a control plane (kube-apiserver + etcd)"
scripts/testenv-up.sh "$testenv_bin" "$work/testenv" | sed -n 1p
export KUBECONFIG=$work/testenv/kubeconfig

bold "Installing the OAM runtime's chart (its CRDs and definitions) and running the runtime"
"$helm" install oam "$oam_dir/chart" -n oam-system --create-namespace >/dev/null
k wait --for=condition=Established --timeout=30s crd --all >/dev/null
k get crd -o custom-columns=CRD:.metadata.name --no-headers | grep core.oam.dev
# Its Deployment never runs on a bare control plane: run the same runtime here instead.
"$oam_dir/oam-kubernetes-runtime" --metrics-addr=0 >"$work/oam-runtime.log" 2>&1 &
pids+=($!)

bold "Certificates for the webhook, and the webhook configurations"
webhook_port=$(free_port)
admin_port=$(free_port)
api_port=$(free_port)
"$bin" certs --service healthscope --namespace healthscope-system --ip 127.0.0.1 \
  --out-dir "$work/certs" >/dev/null
# The chart's own webhook configurations, pointed at this process instead of a Service, and its
# status protection: the runtime's own HealthScope controller may not erase healthscope's status.
"$helm" template healthscope charts/healthscope --namespace healthscope-system \
  --show-only templates/webhooks.yaml --show-only templates/status-protection.yaml \
  --set webhook.urlBase="https://127.0.0.1:$webhook_port" \
  --set-file certificate.caBundle="$work/certs/ca.crt" \
  | k apply --server-side -f -

bold "Running healthscope (it puts its HealthScope CRD over the runtime's: --manage-crd)"
"$bin" run --manage-crd --tls-cert "$work/certs/tls.crt" --tls-key "$work/certs/tls.key" \
  --webhook-addr "127.0.0.1:$webhook_port" --admin-addr "127.0.0.1:$admin_port" \
  --api-addr "127.0.0.1:$api_port" \
  --lease-namespace default --log-format text >"$work/healthscope.log" 2>&1 &
pids+=($!)
wait_for "healthscope to be ready" curl -fsS "http://127.0.0.1:$admin_port/readyz"
echo "ready: webhook on https://127.0.0.1:$webhook_port, admin on http://127.0.0.1:$admin_port, scopes API on http://127.0.0.1:$api_port"

bold "Applying the example: a HealthScope, a Component, an ApplicationConfiguration"
k apply -f examples/healthscope.yaml -f examples/component.yaml -f examples/appconfig.yaml
k get healthscope

bold "The runtime renders the ContainerizedWorkload, its Deployment and Service; healthscope wires them"
has_refs() { [[ -n $(k get healthscope example-health-scope -o jsonpath='{.spec.workloadRefs[*].name}') ]]; }
wait_for "the runtime to render the Service" k get service helloworld-python-v1
wait_for "the scope's workloadRefs" has_refs
echo "\$ kubectl get healthscope example-health-scope -o jsonpath='{.spec.workloadRefs}'"
k get healthscope example-health-scope -o jsonpath='{.spec.workloadRefs}'; echo
echo "\$ kubectl get containerizedworkload,deployment,service --show-labels"
k get containerizedworkload,deployment,service --show-labels

bold "Playing the rest of a cluster: the app, the Deployment's status, the Service's endpoints"
# The app: a real HTTP server in a network namespace of its own (an EndpointSlice may not point
# at loopback). /health answers 200, or 500 while $work/fail exists.
tag=$(( $$ % 64 ))
netns=hsdemo-$$ veth=hsdv$$ peer=hsdp$$
app_ip=10.214.$tag.2 host_ip=10.214.$tag.1
ip netns add "$netns"
ip link add "$veth" type veth peer name "$peer"
ip link set "$peer" netns "$netns"
ip addr add "$host_ip/30" dev "$veth" && ip link set "$veth" up
ip -n "$netns" addr add "$app_ip/30" dev "$peer"
ip -n "$netns" link set "$peer" up && ip -n "$netns" link set lo up
cat >"$work/app.py" <<'EOF'
import http.server, os, sys
fail_flag, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            code, body = (500, b"failing\n") if os.path.exists(fail_flag) else (200, b"ok\n")
        else:
            code, body = 200, b"Hello Rudr!\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((address, port), App).serve_forever()
EOF
ip netns exec "$netns" python3 "$work/app.py" "$work/fail" "$app_ip" 9999 &
pids+=($!)
wait_for "the demo app to listen on $app_ip:9999" curl -fsS "http://$app_ip:9999/health"
echo "app serving on http://$app_ip:9999 (network namespace $netns)"

# What the EndpointSlice controller would make (the runtime names the Service's port after it).
port_name=$(k get service helloworld-python-v1 -o jsonpath='{.spec.ports[0].name}')
k apply -f - <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: helloworld-python-v1-demo
  labels:
    kubernetes.io/service-name: helloworld-python-v1
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
endpoints:
  - addresses: ["$app_ip"]
    conditions: {ready: true}
    targetRef: {kind: Pod, namespace: default, name: helloworld-python-v1-demo}
ports: [{name: "$port_name", port: 9999, protocol: TCP}]
EOF
# What the Deployment controller would report: every replica ready for the current generation
# (the runtime re-applies the Deployment now and then, and a real controller catches up).
deployment_ready() {
  local generation replicas
  generation=$(k get deployment helloworld-python-v1 -o jsonpath='{.metadata.generation}')
  replicas=$(k get deployment helloworld-python-v1 -o jsonpath='{.spec.replicas}')
  replicas=${replicas:-1}
  k patch deployment helloworld-python-v1 --subresource=status --type=merge -p "{\"status\": {
    \"observedGeneration\": $generation, \"replicas\": $replicas, \"updatedReplicas\": $replicas,
    \"readyReplicas\": $replicas, \"availableReplicas\": $replicas}}" >/dev/null
}
healthy_with_a_ready_deployment() { deployment_ready && scope_health healthy; }
deployment_ready

bold "The scope turns healthy"
wait_for "example-health-scope to turn healthy" healthy_with_a_ready_deployment
show_scope

bold "The app starts failing /health"
touch "$work/fail"
wait_for "example-health-scope to turn unhealthy" scope_health unhealthy
show_scope

bold "The app recovers"
rm -f "$work/fail"
wait_for "example-health-scope to turn healthy again" healthy_with_a_ready_deployment
k get healthscope
echo
k get events --field-selector involvedObject.kind=HealthScope

bold "Done: stopping healthscope, the app and the control plane"
