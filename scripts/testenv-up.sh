#!/usr/bin/env bash
# Starts the test control plane in the background and waits until it is ready.
# usage: testenv-up.sh BIN DIR   (kubeconfig: DIR/kubeconfig, pid: DIR/pid, log: DIR/apiserver.log)
set -euo pipefail
bin=$1 dir=$2
if [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
  echo "test control plane already running (pid $(cat "$dir/pid")); kubeconfig: $dir/kubeconfig"
  exit 0
fi
rm -rf "$dir/etcd" "$dir/kubeconfig" "$dir/stdout"   # fresh data each start; the PKI is kept
mkdir -p "$dir"
start=$(date +%s%N)
nohup "$bin" --dir "$dir" --exit-on-stdin-eof=false >"$dir/stdout" 2>"$dir/apiserver.log" </dev/null &
echo $! >"$dir/pid"
for _ in $(seq 1 600); do
  if grep -q '^KUBE_TESTENV_READY' "$dir/stdout" 2>/dev/null; then
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    echo "test control plane ready in ${ms} ms (pid $(cat "$dir/pid"))"
    echo "  export KUBECONFIG=$PWD/$dir/kubeconfig"
    exit 0
  fi
  if grep -q '^KUBE_TESTENV_FAILED' "$dir/stdout" 2>/dev/null || ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
    echo "test control plane failed to start:" >&2
    cat "$dir/stdout" >&2; tail -n 40 "$dir/apiserver.log" >&2
    rm -f "$dir/pid"; exit 1
  fi
  sleep 0.2
done
echo "test control plane not ready after 120 s; log: $dir/apiserver.log" >&2
exit 1
