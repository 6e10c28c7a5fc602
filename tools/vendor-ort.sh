#!/usr/bin/env bash
# Vendor the onnxruntime-web files the browser app loads into web/vendor/ort/ (shipped in the wheel, so
# `cordsnet-cli web` needs no npm and no network). The version is web/package.json's pin; run this after
# changing it and commit the result. Needs npm (reads the npm registry once).
#   bash tools/vendor-ort.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(python -c 'import json; print(json.load(open("web/package.json"))["dependencies"]["onnxruntime-web"])')"
# The WASM-only build (default) and the WebGPU build (used where the browser has an adapter), each with the
# runtime it loads (ort.wasm.min.mjs: ort-wasm-simd-threaded.*; ort.webgpu.min.mjs: the .asyncify one); nothing
# else of dist/ is loaded by the page (tests/test_packaging.py checks these names against the builds).
files=(ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm
       ort.webgpu.min.mjs ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "onnxruntime-web@$version" >/dev/null && tar -xzf onnxruntime-web-*.tgz)
out=web/vendor/ort
rm -rf "$out" && mkdir -p "$out"
for f in "${files[@]}"; do cp "$tmp/package/dist/$f" "$out/$f"; done
# onnxruntime-web is MIT-licensed (its package.json); the npm package carries no licence file, so the
# project's licence text is written beside the files.
cat >"$out/LICENSE" <<'LIC'
onnxruntime-web (https://www.npmjs.com/package/onnxruntime-web), part of ONNX Runtime.

MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
LIC
# The pin and every file's hash: tests/test_web.py checks the vendored files against this list.
python - "$version" "${files[@]}" >"$out/VERSION.json" <<'PY'
import hashlib, json, sys
version, names = sys.argv[1], sys.argv[2:]
print(json.dumps({"package": "onnxruntime-web", "version": version, "files": {
    n: hashlib.sha256(open(f"web/vendor/ort/{n}", "rb").read()).hexdigest() for n in names}}, indent=2))
PY
echo "vendored onnxruntime-web $version into $out ($(du -sh "$out" | cut -f1))"
