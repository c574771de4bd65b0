#!/usr/bin/env bash
# Controller scale: bench-scale populates a private control plane with SCOPES HealthScopes x
# WORKLOADS Deployments, starts the controller (`healthscope run`, as deployed but without the
# webhook: leader election on, admin server on loopback) as a separate process and measures it
# from outside. Output in target/bench/scale.md.
# RULE=1 judges every Deployment by a HealthRule (CEL) instead of the built-in rule; output in
# target/bench/scale-rule.md.
# usage: bench/scale.sh     env: SCOPES=1000 WORKLOADS=10 WINDOW=60 CHANGES=50 RULE=1 SKIP_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --features bench --bin bench-scale --bin healthscope
rule=() out=target/bench/scale.md
if [[ ${RULE:-} == 1 ]]; then
  rule=(--rule) out=target/bench/scale-rule.md
fi
KUBE_TESTENV_BIN=${KUBE_TESTENV_BIN:-target/testenv/kube-testenv} \
  target/release/bench-scale --scopes "${SCOPES:-1000}" --workloads "${WORKLOADS:-10}" \
    --window "${WINDOW:-60}" --changes "${CHANGES:-50}" "${rule[@]}" -- "$PWD/target/release/healthscope" run \
    --admin-addr 127.0.0.1:18080 --api-addr 127.0.0.1:0 --lease-namespace default --log-level warn \
  | tee "$out"
