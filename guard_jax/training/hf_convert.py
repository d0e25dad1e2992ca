"""Checkpoint <-> HF directory: `guard-jax export` and `guard-jax import`.

A training checkpoint records its run config (orbax JSON metadata), which says the model and the
optimizer; export rebuilds that state's shapes, restores it onto one device's shardings and
writes the parameters with `save_hf` (tokenizer files copied from the run's tokenizer or base
model directory; the processor files it lacks written with the run's image pixel limits).
Import loads an HF directory and writes step 0 of a checkpoint that `guard-jax train` resumes
from. What either refuses: docs/export-import.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from flax import nnx

from guard_jax.errors import InputError


def _run_from_meta(meta: dict):
    from ml_collections import ConfigDict

    from guard_jax.run_config import base_config, check_keys
    cfg = meta.get("config")
    if not cfg:
        raise InputError("the checkpoint holds no run config; it was not written by guard-jax "
                         "train or guard-jax import")
    run = ConfigDict(cfg)
    check_keys(run, base_config(), where="checkpoint metadata")
    return run


def _read_meta(ckpt_dir: Path, step: int | None) -> tuple[int, dict]:
    from guard_jax.training.checkpoint import Checkpointer
    ck = Checkpointer(ckpt_dir, async_save=False)
    steps = ck.all_steps()
    ck.close()
    if not steps:
        raise InputError(f"{ckpt_dir}: no checkpoint steps")
    step = steps[-1] if step is None else step
    meta_file = ckpt_dir / str(step) / "meta" / "metadata"
    if not meta_file.is_file():
        raise InputError(f"{meta_file}: missing (steps present: {steps})")
    return step, json.loads(meta_file.read_text())


def _check_apart(ckpt_dir: Path, out: Path) -> None:
    """Refuses an export folder that is, or lies inside, the checkpoint directory, or that
    holds it: replacing `out` must never touch the checkpoints."""
    ck, o = ckpt_dir.resolve(), out.resolve()
    if o == ck or ck in o.parents:
        raise InputError(f"--out {out}: inside the checkpoint directory {ckpt_dir}; export to a "
                         "directory of its own")
    if o in ck.parents:
        raise InputError(f"--out {out}: holds the checkpoint directory {ckpt_dir}; export to a "
                         "directory of its own")


def export_checkpoint(ckpt_dir, out, *, step: int | None = None, dtype: str | None = None,
                      progress: bool = True, overwrite: bool = False) -> Path:
    """Writes the parameters of checkpoint `step` (default: newest) as an HF directory.

    `out` may be new, empty or a previous export (`overwrite`: any HF model directory); never
    the checkpoint directory, a folder inside it or one holding it (see save_hf)."""
    from guard_jax.models.qwen2_5_vl import abstract_model, save_hf
    from guard_jax.models.qwen2_5_vl.config import require_local_dir
    from guard_jax.models.qwen2_5_vl.hf_io import check_export_target
    from guard_jax.run_config import model_config
    from guard_jax.sharding import make_mesh
    from guard_jax.training.checkpoint import Checkpointer, abstract_train_state
    from guard_jax.training.lora import merge
    from guard_jax.training.optim import run_optimizer

    # checked first: the Checkpointer would create a missing directory
    ckpt_dir = Path(require_local_dir(ckpt_dir, "give the workdir of guard-jax train or import"))
    _check_apart(ckpt_dir, Path(out))
    check_export_target(out, overwrite=overwrite)  # before the (long) restore
    step, meta = _read_meta(ckpt_dir, step)
    run = _run_from_meta(meta)
    mc = model_config(run)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    graphdef, params = nnx.split(abstract_model(mc), nnx.Param)
    tx, _, lora = run_optimizer(run, params)
    target = abstract_train_state(mc, tx, mesh, lora=lora)
    ck = Checkpointer(ckpt_dir, async_save=False)
    try:
        state, _ = ck.restore(target, step=step)
    finally:
        ck.close()
    params = state["params"]
    if lora is not None:  # the export is a plain checkpoint: adapters folded into the weights
        params = jax.jit(lambda p, a: merge(p, a, lora))(params, state["lora"])
    model = nnx.merge(graphdef, params)
    assets = run.data.tokenizer_dir or run.model.hf_dir or None
    # the image and video processors resize (and sample frames) as the run's data pipeline
    # did (docs/export-import.md)
    d = run.data  # checkpoints from before the video keys export transformers' defaults
    video = dict(fps=d.get("video_fps"), min_frames=d.get("min_frames"),
                 max_frames=d.get("max_frames"), min_pixels=d.get("video_min_pixels"),
                 max_pixels=d.get("video_max_pixels"))
    return save_hf(model, out, dtype=dtype, assets_from=assets, progress=progress,
                   overwrite=overwrite, min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                   video=video)


def import_hf(hf_dir, out, *, config_path: str | None = None, overrides=(),
              dtype: str = "float32") -> Path:
    """Writes step 0 of a checkpoint holding `hf_dir`'s weights (and a fresh optimizer state
    for the run config, default: configs' base settings with model.hf_dir = hf_dir)."""
    from guard_jax.errors import InputError
    from guard_jax.models.qwen2_5_vl import load_hf
    from guard_jax.run_config import base_config, load_config, validate
    from guard_jax.training.checkpoint import Checkpointer
    from guard_jax.training.optim import run_optimizer
    from guard_jax.training.train_step import init_train_state

    # refused before the model loads: an existing checkpoint is never written into
    steps = sorted(int(p.name) for p in Path(out).iterdir()
                   if p.name.isdigit()) if Path(out).is_dir() else []
    if steps:
        raise InputError(f"--out {out} already holds checkpoint steps {steps}: import writes "
                         "step 0 of a new checkpoint directory; choose another --out")
    if config_path:
        run = load_config(config_path, list(overrides))
        run.unlock()
    else:
        run = base_config()
        run.model.param_dtype = dtype
    run.model.hf_dir = str(Path(hf_dir).absolute())
    validate(run)
    model = load_hf(hf_dir, dtype=run.model.param_dtype, compute_dtype=run.model.dtype,
                    progress=False)
    _, params = nnx.split(model, nnx.Param)
    tx, _, lora = run_optimizer(run, params)
    _, state = init_train_state(model, tx, lora=lora, seed=run.train.seed)
    out = Path(out)
    with Checkpointer(out, async_save=False, config=json.loads(run.to_json()),
                      seed=run.train.seed) as ck:
        ck.save(0, state, wait=True)
    return out
