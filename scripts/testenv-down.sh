#!/usr/bin/env bash
# Stops the test control plane started by testenv-up.sh and waits for it to exit.
# usage: testenv-down.sh DIR
set -euo pipefail
dir=$1
[[ -f $dir/pid ]] || { echo "test control plane not running"; exit 0; }
pid=$(cat "$dir/pid")
if kill -TERM "$pid" 2>/dev/null; then
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then echo "still running after 30 s; killing $pid" >&2; kill -KILL "$pid"; fi
fi
rm -f "$dir/pid"
echo "test control plane stopped"
