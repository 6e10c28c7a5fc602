#!/usr/bin/env bash
# GPU check of the runtime (issue 4), one prepared script, at most ~8 minutes on one NVIDIA GPU.
#
#   1. export CordsNet-R8 at 224 px (random weights, non-zero biases, the published 100 + 100 protocol),
#      in parallel: unrolled float32 at batch 1 and float16 at batch 64 (static shapes, as CUDA graphs
#      need), and a stepwise-drive float32 graph (+ its encode graph);
#   2. parity on the CUDA provider: verify_artifact (float32: atol 1e-4 / rtol 1e-3 on logits;
#      float16: top-1 agreement) and StepSession on CUDA (device-resident state, with and without a
#      CUDA graph) against the PyTorch model on the GPU;
#   3. `cordsnet-cli bench` at batch 1 (float32) and 64 (float16), without and with --cuda-graph, and
#      StepSession per-step latency at batch 1 without and with --cuda-graph;
#   4. reduced precision per step (issue 13): the stepwise-drive graph in float16 and int8 (static QDQ,
#      every per-step convolution) on the CUDA provider, and int8 on TensorRT where the onnxruntime
#      wheel has the TensorRT provider (otherwise the log says so);
#   5. TensorRT start-up (issue 23): the float32 stepwise-drive graph's StepSession, cold (empty engine cache)
#      then warm (a new process, the engines from the cache), where the wheel has the TensorRT provider.
#
# Usage (from the repository root): bash benchmarks/gpu_check.sh
# Dry run of the script's plumbing on a CPU machine (tiny model; CUDA-graph parts then fail, logged):
#   GPU_CHECK_PROVIDER=cpu GPU_CHECK_DEPTH=2 GPU_CHECK_SIZE=32 bash benchmarks/gpu_check.sh
# Results go to $OUT (the device runner's output folder) or ./gpu_check_out: gpu_check.log, parity.json,
# bench_*.json. Every phase has its own timeout, so a hung phase cannot eat the whole budget.
set -uo pipefail

OUT_DIR="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT_DIR"
WORK="$(mktemp -d)"
LOG="$OUT_DIR/gpu_check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CORDSNET_GPU_WORK="$WORK" CORDSNET_GPU_OUT="$OUT_DIR"
export GPU_CHECK_PROVIDER="${GPU_CHECK_PROVIDER:-cuda}" GPU_CHECK_DEPTH="${GPU_CHECK_DEPTH:-8}" GPU_CHECK_SIZE="${GPU_CHECK_SIZE:-224}"
START=$SECONDS

