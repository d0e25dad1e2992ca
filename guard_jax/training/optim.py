"""The optimizer a run config describes, built from optax pieces.

schedule (warmup + cosine | linear | constant) -> adamw (weight decay, mu dtype) after global-norm
clipping; parameters whose path matches `optim.freeze` (a regex over 'visual.blocks.qkv'-style
paths) get zero updates; `train.global_batch / train.micro_batch` micro-steps accumulate into one
update (optax.MultiSteps).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from guard_jax.errors import InputError

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                           kind: str = "cosine") -> optax.Schedule:
    if kind not in SCHEDULES:
        raise InputError(f"optim.schedule={kind!r}; choose one of {SCHEDULES}")
    if warmup_steps > total_steps:
        raise InputError(f"optim.warmup_steps {warmup_steps} exceeds the {total_steps} steps")
    decay = max(total_steps - warmup_steps, 1)
    after = {"cosine": optax.cosine_decay_schedule(lr, decay),
             "linear": optax.linear_schedule(lr, 0.0, decay),
             "constant": optax.constant_schedule(lr)}[kind]
    if warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), after],
                                [warmup_steps])


def param_paths(params) -> list[str]:
    return [".".join(str(p) for p in path) for path, _ in nnx.to_flat_state(params)]


def trainable_labels(params, freeze: str):
    """'train' / 'frozen' for every parameter, by regex over its dotted path."""
    pattern = re.compile(freeze) if freeze else None
    flat = [(path, "frozen" if pattern and pattern.search(".".join(str(p) for p in path))
             else "train") for path, _ in nnx.to_flat_state(params)]
    if pattern and all(label == "frozen" for _, label in flat):
        raise InputError(f"optim.freeze={freeze!r} freezes every parameter")
    labels = nnx.from_flat_state([(path, label) for path, label in flat])
    return jax.tree.map(lambda x: x, labels)


def make_optimizer(optim, *, total_steps: int, accumulation: int = 1,
                   params=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule) from an `optim` config section (see run_config.base_config)."""
    if optim.name != "adamw":
        raise InputError(f"optim.name={optim.name!r}; only adamw is implemented")
    schedule = learning_rate_schedule(optim.lr, total_steps, optim.warmup_steps, optim.schedule)
    mu_dtype = jnp.dtype(optim.mu_dtype) if optim.mu_dtype else None
    parts = []
    if optim.grad_clip and optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mu_dtype=mu_dtype))
    tx = optax.chain(*parts)
    freeze = getattr(optim, "freeze", "")
    if freeze:
        if params is None:
            raise ValueError("optim.freeze needs the parameters to label")
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   trainable_labels(params, freeze))
    if accumulation > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulation)
    return tx, schedule


def run_optimizer(run, params):
    """(tx, schedule, lora) for a run config: the optimizer over what trains (the weights, or
    the LoRA adapters when lora.rank > 0; `lora` is then their LoraConfig, else None)."""
    from guard_jax.training.lora import from_run, lora_shapes
    lora = from_run(run)
    accum = max(run.train.global_batch // run.train.micro_batch, 1)
    tx, schedule = make_optimizer(run.optim, total_steps=run.train.steps, accumulation=accum,
                                  params=params if lora is None else lora_shapes(params, lora))
    return tx, schedule, lora
