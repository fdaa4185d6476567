#!/usr/bin/env bash
# Entry point of a ScoreRun training pod: one torchrun per pod, one process per GPU.
#
# The PyTorchJob operator gives every pod MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK, and
# PET_NNODES, PET_NODE_RANK and PET_NPROC_PER_NODE (from spec.nprocPerNode, which the
# operator defaults to "auto"), which win when present. torchrun then starts NPROC processes
# here and sets RANK/WORLD_SIZE/LOCAL_RANK per process for `python -m scoreops.train`.
#
#   jobs/launch.sh [--spec /etc/scoreops/run.json] [other scoreops.train arguments]
#
# NPROC: PET_NPROC_PER_NODE or NPROC_PER_NODE when a number, else the GPUs visible in the pod
# (1 on a CPU-only pod). Never torchrun's "auto": on a CPU pod that is one process per CPU,
# each loading the whole model.
#
# Stopping (eviction, drain, deletion): the kubelet sends SIGTERM to the container's PID 1,
# which is torchrun (exec below). torchrun forwards it to its workers, which finish the step
# in progress, write a checkpoint and exit; after SCOREOPS_SHUTDOWN_TIMEOUT seconds (the
# operator sets it inside the pod's terminationGracePeriodSeconds; torchrun's own default is
# 30) torchrun SIGKILLs them. torchrun then exits non-zero, so a stopped pod never counts as a
# finished job, and the next pod resumes from that checkpoint. Restarts are the PyTorchJob's
# (restartPolicy, backoffLimit), not torchrun's: --max-restarts=0.
set -euo pipefail

is_count() { [[ "${1:-}" =~ ^[1-9][0-9]*$ ]]; }

nnodes="${PET_NNODES:-${WORLD_SIZE:-1}}"
node_rank="${PET_NODE_RANK:-${RANK:-0}}"
if is_count "${PET_NPROC_PER_NODE:-}"; then
  nproc="${PET_NPROC_PER_NODE}"
elif is_count "${NPROC_PER_NODE:-}"; then
  nproc="${NPROC_PER_NODE}"
else
  nproc="$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')"
fi
master_addr="${PET_MASTER_ADDR:-${MASTER_ADDR:-127.0.0.1}}"
master_port="${PET_MASTER_PORT:-${MASTER_PORT:-29500}}"

shutdown=()
if [[ -n "${SCOREOPS_SHUTDOWN_TIMEOUT:-}" ]]; then
  shutdown=(--shutdown-timeout="${SCOREOPS_SHUTDOWN_TIMEOUT}")
fi

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
  --max-restarts=0 \
  "${shutdown[@]}" \
  -m scoreops.train "$@"
