#!/usr/bin/env bash
# Regenerates go.mod's replace block for one Kubernetes release.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and
# points them at ./staging with replace directives, which a consumer does not inherit. Every such
# module is pinned here to its published tag (kubernetes v1.X.Y -> staging v0.X.Y), read from the
# release's own go.mod through the Go module proxy.
#
# usage: ./gen-replaces.sh 1.37.2
set -euo pipefail
cd "$(dirname "$0")"
release=${1:?usage: $0 KUBERNETES_VERSION (e.g. 1.37.2)}
staging="v0.${release#*.}"

modfile=$(go mod download -json "k8s.io/kubernetes@v${release}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
[ -f "$modfile" ] || { echo "cannot find go.mod of k8s.io/kubernetes v${release}" >&2; exit 1; }

# Drop the old pins, then pin every staging module of this release.
go mod edit -json | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    print(r["Old"]["Path"])
' | while read -r old; do go mod edit -dropreplace="$old"; done

grep -oE 'k8s.io/[a-z0-9-]+ => \./staging/src/k8s.io/[a-z0-9-]+' "$modfile" | awk '{print $1}' | sort -u |
  while read -r mod; do go mod edit -replace="${mod}=${mod}@${staging}"; done

# etcd's server module must match the client the release selects.
etcd=$(grep -E '^\s*go.etcd.io/etcd/client/v3 ' "$modfile" | awk '{print $2}')
go mod edit -require="k8s.io/kubernetes@v${release}" -require="go.etcd.io/etcd/server/v3@${etcd}"
go mod tidy
echo "pinned Kubernetes v${release} (staging ${staging}, etcd ${etcd})"
