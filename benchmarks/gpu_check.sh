#!/usr/bin/env bash
# GPU check (at most ~10 minutes on one H200): every step runs under `timeout`, writes JSON under
# the results folder, and the script ends with a summary.
#   methods: the main comparison's methods on SmolLM2-135M in bf16 on the device (calibration tokens/s,
#            peak device memory, keep masks against the CPU run with the same seed and data);
#   big:     a random-weight model of the 1B shape through `pruneframe prune` (wanda-sp, llm-pruner and a
#            short GRASPrune schedule, that one also under a one-rank `torchrun`) and `pruneframe compare`
#            (magnitude and wanda-sp at two budgets);
#   stream:  layer-streamed prunes of that model: weights on the CPU, each decoder layer in turn on the
#            device (`offload: cpu`): wanda-sp (forward only), llm-pruner and the short GRASPrune schedule
#            (streamed backward passes); and an evaluation (perplexity, a zero-shot task) scored the same
#            way, against the whole model on the device.
# Usage: benchmarks/gpu_check.sh  (results in $RESULTS_DIR, else $OUT, else benchmarks/results/gpu_check)
# Settings (environment): DEVICE=cuda|cpu  SHAPE=1b|0.5b|135m  METHODS=magnitude,...  PYTHON=path
#   PARTS=methods,big,stream (which parts run; default all)  MODEL_135M=smollm2-135m|folder
#   TOKENIZER=folder (the 1B model's tokenizer; default the embedded SmolLM2's, same vocabulary)
# A CPU dry run of the same steps: DEVICE=cpu SHAPE=135m METHODS=magnitude benchmarks/gpu_check.sh
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
DEVICE="${DEVICE:-cuda}"
SHAPE="${SHAPE:-1b}"
METHODS="${METHODS:-grasprune,magnitude,llm-pruner,wanda-sp,flap,random}"
PARTS="${PARTS:-methods,big,stream}"
MODEL_135M="${MODEL_135M:-smollm2-135m}"
TOKENIZER="${TOKENIZER:-}"
RESULTS="${RESULTS_DIR:-${OUT:-benchmarks/results/gpu_check}}"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$RESULTS"
STEPS="$RESULTS/steps.tsv"
: >"$STEPS"
wanted() { [[ ",$PARTS," == *",$1,"* ]]; }

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

if wanted methods; then
  step methods-135m 300 "$PY" benchmarks/device_methods.py --device "$DEVICE" --dtype bfloat16 \
    --model "$MODEL_135M" --methods "$METHODS" --out "$RESULTS/methods_135m.json"
fi

MODEL_DIR="$RESULTS/model-$SHAPE"
if wanted big || wanted stream; then
  step "build-$SHAPE" 120 "$PY" -c "
import sys; sys.path.insert(0, 'benchmarks')
from scale import build
model = build('$SHAPE')
model.save_pretrained('$MODEL_DIR')
if '$TOKENIZER':
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained('$TOKENIZER')
else:
    from pruneframe.models import load_model
    tokenizer = load_model('smollm2-135m')[1]
tokenizer.save_pretrained('$MODEL_DIR')  # same vocabulary (49,152)
print(sum(p.numel() for p in model.parameters()), 'parameters')"
fi

