#!/usr/bin/env bash
# Entry point of a ScoreRun training pod: one torchrun per pod, one process per GPU.
#
# The PyTorchJob operator gives every pod MASTER_ADDR, MASTER_PORT, WORLD_SIZE (pods) and
# RANK (this pod's index); with spec.nprocPerNode it also sets PET_NNODES, PET_NODE_RANK and
# PET_NPROC_PER_NODE, which win when present. torchrun then starts NPROC processes here and
# sets RANK/WORLD_SIZE/LOCAL_RANK per process for `python -m scoreops.train`.
#
#   jobs/launch.sh [--spec /etc/scoreops/run.json] [other scoreops.train arguments]
#
# NPROC_PER_NODE defaults to the GPUs visible in the pod (1 on a CPU-only pod).
set -euo pipefail

nnodes="${PET_NNODES:-${WORLD_SIZE:-1}}"
node_rank="${PET_NODE_RANK:-${RANK:-0}}"
if [[ -n "${PET_NPROC_PER_NODE:-}" ]]; then
  nproc="${PET_NPROC_PER_NODE}"
elif [[ -n "${NPROC_PER_NODE:-}" ]]; then
  nproc="${NPROC_PER_NODE}"
else
  nproc="$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')"
fi
master_addr="${PET_MASTER_ADDR:-${MASTER_ADDR:-127.0.0.1}}"
master_port="${PET_MASTER_PORT:-${MASTER_PORT:-29500}}"

if [[ $# -eq 0 ]]; then
  set -- --spec /etc/scoreops/run.json
fi

# torchrun re-derives these per process; stale pod-level values must not leak into them
unset RANK WORLD_SIZE LOCAL_RANK

exec torchrun \
  --nnodes="${nnodes}" \
  --node_rank="${node_rank}" \
  --nproc_per_node="${nproc}" \
  --master_addr="${master_addr}" \
  --master_port="${master_port}" \
  -m scoreops.train "$@"
