"""Sharding on 8 fake CPU devices: sharded loading, logits, init and train steps."""

import numpy as np
import optax
import pytest

import hf_reference as R
from guard_jax.models.qwen2_5_vl import init_model, load_hf, save_hf, tiny
from guard_jax.models.qwen2_5_vl.placement import _flat_range, init_sharded, shard_model
from guard_jax.sharding import (MeshConfig, TRAIN_RULES, logical_to_spec, make_mesh,
                                param_shardings)
from guard_jax.training.train_step import init_train_state, make_train_step

MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 8, 1), (2, 1, 2)]
LARGE = ("text.embed", "text.lm_head", "text.layers.q", "text.layers.gate", "text.layers.down",
         "visual.blocks.qkv", "visual.blocks.gate", "visual.merger.fc2")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    c = tiny()
    model = init_model(c, seed=3)
    d = tmp_path_factory.mktemp("hf") / "export"
    save_hf(model, d, progress=False)
    grids = [[1, 4, 4], [1, 6, 10]]
    pv, g = R.random_image_inputs(c, grids)
    row = [5, 6, 7] + R.image_tokens(c, grids[0]) + [8, 9] + R.image_tokens(c, grids[1]) + [10]
    # the second row is left-padded: it drops two leading text tokens, keeps both images
    ids = np.asarray([row, [0, 0] + row[2:]])
    mask = np.asarray([[1] * len(row), [0, 0] + [1] * (len(row) - 2)])
    inputs = dict(attention_mask=mask, pixel_values=np.concatenate([pv, pv]),
                  image_grid_thw=np.concatenate([g, g]))
    ref = np.asarray(model(ids, **inputs))
    return c, model, d, ids, inputs, ref


def _flat(model):
    from flax import nnx
    return {".".join(map(str, k)): v.get_value()
            for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_load_logits_equal_unsharded(setup, shape):
    c, _, d, ids, inputs, ref = setup
    mesh = make_mesh(shape)
    model = load_hf(d, dtype="float32", mesh=mesh, progress=False)
    out = np.asarray(model(ids, **inputs))
    valid = inputs["attention_mask"].astype(bool)
    diff = float(np.abs(out - ref)[valid].max())
    assert diff <= 1e-5, f"mesh {shape}: max |logits diff| {diff}"
    params = _flat(model)
    if shape[1] > 1 or shape[2] > 1:
        for name in LARGE:
            arr = params[name]
            local = arr.addressable_shards[0].data.shape
            assert np.prod(local) < np.prod(arr.shape), f"{name} not split on {shape}: {local}"


def test_sharded_init_equals_single_device_init(setup):
    # jax.random under jit(out_shardings): each device makes its own shards, and the values do
    # not depend on the mesh
    c = setup[0]
    import jax
    ref = _flat(init_sharded(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]), seed=7))
    sharded = _flat(init_sharded(c, make_mesh((2, 2, 2)), seed=7))
    for k, v in ref.items():
        assert sharded[k].shape == v.shape
        np.testing.assert_allclose(np.asarray(sharded[k]), np.asarray(v), atol=1e-6, err_msg=k)
    q = sharded["text.layers.q"]
    assert np.prod(q.addressable_shards[0].data.shape) < np.prod(q.shape)
    assert abs(float(np.std(np.asarray(q))) - c.text.initializer_range) < 2e-3


def test_three_sharded_train_steps_equal_single_device(setup):
    c, model, _, ids, inputs, _ = setup
    batch = model.prepare_inputs(ids, **inputs)
    # SGD: Adam's normalisation turns float32 noise in near-zero gradients (e.g. k_bias, whose
    # gradient vanishes up to RoPE) into full-size steps, which says nothing about sharding.
    tx = optax.sgd(0.1, momentum=0.9)
    gd, state = init_train_state(init_model(c, seed=0), tx)
    step = make_train_step(gd, tx)
    losses = []
    for _ in range(3):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    ref = _flat_state(state["params"])
    for shape in [(2, 2, 2), (1, 8, 1)]:
        mesh = make_mesh(shape)
        gd2, st2 = init_train_state(shard_model(init_model(c, seed=0), mesh), tx, mesh)
        step2 = make_train_step(gd2, tx, mesh=mesh, state=st2)
        for i in range(3):
            st2, m2 = step2(st2, batch)
            assert abs(float(m2["loss"]) - losses[i]) < 1e-5
        got = _flat_state(st2["params"])
        worst = max(float(np.abs(np.asarray(got[k]) - np.asarray(v)).max()) for k, v in ref.items())
        assert worst <= 1e-5, f"mesh {shape}: params differ by {worst} after 3 steps"
        assert got["text.layers.q"].sharding.spec != ()  # really sharded, not replicated


def _flat_state(state):
    from flax import nnx
    return {".".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(state)}


def test_mesh_config_resolution_and_errors():
    assert MeshConfig(1, -1, 2).resolve(8) == (1, 4, 2)
    assert MeshConfig(2, 1, 2).resolve(8) == (2, 1, 2)  # a subset of the devices
    with pytest.raises(ValueError, match="at most one axis"):
        MeshConfig(-1, -1, 1).resolve(8)
    with pytest.raises(ValueError, match="does not divide"):
        MeshConfig(3, -1, 1).resolve(8)
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh((4, 2, 2))
    with pytest.raises(ValueError, match="unknown mesh axes"):
        make_mesh({"data": 2, "model": 4})


