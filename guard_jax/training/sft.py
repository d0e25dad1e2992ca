"""Supervised fine-tuning: the loop that wires loader, model, optimizer, checkpoints, metrics.

One iteration = one micro-batch; `optax.MultiSteps` turns train.global_batch / micro_batch
micro-batches into one update. Resumes from the newest checkpoint in the workdir (parameters,
optimizer, step and the loader's position); on SIGTERM it saves and returns; a NaN/inf loss stops
the run before anything non-finite is checkpointed.
"""

from __future__ import annotations

import json
import logging
import os

import jax

from guard_jax.errors import InputError

log = logging.getLogger(__name__)


def _buckets(run) -> tuple[int, ...]:
    if not run.data.buckets:
        return (run.data.seq_len,)
    out = tuple(sorted(int(x) for x in str(run.data.buckets).split(",") if x.strip()))
    if out[-1] > run.data.seq_len:
        raise InputError(f"data.buckets {out} exceed data.seq_len {run.data.seq_len}")
    return out


def tokenizer_key(run) -> str:
    """The config key the run's tokenizer folder comes from (named when it is not a folder)."""
    return "data.tokenizer_dir" if run.data.tokenizer_dir else "model.hf_dir"


def loader_config(run, *, pad_id: int, shard_index: int = 0, shard_count: int = 1):
    """The SFT loader's settings for `run`: one endless stream, a fresh permutation per epoch
    (docs/data.md). `guard-jax data build --check-config` checks records against the same."""
    from data_pipeline.loader import LoaderConfig, video_options

    if run.train.micro_batch % shard_count:
        raise InputError(f"train.micro_batch {run.train.micro_batch} does not split over "
                         f"{shard_count} processes")
    return LoaderConfig(
        recipe=run.data.recipe,
        recipe_options=(("mode", run.data.recipe_mode),) if run.data.recipe_mode else (),
        buckets=_buckets(run), batch_size=run.train.micro_batch // shard_count,
        images_per_sample=run.data.images_per_sample, min_pixels=run.data.min_pixels,
        max_pixels=run.data.max_pixels, seed=run.train.seed, num_epochs=None,
        worker_count=run.data.worker_count, on_error=run.data.on_error,
        quarantine_path=os.path.join(run.workdir, "quarantine.jsonl"),
        shard_index=shard_index, shard_count=shard_count, pad_id=pad_id,
        **video_options(run.data))


def build_loader(run, model_config, *, tokenizer_dir: str):
    from data_pipeline.build import open_source
    from data_pipeline.loader import make_loader
    from guard_jax.training.global_loader import GlobalLoader

    if not run.data.path:
        raise InputError("data.path is empty: point it at a dataset built by `guard-jax data "
                         "build` (--config.data.path=DIR)")
    source, pad_id = open_source(run.data.path, run.data.split), model_config.generation_pad_id

    def make(index, count):
        return make_loader(source, loader_config(run, pad_id=pad_id, shard_index=index,
                                                 shard_count=count),
                           tokenizer_dir=tokenizer_dir, tokenizer_key=tokenizer_key(run))
    # every process reads its share; each micro-batch is gathered into the global one
    return GlobalLoader(make, jax.process_count(), jax.process_index(),
                        pad_values={"input_ids": pad_id})


def initial_model(run, mc, mesh):
    """The run's starting weights on `mesh`: model.hf_dir, else a random init (train.seed)."""
    from guard_jax.models.qwen2_5_vl import init_model, load_hf
    if run.model.hf_dir:
        return load_hf(run.model.hf_dir, dtype=mc.param_dtype, compute_dtype=mc.dtype,
                       mesh=mesh, remat=mc.remat, attention_impl=mc.attention_impl)
    return init_model(mc, seed=run.train.seed, mesh=mesh)


def train_components(run, model, mesh):
    """(graphdef, state, tx, schedule, lora) for `model` exactly as `guard-jax train` builds
    them (optimizer over the weights or the LoRA adapters; state in the mesh's shardings)."""
    from flax import nnx

    from guard_jax.training.optim import run_optimizer
    from guard_jax.training.train_step import init_train_state
    _, params = nnx.split(model, nnx.Param)
    tx, schedule, lora = run_optimizer(run, params)
    graphdef, state = init_train_state(model, tx, mesh, lora=lora, seed=run.train.seed)
    return graphdef, state, tx, schedule, lora