CLI=("$PY" -m pruneframe)
COMMON=(--model "$MODEL_DIR" --dtype bfloat16 --calib embedded --calib-tokens 40000 --quiet)
SHORT_GRASPRUNE=(--method-config 'grasprune={"num_sequences": 16, "seq_len": 256, "epochs": 1, "rescale_sequences": 16}')
if wanted big; then
  for method in wanda-sp llm-pruner grasprune; do
    extra=()
    [[ $method == grasprune ]] && extra=("${SHORT_GRASPRUNE[@]}")
    step "prune-$method-$SHAPE" 120 "${CLI[@]}" prune "${COMMON[@]}" --device "$DEVICE" --method "$method" \
      "${extra[@]}" --budget 0.8 --out "$RESULTS/prune-$method-$SHAPE"
    rm -f "$RESULTS/prune-$method-$SHAPE"/*.safetensors  # random weights: only the report is worth keeping
  done
  # torchrun on the device: one rank, its model on LOCAL_RANK's device, gradients reduced there.
  step "torchrun-grasprune-$SHAPE" 150 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m pruneframe \
    prune "${COMMON[@]}" --device "$DEVICE" --method grasprune "${SHORT_GRASPRUNE[@]}" --budget 0.8 \
    --out "$RESULTS/prune-torchrun-grasprune-$SHAPE"
  rm -f "$RESULTS/prune-torchrun-grasprune-$SHAPE"/*.safetensors
  step "compare-$SHAPE" 180 "${CLI[@]}" compare "${COMMON[@]}" --device "$DEVICE" --methods magnitude,wanda-sp \
    --budgets 0.8,0.5 --eval-windows 8 --seq-len 512 --zeroshot none --out "$RESULTS/compare-$SHAPE"
fi

if wanted stream; then
  # The weights stay on the CPU; each decoder layer in turn runs on $DEVICE (forward, and for the
  # gradient methods the backward pass too).
  STREAM="\"offload\": \"cpu\", \"compute_device\": \"$DEVICE\""
  for method in wanda-sp llm-pruner grasprune; do
    config="$method={$STREAM}"
    [[ $method == grasprune ]] && config="grasprune={\"num_sequences\": 16, \"seq_len\": 256, \"epochs\": 1, \"rescale_sequences\": 16, $STREAM}"
    step "stream-$method-$SHAPE" 150 "${CLI[@]}" prune "${COMMON[@]}" --device cpu --method "$method" \
      --method-config "$config" --budget 0.8 --out "$RESULTS/stream-$method-$SHAPE"
    rm -f "$RESULTS/stream-$method-$SHAPE"/*.safetensors
  done
  # Evaluation streamed the same way, against the whole model on the device: perplexity and a
  # made-up multiple-choice task (random weights: only whether both passes answer alike matters).
  TASK="$RESULTS/made_up_choices.jsonl"
  "$PY" - "$TASK" <<'PYEOF'
import json, sys
words = ["river", "stone", "cloud", "apple", "chair", "lamp", "window", "garden", "letter", "bridge", "candle"]
with open(sys.argv[1], "w") as handle:
    for i in range(40):
        choices = [words[(i * 7 + k) % len(words)] for k in range(3)]
        row = {"question": f"Which word follows {words[i % len(words)]}?", "choices": choices, "label": i % 3}
        handle.write(json.dumps(row) + "\n")
PYEOF
  EVAL=(eval --model "$MODEL_DIR" --dtype bfloat16 --eval-data embedded --eval-windows 8 --zeroshot "$TASK" --no-speed --quiet)
  step "stream-eval-$SHAPE" 150 "${CLI[@]}" "${EVAL[@]}" --device cpu --eval-compute-device "$DEVICE" \
    --out "$RESULTS/stream-eval-$SHAPE.json"
  step "whole-eval-$SHAPE" 150 "${CLI[@]}" "${EVAL[@]}" --device "$DEVICE" --out "$RESULTS/whole-eval-$SHAPE.json"
fi

rm -rf "$MODEL_DIR"  # random weights: nothing worth keeping
echo "== summary ($RESULTS)"
timeout 60 "$PY" - "$RESULTS" <<'PYEOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
steps = [line.split("\t") for line in (root / "steps.tsv").read_text().splitlines()]
for name, status, seconds in steps:
    print(f"  {name:<24} {'ok' if status == '0' else 'FAILED (' + status + ')':<12} {seconds:>4} s")
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
for report in sorted([*root.glob("prune-*/pruning.json"), *root.glob("stream-*/pruning.json")]):
    rep = json.loads(report.read_text())
    mem = rep.get("memory") or {}
    cuda = mem.get("cuda_peak_allocated_bytes")
    print(f"  {report.parent.name}: kept {rep.get('kept_fraction_of_prunable')} of prunable, timings {rep.get('timings')}, "
          f"peak RSS {mem.get('peak_rss_bytes', 0) / 2**30:.2f} GiB, peak CUDA "
          f"{'-' if cuda is None else f'{cuda / 2**30:.2f} GiB'}")
for streamed_file in sorted(root.glob("stream-eval-*.json"))[:1]:
    whole_file = root / streamed_file.name.replace("stream-", "whole-", 1)
    if not whole_file.exists():
        break
    streamed, whole = (json.loads(f.read_text())["eval"] for f in (streamed_file, whole_file))
    agreement = {"perplexity": {src: {"streamed": streamed["perplexity"]["sources"][src]["ppl"], "whole": r["ppl"]}
                                for src, r in whole["perplexity"]["sources"].items()},
                 "zeroshot": {}}
    for task, r in whole["zeroshot"]["tasks"].items():
        a, b = r["items"]["acc"], streamed["zeroshot"]["tasks"][task]["items"]["acc"]
        agreement["zeroshot"][task] = {"items": len(a), "answered_alike": sum(x == y for x, y in zip(a, b)),
                                       "acc_streamed": streamed["zeroshot"]["tasks"][task]["acc"], "acc_whole": r["acc"]}
    (root / "eval_agreement.json").write_text(json.dumps(agreement, indent=2) + "\n")
    for src, r in agreement["perplexity"].items():
        print(f"  eval {src}: perplexity streamed {r['streamed']:.4f}, whole {r['whole']:.4f}")
    for task, r in agreement["zeroshot"].items():
        print(f"  eval {task}: {r['answered_alike']} of {r['items']} items answered alike streamed and whole")
summary = {"steps": [{"name": n, "status": s, "seconds": int(t)} for n, s, t in steps]}
(root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
PYEOF
! grep -qv -P '\t0\t' "$STEPS"
