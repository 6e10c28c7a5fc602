#!/usr/bin/env bash
# Install everything the test suite uses, on a fresh Debian/Ubuntu machine (the README's test set-up
# command runs this, then pytest; CI runs exactly that):
#   - the package with its test extras (pytest, matplotlib, zarr/xarray), the browser test's Playwright
#     for Python, ExecuTorch and OpenVINO, constrained to the torch/torchvision already installed (never replaced);
#   - Debian's chromium, which Playwright drives by path (never `playwright install`);
#   - the npm packages of web/ and examples/node/, pinned by their package-lock.json (onnxruntime-node's
#     install script would fetch CUDA binaries: skipped, the CPU library ships in the package).
# Needs root (or sudo) for apt-get, and node/npm on the PATH. Tests whose tools are missing skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
python - >"$constraints" <<'PY'
import importlib.metadata as md
for name in ("torch", "torchvision"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
python -m pip install -c "$constraints" -e ".[test,web,executorch,openvino]"

$SUDO apt-get update
$SUDO apt-get install -y chromium
(cd web && npm ci --no-audit --no-fund)
(cd examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund)
