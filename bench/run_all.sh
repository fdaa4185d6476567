#!/usr/bin/env bash
# Every side-by-side benchmark, one after another, each writing JSON next to its table.
# They take minutes each on a 2-core machine; run them on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${BENCH_OUT:-bench/results}"
mkdir -p "$out"
python bench/trl_compare.py --steps 6 --rounds 2 --json "$out/trl_compare.json"
python bench/lm_eval_compare.py --json "$out/lm_eval_compare.json"
python bench/serving_latency.py --model builtin://smollm2-135m-instruct --torch-threads 1 --output "$out/serving_latency.json"
python bench/operator_scale.py --json "$out/operator_scale.json"
echo "results in $out/"