def train(run, workdir: str, *, allow_config_change=()) -> dict:
    """Runs (or resumes) the SFT job `run` (a locked run config) in `workdir`. A resume refuses
    config changes that alter the checkpoint's meaning unless their keys are in
    `allow_config_change` (guard_jax/training/resume.py)."""
    from guard_jax.run_config import model_config
    from guard_jax.sharding import make_mesh, unsplit_batch_warning
    from guard_jax.training import checkpoint as ckpt_lib
    from guard_jax.training import resume
    from guard_jax.training.batch import to_model_batch
    from guard_jax.training.metrics import MetricsWriter, StepTimer, check_finite
    from guard_jax.training.train_step import make_train_step

    os.makedirs(workdir, exist_ok=True)
    run.workdir = str(workdir)
    resume.check_config(run, workdir, allow=allow_config_change)  # before any device work
    mc = model_config(run)
    mesh = make_mesh(dict(run.mesh))
    warning = unsplit_batch_warning(run.train.micro_batch, "train.micro_batch",
                                    mesh.shape["data"], mesh.shape["fsdp"])
    if warning:
        log.warning(warning)
    tokenizer_dir = run.data.tokenizer_dir or run.model.hf_dir
    if not tokenizer_dir:
        raise InputError("no tokenizer: set data.tokenizer_dir (or model.hf_dir)")
    accum = run.train.global_batch // run.train.micro_batch
    total_micro = run.train.steps * accum

    graphdef, state, tx, schedule, lora = train_components(run, initial_model(run, mc, mesh),
                                                           mesh)
    loader = build_loader(run, mc, tokenizer_dir=tokenizer_dir)

    ckpt = ckpt_lib.Checkpointer(workdir, keep=run.train.keep_checkpoints,
                                 every_steps=run.train.checkpoint_every * accum,
                                 config=json.loads(run.to_json()), seed=run.train.seed)
    ckpt_lib.install_sigterm_handler()
    state, start = resume.restore(ckpt, state, loader)
    step_fn = make_train_step(graphdef, tx, mesh=mesh, state=state, lora=lora)
    writer = MetricsWriter(workdir, process_index=jax.process_index(),
                           total_steps=total_micro, initial_step=start)
    timer = StepTimer()
    last = {}
    # Which samples each micro-step saw (all processes' rows, in order): audits the data order,
    # also across a resume (steps re-run after a crash appear again, the later line wins).
    order = (open(os.path.join(workdir, "data_order.jsonl"), "a")
             if jax.process_index() == 0 else None)
    try:
        for micro in range(start, total_micro):
            raw = next(loader)
            batch = to_model_batch(raw, mc)
            state, metrics = step_fn(state, batch)
            done = micro + 1
            if order is not None and "ids" in raw:
                order.write(json.dumps({"step": done, "ids": [str(i) for i in raw["ids"]]})
                            + "\n")
                order.flush()
            if done % run.train.log_every == 0 or done == total_micro:
                metrics = {k: float(v) for k, v in metrics.items()}
                check_finite(done, metrics)
                update = done // accum
                metrics.update(lr=float(schedule(max(update - 1, 0))),
                               **timer.step(int(batch["attention_mask"].sum()) *
                                            run.train.log_every))
                writer.write(done, metrics)
                last = metrics
            save_due = (done % ckpt.every_steps == 0 or done == total_micro
                         or ckpt_lib.preempted())
            if save_due:  # never checkpoint a non-finite state
                check_finite(done, {k: float(metrics[k]) for k in ("loss", "grad_norm")})
            if ckpt.maybe_save(done, state, data_state=loader.get_state(),
                               force=done == total_micro):
                log.warning("preempted: saved step %d, exiting", done)
                break
    finally:
        ckpt.close()
        writer.close()
        if order is not None:
            order.close()
        if hasattr(loader, "close"):
            loader.close()
    return {"step": int(state["step"]), **last}
