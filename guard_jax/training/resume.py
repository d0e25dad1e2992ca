"""Resuming a run: which config changes a resume refuses, warns about or takes, and the restore.

Every checkpoint records the run config it was written with. Before a resumed run builds its
model, `check_config` compares that config (of the newest checkpoint) with the new one, key by
key, following RESUME_RULES, the one table of what may change (docs/checkpoints.md):

- REFUSED: what the saved weights and optimizer state are (the model, LoRA, the optimizer's
  kind). Changing them makes the checkpoint a different object.
- REFUSED_ONCE_TRAINED: what the step count and the data position mean (the data and how it is
  cut into samples and batches, the trainer, the seed). Free at step 0 (an imported
  checkpoint), refused once a step has trained.
- ALLOWED: everything else (learning rate and optimizer settings, steps, intervals, the mesh,
  memory and kernel choices, GRPO's sampling and loss knobs, eval): taken, with one warning
  that lists each changed key.

A refusal raises InputError (exit 2) listing every refused key with its old and new value;
`allow` (`guard-jax train --allow-config-change KEY`) takes a refused change deliberately.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Iterable, Mapping

from guard_jax.errors import InputError

log = logging.getLogger(__name__)

REFUSED = "refused"
REFUSED_ONCE_TRAINED = "refused once trained"
ALLOWED = "allowed"

# (rule, key patterns): the first group with a matching pattern decides. Every key of
# run_config.base_config() matches one (tests/test_resume_safety.py checks it).
RESUME_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (REFUSED, ("model.preset", "model.hf_dir", "model.param_dtype", "lora.*", "optim.name",
               "optim.mu_dtype", "optim.freeze")),
    (REFUSED_ONCE_TRAINED, ("trainer", "data.path", "data.split", "data.recipe",
                            "data.recipe_mode", "data.tokenizer_dir", "data.buckets",
                            "data.seq_len", "data.images_per_sample", "data.min_pixels",
                            "data.max_pixels", "data.videos_per_sample", "data.video_fps",
                            "data.min_frames", "data.max_frames", "data.video_min_pixels",
                            "data.video_max_pixels", "data.worker_count", "train.global_batch",
                            "train.micro_batch", "train.seed", "grpo.num_generations",
                            "grpo.prompts_per_step", "grpo.rollout_chunk_prompts",
                            "grpo.max_prompt_len")),
    (ALLOWED, ("workdir", "model.dtype", "model.remat", "model.attention_impl", "mesh.*",
               "data.on_error", "train.steps", "train.log_every", "train.checkpoint_every",
               "train.keep_checkpoints", "optim.*", "grpo.*", "eval.*")),
)

# Directories: the same directory under another spelling is no change.
PATH_KEYS = ("workdir", "model.hf_dir", "data.path", "data.tokenizer_dir",
             "grpo.similarity_model")


def rule(key: str) -> str:
    """REFUSED, REFUSED_ONCE_TRAINED or ALLOWED for a dotted config key."""
    for name, patterns in RESUME_RULES:
        if any(fnmatch.fnmatchcase(key, p) for p in patterns):
            return name
    raise KeyError(f"config key {key!r} is in no group of RESUME_RULES")


def flat_keys(config: Mapping, prefix: str = "") -> dict:
    """{'a.b': value} for a nested dict (lists and tuples are values)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same(key: str, old, new) -> bool:
    if old == new:
        return True
    return (key in PATH_KEYS and bool(old) and bool(new) and os.path.exists(old)
            and os.path.exists(new) and os.path.samefile(old, new))


def config_changes(saved: Mapping, new: Mapping) -> dict[str, tuple]:
    """{key: (saved value, new value)} for each key of `new` recorded in `saved` that differs."""
    old, cur = flat_keys(saved), flat_keys(new)
    return {k: (old[k], v) for k, v in cur.items() if k in old and not _same(k, old[k], v)}


def _show(changes: Mapping[str, tuple]) -> str:
    def short(v):
        text = json.dumps(v)
        return text if len(text) <= 80 else text[:77] + "..."
    return ", ".join(f"{k} ({short(a)} -> {short(b)})" for k, (a, b) in changes.items())


def check_config(run, workdir, allow: Iterable[str] = ()) -> None:
    """Compares the run config `run` with the config of the newest checkpoint in `workdir`
    (nothing to do without one): raises InputError for refused changes not in `allow`, logs a
    warning listing the changes it takes."""
    from guard_jax.run_config import base_config
    from guard_jax.training.checkpoint import Checkpointer, CheckpointCorruptError

    allow = set(allow)
    unknown = sorted(allow - set(flat_keys(json.loads(base_config().to_json()))))
    if unknown:
        raise InputError(f"--allow-config-change {' '.join(unknown)}: not a config key "
                         "(write it like optim.lr or data.path)")
    with Checkpointer(workdir, async_save=False) as ckpt:
        meta = step = None
        for step in reversed(ckpt.all_steps()):
            try:
                meta = ckpt.read_meta(step)
                break
            except CheckpointCorruptError:
                continue  # unreadable: the restore moves it aside and takes an older step
        where = ckpt.directory / str(step)
    if meta is None:
        return
    if not meta.get("config"):
        log.warning("checkpoint %s records no run config: the resumed run's config is not "
                    "checked against it", where)
        return
    changes = config_changes(meta["config"], json.loads(run.to_json()))
    trained = int(meta.get("step") or 0) > 0
    refused = {k: v for k, v in changes.items() if k not in allow and (
        rule(k) == REFUSED or (rule(k) == REFUSED_ONCE_TRAINED and trained))}
    if refused:
        raise InputError(
            f"cannot resume from checkpoint {where}: these config changes would alter what "
            f"it holds or what its step and data position mean: {_show(refused)}. Start a "
            "new --workdir "
            "to train with these values, or pass --allow-config-change KEY for each key you "
            "changed deliberately (see docs/checkpoints.md)")
    if changes:
        log.warning("resuming from checkpoint %s with a changed config: %s", where,
                    _show(changes))


def restore(ckpt, state, loader) -> tuple:
    """(state, start step): the newest readable checkpoint of `ckpt` restored onto `state`'s
    shardings and the loader moved to its data position, or (`state`, 0) without one."""
    if ckpt.latest_step() is None:
        return state, 0
    state, meta = ckpt.restore(state)
    if meta.get("data_state") is not None:
        loader.set_state(meta["data_state"])
    start = int(meta["step"])
    log.info("resumed from step %d", start)
    return state, start
