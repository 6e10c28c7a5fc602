#!/usr/bin/env bash
# Build examples/c/build/cordsnet-classify with CMake against the OpenVINO wheel of the `python` on PATH.
#   bash examples/c/build.sh            (PYTHON=... to use another interpreter, CMAKE=... another cmake)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/sdk.sh"
build_client "$here" openvino cmake OpenVINO_DIR 3.16
