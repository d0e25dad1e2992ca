"""One process of the two-process jax.distributed test (see test_multihost.py).

Environment: GUARD_JAX_COORDINATOR / GUARD_JAX_NUM_PROCESSES / GUARD_JAX_PROCESS_ID, 4 fake CPU
devices per process. Runs three sharded train steps on a (2, 2, 2) mesh over all 8 devices and
prints one JSON line with the losses and a parameter checksum.
"""

import json
import os
import sys

if __name__ == "__main__":
    # only as the worker process: test_multihost also imports this module (for batch_for),
    # and these settings must not leak into the test process's environment, which later
    # subprocesses (guard-jax train in test_sft) inherit
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, os.path.dirname(__file__))

from guard_jax import distributed  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import hf_reference as R  # noqa: E402
from guard_jax.models.qwen2_5_vl import tiny  # noqa: E402
from guard_jax.models.qwen2_5_vl import init_model  # noqa: E402
from guard_jax.models.qwen2_5_vl.placement import shard_model  # noqa: E402
from guard_jax.sharding import make_mesh  # noqa: E402
from guard_jax.training.train_step import init_train_state, make_train_step  # noqa: E402


def batch_for(model, c):
    grids = [[1, 4, 4]]
    pv, g = R.random_image_inputs(c, grids)
    row = [5, 6] + R.image_tokens(c, grids[0]) + [7, 8, 9]
    ids = np.asarray([row] * 4)
    return model.prepare_inputs(ids, pixel_values=np.concatenate([pv] * 4),
                                image_grid_thw=np.concatenate([g] * 4))


def main():
    topo = distributed.initialize(timeout_s=int(os.environ.get("GUARD_JAX_INIT_TIMEOUT", "60")))
    assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
    c = tiny()
    mesh = make_mesh((2, 2, 2))
    tx = optax.sgd(0.1, momentum=0.9)
    model = shard_model(init_model(c, seed=0), mesh)  # same host init on both processes
    batch = batch_for(model, c)
    gd, state = init_train_state(model, tx, mesh)
    step = make_train_step(gd, tx, mesh=mesh, state=state)
    losses = []
    for _ in range(3):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    q = multihost_utils.process_allgather(state["params"]["text"]["layers"]["q"].get_value(),
                                          tiled=True)
    print(json.dumps({"process": topo.process_id, "method": topo.method, "losses": losses,
                      "q_sum": float(np.asarray(q, np.float64).sum()),
                      "q_abs": float(np.abs(np.asarray(q, np.float64)).sum())}), flush=True)


if __name__ == "__main__":
    main()
