#!/usr/bin/env bash
# Every GPU measurement of this project in one call, under 10 minutes on one H100/H200, one JSON.
#
#   bash benchmarks/gpu_wheels.sh                      # here, once: what the GPU image lacks -> .whl/
#   device run: bash benchmarks/gpu_suite.sh           # carry [".whl"], timeout_s 600
#   -> $OUT/gpu_suite.json (all numbers, with nvidia-smi, torch, git), $OUT/*.log
#
# Parts (each with its own time budget, so one stuck part cannot eat the rest):
#   pytest_gpu   the gpu-marked tests of tests/unit and tests/integration (pinned/resident
#                synthetic loaders, device-side indices, device noise in generation, and
#                tests/unit/test_cuda_branches.py: one test per CUDA-only branch, e.g. cudnn.benchmark;
#                SyncBatchNorm on two ranks: tests/integration/test_cuda_ranks.py)
#   step_cost    AT / AT+ADR / TRADES / AWP step cost, fp32 and bf16+channels_last, ratio to ideal
#   step_compile compiled vs eager AT and AT+ADR (bf16+channels_last), AT / ideal with compile
#   gpu_epoch    s/epoch for AT, AT+ADR, AT+AWP+ADR x fp32, bf16+cl, bf16+cl+compile, against the
#                paper's Table 6; one full DDPM-setting epoch (cache, validation, checkpoint)
#   generate     old vs new sampler on the GPU (device noise, bf16, channels_last)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
# GPU_SUITE_SMOKE=1: the same parts with tiny CPU settings, to check the script itself here
if [ "${GPU_SUITE_SMOKE:-0}" = 1 ]; then
  DEV="--device cpu --arch tiny --dataset digits --batch-size 8 --rounds 1 --warmup 1"
  EPOCH="--cpu-smoke"; GEN="--gen-device cpu --gen-images 4 --gen-steps 5 --gen-rounds 1"
else
  DEV="--device cuda --batch-size 128 --rounds 10"
  EPOCH="--steps 30 --warmup 10 --repeats 2 --synthetic-images 20000"
  GEN="--gen-device cuda --gen-images 256 --gen-steps 50 --gen-rounds 3"
fi
START=$(date +%s)
part() {  # part NAME SECONDS COMMAND...: log to $OUT/NAME.log, record rc and seconds
  local name=$1 budget=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (budget ${budget}s, at $(( t0 - START ))s)"
  timeout "$budget" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" > "$OUT/$name.status.json"
  tail -n 4 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia_smi.csv" 2>&1

part pytest_gpu 120 python3 -m pytest -q -n 0 -m gpu -p no:cacheprovider $(grep -l "mark.gpu" tests/unit/*.py tests/integration/*.py)
part step_cost 90 python3 benchmarks/step_cost.py $DEV --json "$OUT/step_cost.json"
part step_cost_bf16cl 60 python3 benchmarks/step_cost.py $DEV --precision bf16 --channels-last \
  --variants AT,AT+ADR --json "$OUT/step_cost_bf16cl.json"
part step_compile 120 python3 benchmarks/step_cost.py $DEV --precision bf16 --channels-last \
  --compile --variants AT,AT+ADR --json "$OUT/step_compile.json"
part gpu_epoch 150 python3 benchmarks/gpu_epoch.py --methods AT,AT+ADR,AT+AWP+ADR \
  --settings fp32,bf16+cl,bf16+cl+compile --full-run $EPOCH --json "$OUT/gpu_epoch.json"
part generate 60 python3 benchmarks/data_throughput.py --only generate $GEN --json "$OUT/generate.json"

python3 - "$OUT" <<'PY'
import json, subprocess, sys
from pathlib import Path
out = Path(sys.argv[1])
suite = {"git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True).stdout.strip() or "unknown",
         "nvidia_smi": (out / "nvidia_smi.csv").read_text() if (out / "nvidia_smi.csv").exists() else None}
try:
    import torch
    suite["torch"], suite["cuda"] = torch.__version__, torch.version.cuda
except ImportError:
    pass
for status in sorted(out.glob("*.status.json")):
    name = status.name[: -len(".status.json")]
    part = json.loads(status.read_text())
    result = out / f"{name}.json"
    if result.exists():
        part["result"] = json.loads(result.read_text())
    log = (out / f"{name}.log").read_text(errors="replace").splitlines()
    part["log_tail"] = log[-30:]
    suite[name] = part
(out / "gpu_suite.json").write_text(json.dumps(suite, indent=1) + "\n")
print("wrote", out / "gpu_suite.json", {k: v.get("rc") for k, v in suite.items() if isinstance(v, dict)})
PY
