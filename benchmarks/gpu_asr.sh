#!/usr/bin/env bash
# The speech model's `full` preset on a GPU, shortened to fit a lent machine's minutes: trains it (bf16
# autocast, eSpeak NG data synthesized on the machine's cores), prints the held-out CER that training
# ends with, and leaves the weights, config and curves in $OUT/asr for export and benchmarks on a CPU.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_asr.sh [TRAIN_SIZE] [STEPS]
#
# Needs torch with CUDA and this repository; the speech wheels (espeakng-loader, jiwer, soundfile, soxr)
# are installed from ./.whl when that folder is there (a machine without network), else from PyPI.
set -euo pipefail
TRAIN_SIZE=${1:-40000}
STEPS=${2:-2500}
OUT=${OUT:-/tmp/gpu}
mkdir -p "$OUT"
python -V
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -d .whl ]; then
  python -m pip install -q --no-index --find-links .whl espeakng-loader jiwer soundfile soxr 2>&1 | tail -2
else
  python -m pip install -q espeakng-loader jiwer soundfile soxr
fi
export LITTLEBOOK_CACHE=/tmp/littlebook-cache PYTHONUNBUFFERED=1
start=$(date +%s)
python -m pipeline train asr --preset full --set data.train_size="$TRAIN_SIZE" --set train.steps="$STEPS" \
  --set train.eval_every="$STEPS" --out /tmp/gpu-runs 2>&1 | tr '\r' '\n' | grep -v "^\s*$" | tail -25
echo "wall: $(( $(date +%s) - start )) s"
run=$(ls -d /tmp/gpu-runs/asr/*/ | tail -1)
mkdir -p "$OUT/asr/$(basename "$run")"
cp "$run"/config.json "$run"/checkpoint.safetensors "$run"/metrics.jsonl "$run"/curves.png "$OUT/asr/$(basename "$run")/" 2>/dev/null || true
python - "$run" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
train = [r for r in rows if r.get("split") == "train"]
rates = [r["utterances_per_s"] for r in train[len(train) // 5:]]
print(f"utterances/s (median after warm-up): {statistics.median(rates):.0f}")
print("last eval:", [r for r in rows if r.get("split") != "train"][-2:])
EOF
