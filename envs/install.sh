#!/usr/bin/env bash
# Create (or reuse) the project virtual environment with the pinned stack and install `ldpm` into it.
# Re-running is cheap: the install is skipped while envs/constraints.txt and pyproject.toml are unchanged.
# torch/torchvision are pinned to the releases pip serves from local disk (no multi-GB download).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${LDPM_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stamp="$venv/.ldpm-install-stamp"
want="$(cat envs/constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$venv/bin/python" -m pip install -q -c envs/constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
echo "ldpm environment ready: $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
