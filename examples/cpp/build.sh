#!/usr/bin/env bash
# Build examples/cpp/build/cordsnet-classify with CMake (>= 3.28) against the ExecuTorch wheel of the
# `python` on PATH.
#   bash examples/cpp/build.sh          (PYTHON=... to use another interpreter, CMAKE=... another cmake)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../c/sdk.sh"
build_client "$here" executorch share/cmake executorch_DIR 3.28
