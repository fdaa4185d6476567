#!/usr/bin/env bash
# Experiment 3 (docs/results.md): SCoRe vs naive two-turn RL vs GRPO vs MGRPO vs the oracle
# control on BIG-Bench-Hard-style boolean expressions, one command, resumable (a finished run
# is never repeated; a run file records the commit it ran).
#
#   bench/exp3.sh pilot            # the pilot: base model + oracle arm, 1 seed
#   bench/exp3.sh run [ARMS]       # the pre-registered runs, 3 seeds (two processes)
#   bench/exp3.sh one ARMS         # the same runs in one process
#   bench/exp3.sh report           # rebuild results.md / results.json from the run files
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FORM="in the form 'Answer: True' or 'Answer: False'"
COMMON=(--task bbh_boolean_expressions --task-config '{}' --verifier exact
  --max-new-tokens 8 --steps 30 --batch 4 --samples 4 --temperature 0.7 --lr 2e-5
  --train-items 1800 --eval-items 200 --pool-factor 1 --eval-samples 4 --threads 1
  --suffix " Reply with the result only, $FORM."
  --instruction "There might be an error in your answer. Check it and give the correct result, $FORM."
  --oracle-correct "Your answer is correct. Give it again, $FORM."
  --oracle-incorrect "Your answer is incorrect. Try again: give a different answer, $FORM.")
case "${1:-run}" in
  pilot)
    OUT=bench/results/compare-2026-12-07-exp3-pilot
    $PY bench/compare_algorithms.py "${COMMON[@]}" --seeds 1 --arms base --out "$OUT" &
    $PY bench/compare_algorithms.py "${COMMON[@]}" --seeds 1 --arms oracle --out "$OUT"
    wait ;;
  run)
    OUT=bench/results/compare-2026-12-07-exp3
    ARMS=${2:-score,naive,grpo,mgrpo,oracle,base}
    # two processes, one torch thread each, alternating arms (the base model last: the
    # criteria compare trained arms)
    A=$(echo "$ARMS" | tr ',' '\n' | awk 'NR % 2 == 1' | paste -sd, -)
    B=$(echo "$ARMS" | tr ',' '\n' | awk 'NR % 2 == 0' | paste -sd, -)
    $PY bench/compare_algorithms.py "${COMMON[@]}" --seeds 3 --arms "$A" --out "$OUT" &
    [ -z "$B" ] || $PY bench/compare_algorithms.py "${COMMON[@]}" --seeds 3 --arms "$B" --out "$OUT"
    wait ;;
  one)  # one process with the given arms (e.g. to add the base model after the others)
    $PY bench/compare_algorithms.py "${COMMON[@]}" --seeds 3 --arms "$2" \
      --out bench/results/compare-2026-12-07-exp3 ;;
  report)
    for OUT in bench/results/compare-2026-12-07-exp3-pilot bench/results/compare-2026-12-07-exp3; do
      [ -d "$OUT/runs" ] && $PY bench/compare_algorithms.py "${COMMON[@]}" --report-only --out "$OUT"
    done ;;
  *) echo "usage: $0 pilot | run [ARMS] | one ARMS | report" >&2; exit 2 ;;
esac
