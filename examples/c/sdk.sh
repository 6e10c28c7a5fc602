# Shared by examples/c/build.sh and examples/cpp/build.sh (sourced): find an SDK inside a Python
# package of the `python` on PATH (without importing it), and a CMake new enough.
PYTHON="${PYTHON:-python}"

die() { echo "build.sh: $*" >&2; exit 1; }

# sdk_dir PACKAGE SUBDIR: <the package's directory>/SUBDIR, if it exists.
sdk_dir() {
  command -v "$PYTHON" >/dev/null || return 1
  local dir
  dir="$("$PYTHON" -c 'import importlib.util, sys
spec = importlib.util.find_spec(sys.argv[1])
print(spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else "")' "$1" 2>/dev/null)" || return 1
  [ -n "$dir" ] && [ -e "$dir/$2" ] && echo "$dir/$2"
}

# find_cmake MIN_VERSION: $CMAKE, else the cmake beside the python (the PyPI `cmake` package in a venv),
# else the cmake on PATH; the first at least MIN_VERSION.
find_cmake() {
  local want="$1" candidates=() c v bindir
  [ -n "${CMAKE:-}" ] && candidates+=("$CMAKE")
  bindir="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null || true)"
  [ -n "$bindir" ] && [ -x "$bindir/cmake" ] && candidates+=("$bindir/cmake")
  command -v cmake >/dev/null && candidates+=("$(command -v cmake)")
  for c in "${candidates[@]}"; do
    v="$("$c" --version 2>/dev/null | head -n1 | awk '{print $3}')" || continue
    if [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$want" "$v" | sort -V | head -n1)" = "$want" ]; then
      echo "$c"; return 0
    fi
  done
  die "needs CMake >= $want (found: ${candidates[*]:-none}); pip install cmake"
}

# build_client DIR PACKAGE SDK_SUBDIR CMAKE_VAR MIN_CMAKE: configure and build DIR/build/cordsnet-classify with
# CMake against the SDK inside the python package PACKAGE (its SDK_SUBDIR passed as -DCMAKE_VAR=...).
build_client() {
  local dir="$1" package="$2" subdir="$3" var="$4" want="$5" sdk cmake_bin
  sdk="$(sdk_dir "$package" "$subdir")" || die "the python on PATH ($(command -v "$PYTHON" || echo none)) has no $package package: pip install $package"
  cmake_bin="$(find_cmake "$want")"
  "$cmake_bin" -S "$dir" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release "-D$var=$sdk" >/dev/null
  "$cmake_bin" --build "$dir/build" --parallel "$(nproc 2>/dev/null || echo 2)"
  echo "built $dir/build/cordsnet-classify"
}
