#!/usr/bin/env bash
# One GPU node, one process driving all its GPUs (the mesh's -1 axis takes them all).
#   bash launch/gpu_node.sh [--dry-run] [--gpus 0,1,2,3] -- guard-jax train --config configs/X.py --workdir DIR
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; GPUS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --gpus) GPUS="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (put the guard-jax command after --)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 && "$1" == "guard-jax" ]] || { echo "usage: $0 [--dry-run] [--gpus LIST] -- guard-jax ..." >&2; exit 2; }
shift
env_prefix=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 GUARD_JAX_ACCEL=cuda12 GUARD_JAX_EXTRAS=)
[[ -n "$GPUS" ]] && env_prefix+=(CUDA_VISIBLE_DEVICES="$GPUS")
cmd=("${env_prefix[@]}" bash launch/local.sh "$@")
if [[ $DRY == 1 ]]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
