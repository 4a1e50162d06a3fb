#!/usr/bin/env bash
# GPU check (at most ~10 minutes on one H200): every step runs under `timeout`, writes JSON under
# the results folder, and the script ends with a summary.
#   1. the main comparison's methods on SmolLM2-135M in bf16 on the device (calibration tokens/s,
#      peak device memory, keep masks against the CPU run with the same seed and data);
#   2. a random-weight model of the 1B shape through `pruneframe prune` and `pruneframe compare`;
#   3. one layer-streamed prune, when this build has a streaming flag (skipped with a message if not).
# Usage: benchmarks/gpu_check.sh            (results in $OUT if set, else benchmarks/results/gpu_check)
# Settings (environment): DEVICE=cuda|cpu  SHAPE=1b|0.5b|135m  METHODS=magnitude,...  PYTHON=path
# A CPU dry run of the same steps: DEVICE=cpu SHAPE=135m METHODS=magnitude benchmarks/gpu_check.sh
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
DEVICE="${DEVICE:-cuda}"
SHAPE="${SHAPE:-1b}"
METHODS="${METHODS:-magnitude,llm-pruner,wanda-sp,flap,random}"
RESULTS="${OUT:-benchmarks/results/gpu_check}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$RESULTS"
STEPS="$RESULTS/steps.tsv"
: >"$STEPS"

# step NAME SECONDS COMMAND...: run under timeout, log to NAME.log, record status and seconds.
step() {
  local name=$1 limit=$2 start status
  shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
  status=$?
  tail -n 15 "$RESULTS/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" >>"$STEPS"
  return "$status"
}

step env 60 "$PY" -c "
import json, sys, torch, pruneframe
info = {'python': sys.version.split()[0], 'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
        'devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
json.dump(info, open('$RESULTS/env.json', 'w'), indent=2); print(info)"

step methods-135m 240 "$PY" benchmarks/device_methods.py --device "$DEVICE" --dtype bfloat16 \
  --methods "$METHODS" --out "$RESULTS/methods_135m.json"

MODEL_DIR="$RESULTS/model-$SHAPE"
step "build-$SHAPE" 90 "$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
from scale import build
from pruneframe.models import load_model
model = build('$SHAPE')
model.save_pretrained('$MODEL_DIR')
load_model('smollm2-135m')[1].save_pretrained('$MODEL_DIR')  # same vocabulary (49,152)
print(sum(p.numel() for p in model.parameters()), 'parameters')"

CLI=("$PY" -m pruneframe)
if ! timeout 60 "${CLI[@]}" prune --help | grep -q -- '--device'; then
  echo "!! this build's CLI has no --device flag: the prune and compare steps will fail (see their logs)"
fi
COMMON=(--model "$MODEL_DIR" --device "$DEVICE" --dtype bfloat16 --calib embedded --calib-tokens 40000 --quiet)

step "prune-$SHAPE" 90 "${CLI[@]}" prune "${COMMON[@]}" --method wanda-sp --budget 0.8 \
  --out "$RESULTS/prune-$SHAPE"

step "compare-$SHAPE" 150 "${CLI[@]}" compare "${COMMON[@]}" --methods magnitude,wanda-sp --budgets 0.8,0.5 \
  --eval-windows 8 --seq-len 512 --zeroshot none --out "$RESULTS/compare-$SHAPE"

STREAM_FLAG=$(timeout 60 "${CLI[@]}" prune --help | grep -o -- '--offload' | head -n 1)
if [[ -n "$STREAM_FLAG" ]]; then
  step "stream-$SHAPE" 90 "${CLI[@]}" prune "${COMMON[@]}" --offload cpu --method wanda-sp --budget 0.8 \
    --out "$RESULTS/stream-$SHAPE"
else
  echo "== stream: this build has no layer-streaming flag (--offload); streamed run skipped"
  printf 'stream-%s\tskipped\t0\n' "$SHAPE" >>"$STEPS"
fi

rm -rf "$MODEL_DIR"  # random weights: nothing worth keeping
echo "== summary ($RESULTS)"
timeout 60 "$PY" - "$RESULTS" <<'PYEOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
steps = [line.split("\t") for line in (root / "steps.tsv").read_text().splitlines()]
for name, status, seconds in steps:
    print(f"  {name:<16} {'ok' if status == '0' else 'skipped' if status == 'skipped' else 'FAILED (' + status + ')':<12} {seconds:>4} s")
methods = root / "methods_135m.json"
if methods.exists():
    for row in json.loads(methods.read_text())["rows"]:
        if "error" in row:
            print(f"  {row['method']:<11} error: {row['error'][:120]}")
            continue
        dev = row["device"]
        rate = dev["calibration_tokens_per_s"]
        peak = dev["peak_device_bytes"]
        print(f"  {row['method']:<11} {'-' if rate is None else f'{rate:,.0f} tok/s':>14}  peak "
              f"{'-' if peak is None else f'{peak / 2**30:.2f} GiB':>9}  masks identical {row['masks_identical']}"
              f" ({row['mask_agreement']:.2%})")
for name in ("prune", "stream"):
    for report in root.glob(f"{name}-*/pruning.json"):
        rep = json.loads(report.read_text())
        print(f"  {report.parent.name}: kept {rep['kept_fraction_of_prunable']:.2%} of prunable, timings {rep.get('timings_s')}, memory {rep.get('memory')}")
summary = {"steps": [{"name": n, "status": s, "seconds": int(t)} for n, s, t in steps]}
(root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PYEOF
! grep -qv -P '\t(0|skipped)\t' "$STEPS"
