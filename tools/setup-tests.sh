#!/usr/bin/env bash
# Install everything the test suite uses, on a fresh Debian/Ubuntu machine (the README's test set-up
# command runs this, then pytest; CI runs exactly that):
#   - the package, editable, with every extra and the test tools, at the versions pinned in
#     tools/constraints.txt (the versions the suite last passed with). CORDSNET_LATEST=1 installs the newest
#     releases instead (no pins: `CORDSNET_LATEST=1 bash tools/setup-tests.sh && python -m pytest -q` is the
#     documented check against today's releases; refresh the pins with tools/refresh-constraints.sh);
#   - torch/torchvision: the installed ones are kept (never replaced); with none installed, 2.14.1/0.29.1
#     (what this project's machines hold on local disk; never a multi-GB download of another release);
#   - Debian's chromium, which Playwright drives by path in the browser test (never `playwright install`);
#   - for the native examples (examples/c, examples/cpp): a C/C++ compiler, libcjson-dev, libssl-dev and the
#     PyPI cmake (>= 3.28 for ExecuTorch's CMake targets; the [test] extra brings it);
#   - the npm packages of examples/node/, pinned by its package-lock.json (onnxruntime-node's install
#     script would fetch CUDA binaries: skipped, the CPU library ships in the package). The browser app
#     needs no npm: its onnxruntime-web files are vendored (web/vendor/ort, tools/vendor-ort.sh).
# Needs root (or sudo) for apt-get, and node/npm on the PATH. Tests whose tools are missing skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

torch_pins="$(mktemp)"
trap 'rm -f "$torch_pins"' EXIT
python - >"$torch_pins" <<'PY'
import importlib.metadata as md
for name, default in (("torch", "2.14.1"), ("torchvision", "0.29.1")):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}=={default}")
PY
if [ "${CORDSNET_LATEST:-0}" = 1 ]; then
    python -m pip install -c "$torch_pins" --upgrade --upgrade-strategy eager -e ".[all,test]"
else
    python -m pip install -c "$torch_pins" -c tools/constraints.txt -e ".[all,test]"
fi

$SUDO apt-get update
$SUDO apt-get install -y chromium build-essential libcjson-dev libssl-dev
(cd examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund)