def test_rules_validation_messages():
    mesh = make_mesh((1, 2, 4))
    bad = dict(TRAIN_RULES, heads="fsdp")
    with pytest.raises(ValueError, match="used twice"):
        logical_to_spec(("embed", "heads"), bad, (64, 4), mesh)
    # tiny() has 2 KV heads: 4 tensor shards cannot split them; the message says what to do
    from flax import nnx
    from guard_jax.models.qwen2_5_vl import abstract_model
    _, abstract = nnx.split(abstract_model(tiny()))
    with pytest.raises(ValueError, match=r"More tensor shards than KV heads \(2\).*tensor <= 2"):
        param_shardings(abstract, mesh)
    with pytest.raises(KeyError, match="no sharding rule"):
        logical_to_spec(("nonsense",), TRAIN_RULES, (4,), mesh)


def test_steps_on_fake_cpu_devices_do_not_queue_ahead():
    """The 8 fake CPU devices share one thread pool: 60 train-step-like programs with an
    all-reduce, queued without waiting, deadlock it and XLA aborts the process after 40 s.
    Each call on such a mesh returns ready results, so a loop that syncs rarely (SFT logs
    every log_every steps) runs through."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from guard_jax.training.train_step import jit_with_batch, shared_pool
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    assert shared_pool(mesh)
    w = jax.device_put(jnp.ones((64, 64)), NamedSharding(mesh, P()))
    step = jit_with_batch(lambda w, b: w + 1e-3 * jnp.tanh(b["input_ids"] @ w).mean(0), mesh,
                          NamedSharding(mesh, P()), out_shardings=NamedSharding(mesh, P()))
    x = np.ones((16, 64), np.float32)
    for _ in range(60):
        w = step(w, {"input_ids": x})
        assert w.is_ready()
    assert np.isfinite(np.asarray(w)).all()


def test_flat_range():
    assert _flat_range((slice(2, 4), slice(None)), (8, 16)) == (32, 64)
    assert _flat_range((slice(None), slice(0, 8)), (1, 16)) == (0, 8)
    assert _flat_range((slice(None), slice(0, 8)), (2, 16)) is None
    assert _flat_range((slice(None), slice(None)), (3, 5)) == (0, 15)


def test_sharded_splash_train_step_equals_xla(setup):
    """On a mesh the splash kernel runs under shard_map (rows over data, heads over tensor;
    interpret mode on the CPU): a train step's loss and updated parameters equal the XLA
    attention path's, decoder and vision tower alike."""
    c, model, _, ids, inputs, _ = setup
    batch = model.prepare_inputs(ids, **inputs)
    m = inputs["attention_mask"]
    # loss on real tokens only: the kernels differ on padding queries, whose output is unused
    batch["loss_mask"] = np.concatenate([m[:, 1:] * m[:, :-1], 0 * m[:, :1]], axis=1)
    tx = optax.sgd(0.1)
    mesh = make_mesh((2, 1, 2))
    out = {}
    for impl in ("xla", "splash_interpret"):
        ci = c.replace(attention_impl=impl)
        gd, st = init_train_state(shard_model(init_model(ci, seed=0), mesh), tx, mesh)
        st, m = make_train_step(gd, tx, mesh=mesh, state=st)(st, batch)
        out[impl] = float(m["loss"]), _flat_state(st["params"])
    (l0, p0), (l1, p1) = out["xla"], out["splash_interpret"]
    assert abs(l1 - l0) < 1e-5
    worst = max(float(np.abs(np.asarray(p1[k]) - np.asarray(v)).max()) for k, v in p0.items())
    assert worst <= 1e-5, f"splash on the mesh moves parameters {worst} away from xla"


@pytest.mark.parametrize("freeze,accumulation", [("", 1), ("^visual", 1), ("^visual", 4)])
def test_optimizer_moments_shard_like_their_parameters(freeze, accumulation):
    """Adam's moments (and MultiSteps' accumulated gradient) take their parameter's sharding,
    also for optim.freeze's masked state, whose tree lacks the frozen leaves (they were
    replicated on every device before: 3x the trainable parameters per device)."""
    import jax
    from flax import nnx

    from guard_jax.models.qwen2_5_vl import abstract_model
    from guard_jax.run_config import base_config
    from guard_jax.training.optim import make_optimizer
    from guard_jax.training.train_step import state_shardings
    mesh = make_mesh((1, 8, 1))
    _, params = nnx.split(abstract_model(tiny()), nnx.Param)
    optim = base_config().optim
    optim.freeze = freeze
    tx, _ = make_optimizer(optim, total_steps=10, accumulation=accumulation, params=params)
    sh = state_shardings(params, tx, mesh)
    q_spec = sh["params"]["text"]["layers"]["q"].get_value().spec
    assert q_spec != ()
    moments = [(jax.tree_util.keystr(p), s) for p, s in
               jax.tree_util.tree_leaves_with_path(sh["opt_state"])
               if "text" in jax.tree_util.keystr(p) and "'q'" in jax.tree_util.keystr(p)]
    assert len(moments) == (3 if accumulation > 1 else 2), moments  # mu, nu (+ accumulator)
    assert all(s.spec == q_spec for _, s in moments), moments
