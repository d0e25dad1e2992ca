"""Checkpointing on 8 fake CPU devices with the tiny model: keep-N, exact restore, restore on
another mesh, metadata, SIGTERM preemption, shape-mismatch and damaged-step errors."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from guard_jax.models.qwen2_5_vl import init_model, tiny
from guard_jax.sharding import make_mesh
from guard_jax.training.checkpoint import (CheckpointMismatchError, Checkpointer,
                                           abstract_train_state, decode_rng, flatten_state)
from guard_jax.training.train_step import init_train_state, make_train_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Adamw on mesh (2,2,2): 6 steps, saved every 2 with keep=2; host copies at each save."""
    c = tiny()
    mesh = make_mesh((2, 2, 2))
    tx = optax.adamw(1e-3)
    model = init_model(c, seed=0, mesh=mesh)
    gd, state = init_train_state(model, tx, mesh)
    step_fn = make_train_step(gd, tx, mesh=mesh, state=state)
    batch = model.prepare_inputs(np.random.default_rng(0).integers(2, 200, size=(4, 8)))
    d = tmp_path_factory.mktemp("ckpt")
    copies = {}
    ckpt = Checkpointer(d, keep=2, every_steps=2, config={"lr": 1e-3, "model": "tiny"}, seed=7)
    for _ in range(6):
        state, _ = step_fn(state, batch)  # donates the previous state, also while saving async
        step = int(state["step"])
        if step % 2 == 0:
            copies[step] = {k: np.asarray(v) for k, v in flatten_state(state)[0].items()}
        ckpt.maybe_save(step, state, data_state=f'{{"it": {step}}}', rng=jax.random.key(step))
    ckpt.close()
    return c, tx, mesh, d, state, copies


def _assert_equal(restored, ref: dict):
    flat, _ = flatten_state(restored)
    assert set(flat) == set(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(np.asarray(flat[k]), v, err_msg=k)
        assert flat[k].dtype == v.dtype, k


def test_keep_last_two_and_exact_restore(trained):
    c, tx, mesh, d, state, copies = trained
    ckpt = Checkpointer(d, keep=2, every_steps=2)
    assert ckpt.all_steps() == [4, 6] and ckpt.latest_step() == 6
    assert sorted(p.name for p in d.iterdir() if p.name.isdigit()) == ["4", "6"]
    # concrete target (the live state's shardings)
    restored, meta = ckpt.restore(state)
    _assert_equal(restored, copies[6])
    assert int(restored["step"]) == 6
    assert meta["step"] == 6 and meta["seed"] == 7 and meta["config"]["model"] == "tiny"
    assert meta["data_state"] == '{"it": 6}'
    key = decode_rng(meta["rng"])
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(6)))
    # an older step, abstract target on the same mesh
    restored4, meta4 = ckpt.restore(abstract_train_state(c, tx, mesh), step=4)
    _assert_equal(restored4, copies[4])
    assert meta4["data_state"] == '{"it": 4}'
    ckpt.close()


def test_restore_onto_other_mesh(trained):
    c, tx, _, d, _, copies = trained
    mesh2 = make_mesh((1, 8, 1))
    target = abstract_train_state(c, tx, mesh2)
    ckpt = Checkpointer(d)
    restored, _ = ckpt.restore(target)
    _assert_equal(restored, copies[6])
    got, _ = flatten_state(restored)
    want, _ = flatten_state(target)
    for k, v in got.items():
        assert v.sharding == want[k].sharding, k
    assert got["params.text.embed"].sharding.mesh.devices.shape == (1, 8, 1)
    assert "fsdp" in tuple(got["params.text.embed"].sharding.spec)
    ckpt.close()


def test_bytes_data_state_and_force(tmp_path):
    # no mesh: single-device arrays are a valid target too
    _, state = init_train_state(init_model(tiny(), seed=1), optax.sgd(0.1))
    ckpt = Checkpointer(tmp_path, every_steps=100, async_save=False)
    assert ckpt.latest_step() is None
    assert not ckpt.maybe_save(3, state, data_state=b"\x00grain\xff")  # not due: no save
    assert ckpt.latest_step() is None
    assert not ckpt.maybe_save(3, state, data_state=b"\x00grain\xff", force=True)
    assert ckpt.latest_step() == 3
    _, meta = ckpt.restore(state)
    assert meta["data_state"] == b"\x00grain\xff" and meta["step"] == 3
    ckpt.close()


def test_shape_mismatch_names_the_path(trained):
    _, tx, mesh, d, _, _ = trained
    other = tiny()
    other = dataclasses.replace(other, text=dataclasses.replace(other.text, intermediate_size=256))
    target = abstract_train_state(other, tx, mesh)
    with pytest.raises(CheckpointMismatchError, match=r"params\.text\.layers\.gate: checkpoint "
                       r"has shape \(2, 64, 128\), model expects \(2, 64, 256\)"):
        Checkpointer(d).restore(target)


def test_damaged_latest_step_falls_back(trained, tmp_path):
    c, tx, mesh, d, _, copies = trained
    d2 = tmp_path / "copy"
    shutil.copytree(d, d2)
    # damage step 6: drop its array data; also an unfinished save directory of a later step
    for p in (d2 / "6" / "state").iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.name != "_METADATA":
            p.unlink()
    (d2 / "8.orbax-checkpoint-tmp-123").mkdir()
    ckpt = Checkpointer(d2)
    assert ckpt.all_steps() == [4, 6]
    restored, meta = ckpt.restore(abstract_train_state(c, tx, mesh))
    assert meta["step"] == 4
    _assert_equal(restored, copies[4])
    ckpt.close()


def test_sigterm_saves_and_exits(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "checkpoint_worker.py"),
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 240
        line = ""
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.startswith("running step") or not line:
                break
        assert line.startswith("running step"), proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    last = [ln for ln in out.splitlines() if ln.startswith("preempted at step")]
    assert last, out
    step = int(last[0].split()[-1])
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == step
    mesh = make_mesh((2, 2, 2))
    _, meta = ckpt.restore(abstract_train_state(tiny(), optax.sgd(0.01), mesh))
    assert meta["step"] == step and meta["data_state"] == f"it-{step}"
    ckpt.close()
