#!/usr/bin/env bash
# Local runs: sets up .venv on first use (Python 3.11, pinned CPU torch), then runs the CLI.
#   bash launch/local.sh demo                  # the main job on its tiny default
#   bash launch/local.sh test [pytest args]    # the test suite (8 fake CPU devices)
#   bash launch/local.sh <guard-jax args>      # any other guard-jax command
#   bash launch/local.sh setup                 # only set up .venv
#   bash launch/local.sh --dry-run ...         # print what would run
# GUARD_JAX_ACCEL=cuda12 (GPU hosts) or tpu (TPU VMs) adds the matching jaxlib plugin;
# GUARD_JAX_EXTRAS (default "dev") picks the pip extras: "dev" has CPU torch and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
run() { if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${GUARD_JAX_VENV:-.venv}"
EXTRAS="${GUARD_JAX_EXTRAS-dev}"
ACCEL="${GUARD_JAX_ACCEL:-}"
JAX_VERSION=0.10.2
stamp="$VENV/.guard_jax_installed${ACCEL:+-$ACCEL}"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || constraints.txt -nt "$stamp" ]]; then
  run "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"guard_jax needs Python 3.11, found {sys.version.split()[0]}: set PYTHON=/path/to/python3.11"'
  [[ -x "$VENV/bin/python" ]] || run "$PYTHON" -m venv "$VENV"
  run "$VENV/bin/python" -m pip install -q -U pip
  # The exact torch pin lives in pyproject.toml; constraints.txt holds the tested set (+cpu torch).
  run "$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}" -c constraints.txt
  case "$ACCEL" in
    "") ;;
    cuda12) run "$VENV/bin/python" -m pip install -q "jax[cuda12]==$JAX_VERSION" ;;
    tpu) run "$VENV/bin/python" -m pip install -q "jax[tpu]==$JAX_VERSION" ;;
    *) echo "GUARD_JAX_ACCEL=$ACCEL: use cuda12 or tpu" >&2; exit 2 ;;
  esac
  [[ $DRY == 1 ]] || touch "$stamp"
fi

cmd="${1:-demo}"
[[ $# -gt 0 ]] && shift
if [[ "$cmd" == "setup" ]]; then
  exit 0
elif [[ "$cmd" == "test" ]]; then
  export JAX_PLATFORMS=cpu
  run "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
else
  run "$VENV/bin/guard-jax" "$cmd" "$@"
fi
