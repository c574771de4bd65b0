#!/usr/bin/env bash
# The webhook through the API server: bench-apiserver on a private control plane (its own --dir,
# never the shared one). Markdown to stdout and target/bench/apiserver.md.
# usage: bench/apiserver.sh      env: CLIENTS=10,50 PER_CLIENT=40 SKIP_BUILD=1
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/bench
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release --features bench --bin bench-apiserver
KUBE_TESTENV_BIN=${KUBE_TESTENV_BIN:-target/testenv/kube-testenv} \
  target/release/bench-apiserver --clients "${CLIENTS:-10,50}" --per-client "${PER_CLIENT:-40}" \
  | tee target/bench/apiserver.md
