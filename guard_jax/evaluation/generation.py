"""The model side of `guard-jax eval --config`: the mesh, the model (from an HF directory or
straight from a training checkpoint) and greedy decoding of a `PromptBatch` through
`guard_jax.generate`.

A training checkpoint is restored onto the eval mesh: only its parameters (and LoRA adapters,
folded in as `guard-jax export` folds them), each process reading the shards its devices own;
the optimizer state is never read, and nothing is written. The weights, the config and the
tokenizer (the files its export would copy) are those of the checkpoint's HF export, so both
give the same outputs; see docs/evaluation.md#several-hosts for why no export is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from guard_jax.errors import InputError


def export_for_eval(checkpoint, out_dir, *, step: int | None = None) -> str:
    """The checkpoint's HF export under `out_dir` (`guard-jax moderate --checkpoint`)."""
    from guard_jax.training.hf_convert import export_checkpoint
    return str(export_checkpoint(checkpoint, Path(out_dir) / "hf", step=step, progress=False))


def load_tokenizer(path):
    if not path:
        raise ValueError("no tokenizer: set data.tokenizer_dir, or pass --hf-dir / --checkpoint "
                         "(whose export carries the tokenizer files)")
    from data_pipeline.local_files import load_tokenizer as load_local
    return load_local(path)


def decode_outputs(tokens, tokenizer, eos_token_ids) -> list[str]:
    """Text of each row of generated ids, up to (not including) its first EOS."""
    eos = set(int(i) for i in np.atleast_1d(eos_token_ids))
    out = []
    for row in np.asarray(tokens):
        stop = next((k for k, t in enumerate(row.tolist()) if t in eos), len(row))
        out.append(tokenizer.decode(row[:stop].tolist(), skip_special_tokens=True))
    return out


def generate_outputs(model, batch, *, tokenizer, max_new_tokens: int, mesh=None,
                     engine: str = "static", slots: int = 0) -> list[str]:
    """Greedy raw outputs for one `PromptBatch` (every row, padding rows included), decoded by
    the rollout engine `engine` (docs/sampling.md#engines; `slots`: its decode pool)."""
    from guard_jax import generate
    eos = model.config.generation_eos_ids
    tokens = generate(model, batch.input_ids, attention_mask=batch.attention_mask,
                      pixel_values=batch.pixel_values, image_grid_thw=batch.image_grid_thw,
                      pixel_values_videos=batch.pixel_values_videos,
                      video_grid_thw=batch.video_grid_thw,
                      second_per_grid_ts=batch.second_per_grid_ts,
                      max_new_tokens=max_new_tokens, temperature=0.0, eos_token_ids=eos,
                      mesh=mesh, engine=engine, slots=slots)
    return decode_outputs(tokens, tokenizer, eos)


def mesh_problems(run) -> list[str]:
    """The config's mesh (data x fsdp x tensor) against the job's devices, and eval.batch_size
    against its data x fsdp devices (each takes an equal share of the rows); one line each."""
    import jax

    from guard_jax.run_config import check_mesh
    from guard_jax.sharding import MeshConfig
    try:
        check_mesh(run, jax.device_count(), "this job")
    except InputError as e:
        return [str(e)]
    data, fsdp, _ = MeshConfig(run.mesh.data, run.mesh.fsdp, run.mesh.tensor).resolve(
        jax.device_count())
    if run.eval.batch_size % (data * fsdp):
        return [f"eval.batch_size {run.eval.batch_size} is not a multiple of the "
                f"{data * fsdp} data x fsdp devices the batch is split over"]
    return []


def eval_mesh(run):
    """The config's mesh over every device of the job (None on one device); `mesh_problems`
    raised as one InputError."""
    import jax

    from guard_jax.sharding import make_mesh
    problems = mesh_problems(run)
    if problems:
        raise InputError("; ".join(problems))
    if jax.device_count() == 1:
        return None
    return make_mesh({"data": run.mesh.data, "fsdp": run.mesh.fsdp, "tensor": run.mesh.tensor})


