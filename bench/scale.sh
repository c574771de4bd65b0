#!/usr/bin/env bash
# Controller scale: bench-scale populates a private control plane with SCOPES HealthScopes x
# WORKLOADS Deployments, starts the controller (`healthscope run`, as deployed but without the
# webhook: leader election on, admin server on loopback) as a separate process and measures it
# from outside. Output in target/bench/scale.md (or OUT).
# RULE=1 judges every Deployment by a HealthRule (CEL) instead of the built-in rule; output in
# target/bench/scale-rule.md.
# APPCONFIGS=N: N ApplicationConfigurations (with Components) name the scopes, which start
# without refs: the controller's wiring loop writes them (bench/scale.rs).
# WRAP="cmd args": run the controller under cmd (e.g. a profiler); the figures are then those of
# the process named healthscope under it. HEALTHSCOPE: the controller binary. STOP_SIGNAL=KILL
# stops it without a shutdown, so a profiler keeps the steady state's live set as "leaked".
# usage: bench/scale.sh     env: SCOPES=1000 WORKLOADS=10 APPCONFIGS=0 WINDOW=60 CHANGES=50 RULE=1
#                                CONCURRENCY=32 CONVERGE_TIMEOUT=600 OUT=... WRAP=... HEALTHSCOPE=...
#                                STOP_SIGNAL=TERM SETTLE=0 SKIP_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --features bench --bin bench-scale --bin healthscope
rule=() out=target/bench/scale.md
if [[ ${RULE:-} == 1 ]]; then
  rule=(--rule) out=target/bench/scale-rule.md
fi
out=${OUT:-$out}
wrap=() measure=()
if [[ -n ${WRAP:-} ]]; then
  read -ra wrap <<<"$WRAP"
  measure=(--measure healthscope)
fi
KUBE_TESTENV_BIN=${KUBE_TESTENV_BIN:-target/testenv/kube-testenv} \
  target/release/bench-scale --scopes "${SCOPES:-1000}" --workloads "${WORKLOADS:-10}" \
    --appconfigs "${APPCONFIGS:-0}" --concurrency "${CONCURRENCY:-32}" \
    --converge-timeout "${CONVERGE_TIMEOUT:-600}" --stop-signal "${STOP_SIGNAL:-TERM}" \
    --settle "${SETTLE:-0}" \
    --window "${WINDOW:-60}" --changes "${CHANGES:-50}" "${rule[@]}" "${measure[@]}" -- \
    "${wrap[@]}" "${HEALTHSCOPE:-$PWD/target/release/healthscope}" run \
    --admin-addr 127.0.0.1:18080 --api-addr 127.0.0.1:0 --lease-namespace default --log-level warn \
  | tee "$out"
