"""Trains the tiny model in a loop with a Checkpointer until SIGTERM (tests/test_checkpoint.py).

Usage: checkpoint_worker.py WORKDIR. Prints "running step N" after each step; on SIGTERM the
next maybe_save saves synchronously, the script prints "preempted at step N" and exits 0.
Exits 3 if no signal came within the step cap.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
import optax  # noqa: E402

from guard_jax.models.qwen2_5_vl import init_model, tiny  # noqa: E402
from guard_jax.sharding import make_mesh  # noqa: E402
from guard_jax.training.checkpoint import Checkpointer, install_sigterm_handler  # noqa: E402
from guard_jax.training.train_step import init_train_state, make_train_step  # noqa: E402


def main(workdir: str) -> int:
    install_sigterm_handler()
    c = tiny()
    mesh = make_mesh((2, 2, 2))
    model = init_model(c, seed=0, mesh=mesh)
    tx = optax.sgd(0.01)
    gd, state = init_train_state(model, tx, mesh)
    step_fn = make_train_step(gd, tx, mesh=mesh, state=state)
    rng = np.random.default_rng(0)
    batch = model.prepare_inputs(rng.integers(2, 200, size=(4, 8)))
    ckpt = Checkpointer(workdir, keep=2, every_steps=1000, config={"model": "tiny"}, seed=0)
    for _ in range(100000):
        state, _ = step_fn(state, batch)
        step = int(state["step"])
        if ckpt.maybe_save(step, state, data_state=f"it-{step}", rng=0):
            ckpt.close()
            print(f"preempted at step {step}", flush=True)
            return 0
        print(f"running step {step}", flush=True)
    ckpt.close()
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
