#!/usr/bin/env bash
# The GPU check of the throughput issue, in under 5 minutes on one H100 / H200:
#   1. the benchmark at the issue's shape (12 layers, 768 wide, 12 heads, SwiGLU 4x, untied, vocab 50304,
#      batch 32 x context 1024, bf16 autocast with fp32 weights, compiled) for both arms and GPT+QK-norm;
#   2. a short paired training run of the original configuration (both arms, 200 k tokens);
#   3. last, as it may run past the 5 minutes: nGPT with plain-autograd normalizations (ngpt-plain), to set
#      against part 1's ngpt: the before/after of models/ngpt_ops.py in step time and peak memory.
# Prints one table per part and writes bench*.json / train.txt under $OUT (default bench-out/).
#
#   DATGPT_DATA_DIR=/path/with/the-verdict.txt bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

python -m training.bench --arms gpt,ngpt --shape gpt2-small --context 1024 --batch 32 --compile \
    --device cuda --json "$OUT/bench.json" | tee "$OUT/bench.txt"
python -m training.bench --arms gpt --set model.qk_norm=true --shape gpt2-small --context 1024 --batch 32 \
    --compile --device cuda --json "$OUT/bench_qknorm.json" | tail -1 | tee -a "$OUT/bench.txt"

MLFLOW_TRACKING_URI="sqlite:///$PWD/$OUT/mlflow.db" python runner.py experiments/datgpt15_verdict.yaml \
    --no-progress --set train.tokens=2e5 --set checkpoint.enabled=false 2>&1 | grep -v INFO | tail -6 \
    | tee "$OUT/train.txt"
python -m training.bench --arms ngpt-plain --shape gpt2-small --context 1024 --batch 32 --compile \
    --device cuda --json "$OUT/bench_plain.json" | tail -1 | tee -a "$OUT/bench.txt"
