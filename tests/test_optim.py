"""The optimizer from a run config: schedules, freezing by regex, gradient accumulation."""

import jax
import numpy as np
import pytest
from flax import nnx

from guard_jax.models.qwen2_5_vl import init_model, tiny
from guard_jax.run_config import base_config
from guard_jax.training.optim import learning_rate_schedule, make_optimizer


def test_schedules():
    s = learning_rate_schedule(1.0, 110, warmup_steps=10, kind="cosine")
    assert float(s(0)) == 0.0 and abs(float(s(5)) - 0.5) < 1e-6 and abs(float(s(10)) - 1) < 1e-6
    assert abs(float(s(60)) - 0.5) < 1e-6 and float(s(110)) < 1e-6
    lin = learning_rate_schedule(2.0, 100, kind="linear")
    assert abs(float(lin(50)) - 1.0) < 1e-6
    assert float(learning_rate_schedule(3.0, 100, kind="constant")(77)) == 3.0
    with pytest.raises(ValueError, match="choose one of"):
        learning_rate_schedule(1.0, 10, kind="step")


def _flat(tree):
    return {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(tree)}


def test_freeze_regex_and_accumulation():
    _, params = nnx.split(init_model(tiny()), nnx.Param)
    c = base_config().optim
    c.freeze = r"^visual\."
    c.schedule = "constant"
    tx, _ = make_optimizer(c, total_steps=10, params=params, accumulation=2)
    state = tx.init(params)
    g1 = jax.tree.map(lambda x: np.full(x.shape, 1.0, np.float32), params)
    g2 = jax.tree.map(lambda x: np.full(x.shape, 3.0, np.float32), params)
    u, state = tx.update(g1, state, params)
    assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(u))  # accumulating
    u, state = tx.update(g2, state, params)
    flat = _flat(u)
    assert all(np.abs(v).max() == 0 for k, v in flat.items() if k.startswith("visual."))
    # one adamw step on the mean gradient (2.0): the first adam step moves by lr * sign(g)
    # (bias-corrected), and the clip leaves a constant gradient's direction alone
    q = flat["text.layers.q"]
    assert np.allclose(q, -c.lr, rtol=1e-3)
    with pytest.raises(ValueError, match="freezes every parameter"):
        c.freeze = "."
        make_optimizer(c, total_steps=10, params=params)