BUDGET=${GPU_CHECK_BUDGET_S:-465}  # whole-script wall-clock budget (8 min minus a margin)
# limit CAP: the seconds a phase may use, min(CAP, what is left of the budget); 0 when nothing is left.
limit() { local left=$((BUDGET - (SECONDS - START))); (( left < 10 )) && echo 0 || echo $(( $1 < left ? $1 : left )); }
log() { echo "[$(date +%T) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }

log "machine"
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed") 2>&1 | tee -a "$LOG"
python -c "import onnxruntime as ort, torch; print('onnxruntime', ort.__version__, ort.get_available_providers(), '| torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

# ------------------------------------------------------------------------------------ 1. export
# Three exports in parallel processes (tracing is mostly single-threaded): unrolled float32 at a static
# batch 1, unrolled float16 at a static batch 64 (static shapes: CUDA graphs need every node on the GPU,
# and dynamic-batch unrolled graphs carry shape arithmetic onnxruntime puts on the CPU), and a
# stepwise-drive float32 graph with a dynamic batch (+ its encode graph).
cat > "$WORK/export_all.py" <<'EOF'
import multiprocessing as mp
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

JOBS = {
    "r8.unrolled.f32.b1.onnx": dict(graph="unrolled", batch=1),
    "r8.unrolled.f16.b64.onnx": dict(graph="unrolled", dtype="float16", batch=64),
    "r8.drive.f32.onnx": dict(graph="stepwise-drive"),
    "r8.drive.f16.onnx": dict(graph="stepwise-drive", dtype="float16"),
    "r8.drive.int8.onnx": dict(graph="stepwise-drive", dtype="int8"),  # calibrated on random images' trajectories
}


def job(name):
    warnings.simplefilter("ignore")
    from cordsnet.checkpoint import load_checkpoint
    from cordsnet.export import export

    work = Path(os.environ["CORDSNET_GPU_WORK"])
    kw = dict(JOBS[name])
    model = load_checkpoint(work / "r8.safetensors")
    if kw.get("dtype") == "int8":  # timings do not depend on the values: random calibration images
        import numpy as np
        kw["calibration_images"] = np.random.default_rng(0).standard_normal(
            (4, *model.config.input_shape)).astype(np.float32)
    t0 = time.perf_counter()
    export(model, work / name, verify=False, **kw)
    return f"exported {name} in {time.perf_counter() - t0:.1f} s ({(work / name).stat().st_size / 1e6:.1f} MB)"


if __name__ == "__main__":
    import torch
    from cordsnet.checkpoint import save_checkpoint
    from cordsnet.config import CordsNetConfig
    from cordsnet.model import CordsNet

    work = Path(os.environ["CORDSNET_GPU_WORK"])
    torch.manual_seed(0)
    cfg = CordsNetConfig(depth=int(os.environ["GPU_CHECK_DEPTH"]), image_size=int(os.environ["GPU_CHECK_SIZE"]),
                         num_classes=1000, dataset="imagenet")
    model = CordsNet(cfg).eval()
    with torch.no_grad():  # non-zero biases so the spontaneous phase does real work
        for b in model.conv_bias:
            b.normal_(0.05, 0.2)
    save_checkpoint(model, work / "r8.safetensors")
    with ProcessPoolExecutor(len(JOBS), mp_context=mp.get_context("spawn")) as pool:
        for line in pool.map(job, JOBS):
            print(line, flush=True)
EOF
log "export (timeout $(limit 200) s)"
timeout "$(limit 200)" python "$WORK/export_all.py" 2>&1 | tee -a "$LOG"

# ------------------------------------------------------------------------------------ 2. parity
log "parity on the CUDA provider (timeout $(limit 120) s)"
timeout "$(limit 120)" python - <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, time, warnings
from pathlib import Path
import numpy as np
import torch
from cordsnet.checkpoint import load_checkpoint
from cordsnet.export import verify_artifact
from cordsnet.runtime import Session, StepSession

warnings.simplefilter("ignore")
# Parity in true float32 on both sides: no TF32 in PyTorch's reference nor in onnxruntime's kernels.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
CUDA_FP32 = {"CUDAExecutionProvider": {"use_tf32": "0"}}
work, out = Path(os.environ["CORDSNET_GPU_WORK"]), Path(os.environ["CORDSNET_GPU_OUT"])
provider = os.environ["GPU_CHECK_PROVIDER"]
device = "cuda" if provider != "cpu" else "cpu"
ort_providers = [("CUDAExecutionProvider", {"use_tf32": "0"})] if provider != "cpu" else ["CPUExecutionProvider"]
size = int(os.environ["GPU_CHECK_SIZE"])
model = load_checkpoint(work / "r8.safetensors", map_location=device)
results = {}
for name in ("r8.unrolled.f32.b1.onnx", "r8.unrolled.f16.b64.onnx"):
    t0 = time.perf_counter()
    try:
        rep = verify_artifact(work / name, model, providers=ort_providers, raise_on_failure=False)
        results[name] = rep.to_dict()
        print(f"verify {name}: {rep.summary()} [{time.perf_counter() - t0:.1f} s]", flush=True)
    except Exception as exc:  # keep going: the report says what failed
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"verify {name}: ERROR {exc}", flush=True)

x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
with torch.no_grad():
    ref = model.run(torch.from_numpy(x).to(device)).float().cpu().numpy()
for cuda_graph in (False, True):
    key = f"StepSession r8.drive.f32 cuda_graph={cuda_graph}"
    try:
        s = StepSession(work / "r8.drive.f32.onnx", providers=provider, cuda_graph=cuda_graph, provider_options=CUDA_FP32)
        got = s.run(x)
        got2 = s.run(x)  # a second protocol replays the captured graphs
        diff = float(max(np.abs(got - ref).max(), np.abs(got2 - ref).max()))
        results[key] = {"providers": s.providers, "max_abs": diff, "top1_equal": bool((got.argmax(1) == ref.argmax(1)).all())}
        print(f"{key}: providers {s.providers}, max abs diff vs torch(cuda) {diff:.3g}", flush=True)
    except Exception as exc:
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{key}: ERROR {exc}", flush=True)
try:
    s = Session(work / "r8.unrolled.f32.b1.onnx", providers=provider, cuda_graph=True, provider_options=CUDA_FP32)
    got = np.concatenate([s.run(x[i:i + 1]) for i in range(2)])
    results["Session r8.unrolled.f32.b1 cuda_graph=True"] = {"max_abs": float(np.abs(got - ref).max())}
    print(f"Session unrolled b1 cuda_graph=True: max abs diff {np.abs(got - ref).max():.3g}", flush=True)
except Exception as exc:
    results["Session r8.unrolled.f32.b1 cuda_graph=True"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"Session cuda_graph: ERROR {exc}", flush=True)
(out / "parity.json").write_text(json.dumps(results, indent=2) + "\n")
EOF

# ------------------------------------------------------------------------------------- 3. bench
bench() {  # bench NAME CAP ARGS...
    local name=$1 limit; limit=$(limit "$2"); shift 2
    if (( limit == 0 )); then log "bench $name skipped: the 8-minute budget is spent"; return; fi
    log "bench $name (timeout ${limit} s): $*"
    if timeout "$limit" python -c 'import sys; from cordsnet.cli import main; sys.argv[0] = "cordsnet-cli"; main()' \
            bench "$@" --provider "$GPU_CHECK_PROVIDER" --json > "$OUT_DIR/bench_$name.json" 2>> "$LOG"; then
        python - "$OUT_DIR/bench_$name.json" <<'EOF' | tee -a "$LOG"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  {r['graph']} {r['dtype']} batch {r['batch']} cuda_graph={r['cuda_graph']} {r['providers'][0]}: "
      f"per batch p50 {r['per_batch_ms']['p50']:.2f} ms (p90 {r['per_batch_ms']['p90']:.2f}), "
      f"per image p50 {r['per_image_ms']['p50']:.3f} ms, per step p50 {r['per_step_ms']['p50']:.4f} ms, "
      f"{r['images_per_s']:.0f} images/s")