# ---- a training checkpoint, restored onto the mesh -----------------------------------------
def checkpoint_run(checkpoint, step: int | None = None):
    """(step, run config) of checkpoint `step` of a training workdir (default: the newest)."""
    from guard_jax.training.hf_convert import _read_meta, _run_from_meta
    step, meta = _read_meta(Path(checkpoint), step)
    return step, _run_from_meta(meta)


def checkpoint_tokenizer_dir(ckpt_run) -> str | None:
    """Where the tokenizer files of a checkpoint's export come from."""
    return ckpt_run.data.tokenizer_dir or ckpt_run.model.hf_dir or None


def load_checkpoint(checkpoint, step: int, ckpt_run, *, dtype: str, compute_dtype: str,
                    mesh=None):
    """The model of checkpoint `step`, parameters in `dtype`, placed as `load_hf` places an
    HF directory on `mesh` (None: one device)."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    from guard_jax.models.qwen2_5_vl import Qwen25VLConfig, abstract_model
    from guard_jax.run_config import model_config
    from guard_jax.sharding import make_mesh, param_shardings
    from guard_jax.training import lora as lora_lib
    from guard_jax.training.checkpoint import STATE, flatten_state

    mesh = mesh if mesh is not None else make_mesh((1, 1, 1), devices=jax.devices()[:1])
    saved_config = model_config(ckpt_run)
    # the config an export writes and load_hf reads back: architecture, then our dtypes
    config = Qwen25VLConfig.from_hf_dict(saved_config.to_hf_dict(), param_dtype=dtype,
                                         dtype=compute_dtype)
    graphdef, params = nnx.split(abstract_model(saved_config), nnx.Param)
    shardings = param_shardings(params, mesh)
    wanted = {"params": jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), params, shardings)}
    lora = lora_lib.from_run(ckpt_run)
    if lora is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        wanted["lora"] = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
            lora_lib.lora_shapes(params, lora))
    flat, treedef = flatten_state(wanted)
    path = Path(checkpoint).absolute() / str(step) / STATE
    handler = ocp.PyTreeCheckpointHandler()
    saved = handler.metadata(path).tree
    problems = [f"{k}: shape {tuple(saved[k].shape) if k in saved else 'missing'}, the model "
                f"needs {tuple(v.shape)}" for k, v in flat.items()
                if k not in saved or tuple(saved[k].shape) != tuple(v.shape)]
    if problems:
        raise InputError(f"--checkpoint {checkpoint} step {step} does not hold its run's model: "
                         + "; ".join(problems[:5]))
    # a partial restore: the optimizer state stays on disk
    got = handler.restore(path, args=ocp.args.PyTreeRestore(
        item=flat, restore_args=ocp.checkpoint_utils.construct_restore_args(flat),
        partial_restore=True))
    state = jax.tree_util.tree_unflatten(treedef, [got[k] for k in flat])
    target = jax.numpy.dtype(dtype)

    def finish(state):
        p = state["params"]
        if lora is not None:  # folded in the stored dtype, as the export does
            p = lora_lib.merge(p, state["lora"], lora)
        return jax.tree.map(lambda x: x.astype(target), p)

    out = jax.jit(finish, out_shardings=shardings)(state)
    return nnx.merge(nnx.split(abstract_model(config), nnx.Param)[0], out)


def model_generate_fn(run, model, tokenizer, mesh=None):
    """A `GenerateFn` over `model` (greedy, `run.eval.max_new_tokens`, the engine
    `run.eval.rollout_engine`), sharded by `mesh`."""
    def fn(batch):
        return generate_outputs(model, batch, tokenizer=tokenizer,
                                max_new_tokens=run.eval.max_new_tokens, mesh=mesh,
                                engine=run.eval.rollout_engine, slots=run.eval.rollout_slots)
    return fn
