#!/usr/bin/env bash
# Pathways on Cloud (single controller): one guard-jax process on the Pathways head drives every
# TPU of the slices through the IFRT proxy (docs/pathways.md). Submits the job with xpk to a GKE
# cluster that has Pathways; the image must hold this checkout installed with the tpu extra and
# pathwaysutils (e.g. built from launch/local.sh setup + pip install pathwaysutils).
#   bash launch/pathways.sh --cluster C --workload W --tpu-type v5p-32 --image IMG
#        [--num-slices N] [--project P] [--zone Z] [--dry-run]
#        -- guard-jax train --config configs/X.py --workdir gs://bucket/run
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; CLUSTER=""; WORKLOAD=""; TPU=""; IMAGE=""; SLICES=1; PROJECT=""; ZONE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --cluster) CLUSTER="$2"; shift 2 ;;
    --workload) WORKLOAD="$2"; shift 2 ;;
    --tpu-type) TPU="$2"; shift 2 ;;
    --image) IMAGE="$2"; shift 2 ;;
    --num-slices) SLICES="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (put the guard-jax command after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$CLUSTER" && -n "$WORKLOAD" && -n "$TPU" && -n "$IMAGE" ]] || {
  echo "--cluster, --workload, --tpu-type and --image are required" >&2; exit 2; }
[[ $# -gt 0 && "$1" == "guard-jax" ]] || {
  echo "usage: $0 --cluster C --workload W --tpu-type T --image IMG [...] -- guard-jax ..." >&2; exit 2; }
run() { if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
extra=(); [[ -n "$PROJECT" ]] && extra+=(--project "$PROJECT"); [[ -n "$ZONE" ]] && extra+=(--zone "$ZONE")
# The proxy listens on the head; ENABLE_PATHWAYS_PERSISTENCE lets orbax write checkpoints
# from the TPU hosts. guard-jax sees JAX_PLATFORMS=proxy and calls pathwaysutils.initialize().
cmd="JAX_PLATFORMS=proxy JAX_BACKEND_TARGET=grpc://127.0.0.1:29000 ENABLE_PATHWAYS_PERSISTENCE=1 $(printf '%q ' "$@")"
run xpk workload create-pathways --cluster "$CLUSTER" --workload "$WORKLOAD" --tpu-type "$TPU" \
    --num-slices "$SLICES" --docker-image "$IMAGE" "${extra[@]}" --command "$cmd"