EOF
    else
        log "  bench $name failed (see above)"
    fi
}
W="$WORK"
# Most important first (the issue's goals), in case the budget runs short.
bench b1_f32_graph    45 "$W/r8.unrolled.f32.b1.onnx"   --batch 1  --warmup 3 --iterations 30 --cuda-graph
bench b64_f16_graph   45 "$W/r8.unrolled.f16.b64.onnx"  --batch 64 --warmup 2 --iterations 10 --cuda-graph
bench b1_f32          45 "$W/r8.unrolled.f32.b1.onnx"   --batch 1  --warmup 3 --iterations 30
bench b64_f16         45 "$W/r8.unrolled.f16.b64.onnx"  --batch 64 --warmup 2 --iterations 10
bench step_b1_graph   35 "$W/r8.drive.f32.onnx"         --batch 1  --warmup 1 --iterations 5 --cuda-graph
bench step_b1         35 "$W/r8.drive.f32.onnx"         --batch 1  --warmup 1 --iterations 5

# Reduced precision per step (issue 13): float16 and int8 stepwise-drive graphs on the CUDA provider, int8 on
# TensorRT where the wheel has it (QDQ graphs: TensorRT's explicit int8 from the graph's own scales).
bench step_b1_f16     35 "$W/r8.drive.f16.onnx"         --batch 1  --warmup 1 --iterations 5
bench step_b1_int8    35 "$W/r8.drive.int8.onnx"        --batch 1  --warmup 1 --iterations 5
if python -c 'import sys, onnxruntime as o; sys.exit("TensorrtExecutionProvider" not in o.get_available_providers())'; then
    GPU_CHECK_PROVIDER=tensorrt bench step_b1_int8_trt 90 "$W/r8.drive.int8.onnx" --batch 1 --warmup 1 --iterations 5
else
    log "no TensorRT provider in this onnxruntime wheel: no TensorRT int8 row"
fi

# TensorRT start-up with its engine and timing caches (issue 23): a cold start (empty cache: the engines are
# built during the session's warm-up) and a warm start (a new process, the same graph: the cached engines load),
# each the seconds from StepSession(...) to a session that has run once, then one protocol's wall time.
trt_start() {  # trt_start LABEL
    local limit; limit=$(limit 150)
    if (( limit == 0 )); then log "TensorRT $1 start skipped: the 8-minute budget is spent"; return; fi
    timeout "$limit" python - "$1" <<'EOF' 2>&1 | tee -a "$LOG"
import os, sys, time, warnings
from pathlib import Path
import numpy as np
from cordsnet.runtime import StepSession

warnings.simplefilter("ignore")
work, size = Path(os.environ["CORDSNET_GPU_WORK"]), int(os.environ["GPU_CHECK_SIZE"])
t0 = time.perf_counter()
s = StepSession(work / "r8.drive.f32.onnx", providers="tensorrt")
ready = time.perf_counter() - t0
x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
t1 = time.perf_counter()
s.run(x)
cache = Path(os.environ["CORDSNET_CACHE_DIR"]) / "tensorrt"
files = sorted(p for p in cache.rglob("*") if p.is_file())
print(f"  TensorRT {sys.argv[1]} start: session ready (warmed up) in {ready:.1f} s, first protocol "
      f"{time.perf_counter() - t1:.2f} s, providers {s.providers}; cache {len(files)} files, "
      f"{sum(p.stat().st_size for p in files) / 1e6:.1f} MB")
EOF
}
if python -c 'import sys, onnxruntime as o; sys.exit("TensorrtExecutionProvider" not in o.get_available_providers())'; then
    export CORDSNET_CACHE_DIR="$WORK/cordsnet-cache"  # empty: the first start is cold
    log "TensorRT start-up, engine and timing caches in $CORDSNET_CACHE_DIR/tensorrt"
    trt_start cold
    trt_start warm
else
    log "no TensorRT provider in this onnxruntime wheel: no TensorRT start-up rows"
fi

# Dataset-scale recording into a Zarr store on the GPU (issue 14): R8 at 224, short protocol, 1 process.
if (( $(limit 120) > 0 )); then
    log "record throughput (timeout $(limit 120) s)"
    timeout "$(limit 120)" python benchmarks/bench_record.py --cases r8 --procs 1 2>&1 | tee -a "$LOG" \
        || log "  record throughput failed or timed out (see above)"
fi

log "done in $((SECONDS - START)) s; results in $OUT_DIR"
rm -rf "$WORK"
