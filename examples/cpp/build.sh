#!/usr/bin/env bash
# Build examples/cpp/build/cordsnet-classify with CMake (>= 3.28) against the ExecuTorch wheel of the
# `python` on PATH.
#   bash examples/cpp/build.sh          (PYTHON=... to use another interpreter, CMAKE=... another cmake)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../c/sdk.sh"
et_cmake="$(sdk_dir executorch share/cmake)" || die "the python on PATH ($(command -v "$PYTHON" || echo none)) has no executorch package: pip install executorch"
cmake_bin="$(find_cmake 3.28)"
"$cmake_bin" -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=Release -Dexecutorch_DIR="$et_cmake" >/dev/null
"$cmake_bin" --build "$here/build" --parallel "$(nproc 2>/dev/null || echo 2)"
echo "built $here/build/cordsnet-classify"
