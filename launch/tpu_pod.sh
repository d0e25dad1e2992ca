#!/usr/bin/env bash
# Cloud TPU pod slice: create (or reuse) the TPU VM, copy this checkout to every worker,
# install, run the same guard-jax command on all workers, and collect their logs.
#   bash launch/tpu_pod.sh --name guard-v5p --zone us-east5-a --accelerator v5p-32 [--create]
#        [--version v2-alpha-tpuv5] [--project P] [--spot] [--dry-run]
#        -- guard-jax train --config configs/X.py --workdir gs://bucket/run
# jax.distributed finds the slice's workers itself; workdirs should be on GCS.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; CREATE=0; NAME=""; ZONE=""; ACCEL=""; VERSION="v2-alpha-tpuv5"; PROJECT=""; SPOT=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --create) CREATE=1; shift ;;
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCEL="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --) shift; break ;;
    *) echo "unknown option $1 (put the guard-jax command after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$NAME" && -n "$ZONE" ]] || { echo "--name and --zone are required" >&2; exit 2; }
[[ $# -gt 0 && "$1" == "guard-jax" ]] || { echo "usage: $0 --name N --zone Z [...] -- guard-jax ..." >&2; exit 2; }
shift
run() { if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
proj=(); [[ -n "$PROJECT" ]] && proj=(--project "$PROJECT")
tpu=(gcloud compute tpus tpu-vm)
if [[ $CREATE == 1 ]]; then
  [[ -n "$ACCEL" ]] || { echo "--create needs --accelerator (e.g. v5p-32)" >&2; exit 2; }
  spot=(); [[ $SPOT == 1 ]] && spot=(--spot)
  run "${tpu[@]}" create "$NAME" --zone "$ZONE" "${proj[@]}" --accelerator-type "$ACCEL" \
      --version "$VERSION" "${spot[@]}"
fi
# Copy the checkout (tracked files only) to every worker.
archive=/tmp/guard_jax_src.tar.gz
run git archive --format=tar.gz -o "$archive" HEAD
run "${tpu[@]}" scp "$archive" "$NAME":~/guard_jax_src.tar.gz --zone "$ZONE" "${proj[@]}" --worker=all
remote_args=$(printf '%q ' "$@")
remote="set -e; mkdir -p ~/guard_jax ~/guard_jax_logs && tar -xzf ~/guard_jax_src.tar.gz -C ~/guard_jax && cd ~/guard_jax && GUARD_JAX_ACCEL=tpu GUARD_JAX_EXTRAS= bash launch/local.sh setup && .venv/bin/guard-jax $remote_args 2>&1 | tee ~/guard_jax_logs/\$(hostname).log"
run "${tpu[@]}" ssh "$NAME" --zone "$ZONE" "${proj[@]}" --worker=all --command "$remote"
mkdir -p logs
run "${tpu[@]}" scp "$NAME":~/guard_jax_logs/* "logs/" --zone "$ZONE" "${proj[@]}" --worker=all
