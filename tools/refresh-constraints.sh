#!/usr/bin/env bash
# Refresh tools/constraints.txt (the pins tools/setup-tests.sh and CI install) from the newest releases:
# a fresh venv, the newest of everything (CORDSNET_LATEST=1), the whole suite, and only if it passes, the
# frozen versions (torch, torchvision and the CUDA wheels torch brings are left to tools/setup-tests.sh).
#   bash tools/refresh-constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q --upgrade pip
CORDSNET_LATEST=1 bash tools/setup-tests.sh
python -m pytest -q
python tools/freeze_constraints.py >tools/constraints.txt
echo "tools/constraints.txt refreshed from $(python -m pip --version)"
