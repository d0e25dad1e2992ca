#!/usr/bin/env bash
# SLURM, multi-node GPUs: one task per node; jax.distributed reads SLURM's variables.
#   bash launch/slurm.sh --nodes 4 [--gpus-per-node 8] [--partition P] [--time 24:00:00]
#        [--job-name guard] [--dry-run] -- guard-jax train --config configs/X.py --workdir DIR
# --dry-run prints the batch script instead of submitting it.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0; NODES=1; GPN=8; PARTITION=""; TIME="24:00:00"; NAME="guard_jax"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --nodes) NODES="$2"; shift 2 ;;
    --gpus-per-node) GPN="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --job-name) NAME="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (put the guard-jax command after --)" >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 && "$1" == "guard-jax" ]] || { echo "usage: $0 --nodes N [...] -- guard-jax ..." >&2; exit 2; }
shift
args=$(printf '%q ' "$@")
script=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=$NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPN
#SBATCH --time=$TIME
#SBATCH --output=logs/%x-%j-%t.out
${PARTITION:+#SBATCH --partition=$PARTITION}
set -euo pipefail
cd $(printf '%q' "$PWD")
mkdir -p logs
# Install once on the shared filesystem, then start one process per node.
GUARD_JAX_ACCEL=cuda12 GUARD_JAX_EXTRAS= bash launch/local.sh setup
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 GUARD_JAX_INIT_TIMEOUT=\${GUARD_JAX_INIT_TIMEOUT:-600}
srun --kill-on-bad-exit=1 --output=logs/%x-%j-%t.out .venv/bin/guard-jax $args
SBATCH
)
if [[ $DRY == 1 ]]; then echo "$script"; else mkdir -p logs; echo "$script" | sbatch; fi
