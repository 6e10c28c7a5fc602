#!/usr/bin/env bash
# Build examples/c/build/cordsnet-classify with CMake against the OpenVINO wheel of the `python` on PATH.
#   bash examples/c/build.sh            (PYTHON=... to use another interpreter, CMAKE=... another cmake)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/sdk.sh"
ov_cmake="$(sdk_dir openvino cmake)" || die "the python on PATH ($(command -v "$PYTHON" || echo none)) has no openvino package: pip install openvino"
cmake_bin="$(find_cmake 3.16)"
"$cmake_bin" -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=Release -DOpenVINO_DIR="$ov_cmake" >/dev/null
"$cmake_bin" --build "$here/build" --parallel "$(nproc 2>/dev/null || echo 2)"
echo "built $here/build/cordsnet-classify"
