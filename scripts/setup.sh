#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools; a no-op when nothing changed.
# CPU machines get torch's CPU build (TORCH_SPEC, default torch==2.13.0); with a torch already in
# .venv (a CUDA build installed by hand, say) torch is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv (once) ..."
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  rm -f .venv/.setup-*
  touch "$stamp"
fi
# The JavaScript side (examples/node, the web page's runtime): from the lock files, when npm is here
if command -v npm >/dev/null 2>&1; then
  for app in examples/node web; do
    if [ ! -f "$app/node_modules/.package-lock.json" ] || [ "$app/package-lock.json" -nt "$app/node_modules/.package-lock.json" ]; then
      (cd "$app" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) \
        || echo "warning: npm ci failed in $app (no registry?): the Node.js example and the web page need it" >&2
    fi
  done
fi
