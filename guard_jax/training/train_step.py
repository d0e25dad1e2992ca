"""A jitted, sharded train step: loss, gradients and an optax update.

The state is a plain pytree `{"params", "opt_state", "step"}` (parameters as an nnx State), so
one `jax.jit` with explicit in/out shardings and donation covers it, and orbax saves it as is.
The model graph definition is static and closed over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from guard_jax.models.qwen2_5_vl.model import FORWARD_KEYS
from guard_jax.sharding import (TRAIN_RULES, auto_mesh, batch_shardings, param_shardings,
                               put_batch, use_rules)
from guard_jax.training import lora as lora_lib
from guard_jax.training.head_loss import head_cross_entropy

def token_cross_entropy(logits, labels, mask):
    """Sum of float32 cross-entropy over positions where mask is 1, and the count."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    return jnp.sum((lse - picked) * mask), jnp.sum(mask)


def next_token_loss(model, batch):
    """Mean next-token cross-entropy over `loss_mask` (labels = input_ids shifted left)."""
    fwd = {k: batch[k] for k in FORWARD_KEYS if k in batch}
    total, count = lm_head_loss(model, model.hidden_states(**fwd), batch)
    loss = total / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "tokens": count}


def lm_head_loss(model, h, batch):
    """(sum, count) of the float32 cross-entropy of the lm head on final hidden states h
    against batch["labels"] over batch["loss_mask"]; without them, input_ids shifted left over
    the shifted attention mask."""
    labels = batch.get("labels")
    mask = batch.get("loss_mask")
    if labels is None:
        labels = jnp.concatenate([batch["input_ids"][:, 1:],
                                  jnp.zeros_like(batch["input_ids"][:, :1])], axis=1)
    if mask is None:
        mask = jnp.concatenate([batch["attention_mask"][:, 1:],
                                jnp.zeros_like(batch["attention_mask"][:, :1])], axis=1)
    weight, vocab_major = model.text.head_weight(h.dtype)
    return head_cross_entropy(h, weight, labels, mask, vocab_major=vocab_major)


def _fresh_state(params, trainable, tx, lora) -> dict:
    state = {"params": params, "opt_state": tx.init(trainable), "step": jnp.zeros((), jnp.int32)}
    if lora is not None:
        state["lora"] = trainable
    return state


def init_train_state(model, tx: optax.GradientTransformation, mesh=None, rules=TRAIN_RULES, *,
                     lora=None, seed: int = 0):
    """(graphdef, state) with optimizer state created in the parameters' shardings.

    state = {"params", "opt_state", "step"}; with `lora` (a lora.LoraConfig) also "lora" (the
    adapters), and then the optimizer holds the adapters' moments only."""
    graphdef, params = nnx.split(model, nnx.Param)
    trainable = params if lora is None else lora_lib.init_lora(params, lora, seed)
    if mesh is None:
        return graphdef, _fresh_state(params, trainable, tx, lora)
    shardings = state_shardings(params, tx, mesh, rules, lora=lora)
    state = jax.jit(lambda p, t: _fresh_state(p, t, tx, lora),
                    out_shardings=shardings)(params, trainable)
    return graphdef, state


def state_shardings(params, tx, mesh, rules=TRAIN_RULES, *, lora=None):
    """Shardings of the train state: optimizer moments follow what they optimise (the
    parameters, or the replicated LoRA adapters)."""
    mesh = auto_mesh(mesh)  # a jax.make_mesh mesh too (docs/sharding.md)
    p_sh = param_shardings(params, mesh, rules)
    replicated = NamedSharding(mesh, P())
    if lora is None:
        trainable, t_sh = params, p_sh
    else:
        trainable = lora_lib.lora_shapes(params, lora)
        t_sh = jax.tree.map(lambda _: replicated, trainable)
    abstract_opt = jax.eval_shape(tx.init, trainable)
    # Replicated by default (counts, scalars); moments that mirror the trainables get theirs.
    opt_sh = jax.tree.map(lambda _: replicated, abstract_opt)
    opt_sh = _match_param_like(abstract_opt, opt_sh, trainable, t_sh)
    out = {"params": p_sh, "opt_state": opt_sh, "step": replicated}
    if lora is not None:
        out["lora"] = t_sh
    return out


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _match_param_like(abstract_opt, opt_sh, params, p_sh):
    """Gives every optimizer-state leaf that mirrors a parameter (adam's mu and nu, the
    accumulated gradient) that parameter's sharding: a leaf whose key path ends with a
    parameter's path and has its shape. Matching by path, not by whole sub-tree structure,
    also covers states built over part of the parameters (optim.freeze's masked states,
    whose frozen leaves are absent). Everything else keeps its (replicated) sharding."""
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(params),
                                jax.tree.leaves(p_sh)):
        by_path[tuple(_key_name(k) for k in path)] = (tuple(leaf.shape), sh)
    depth = max(len(k) for k in by_path)

    def pick(path, leaf, sh):
        names = tuple(_key_name(k) for k in path)
        for start in range(max(len(names) - depth, 0), len(names)):
            hit = by_path.get(names[start:])
            if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
                return hit[1]
        return sh

    return jax.tree_util.tree_map_with_path(pick, abstract_opt, opt_sh)


def build_step(graphdef, tx: optax.GradientTransformation, *, mesh=None, rules=TRAIN_RULES,
               loss_fn=next_token_loss, lora=None) -> Callable:
    """The pure `step(state, batch) -> (state, metrics)` (not jitted; see make_train_step).
    With `lora`, gradients flow to the adapters only and the base parameters stay as they are."""
    key = "params" if lora is None else "lora"

    def step(state, batch):
        def loss_of(trainable):
            params = trainable if lora is None else lora_lib.merge(state["params"], trainable,
                                                                    lora)
            return loss_fn(nnx.merge(graphdef, params), batch)

        with use_rules(mesh, rules) if mesh is not None else contextlib.nullcontext():
            (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state[key])
        updates, opt_state = tx.update(grads, state["opt_state"], state[key])
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        new = dict(state, opt_state=opt_state, step=state["step"] + 1)
        new[key] = optax.apply_updates(state[key], updates)
        return new, metrics

    return step


def make_train_step(graphdef, tx: optax.GradientTransformation, *, mesh=None,
                    rules=TRAIN_RULES, loss_fn=next_token_loss, state=None,
                    state_shardings=None, lora=None) -> Callable:
    """A jitted `step(state, batch) -> (state, metrics)`; with a mesh, explicit in/out shardings
    (from `state`'s arrays, or `state_shardings`, and the batch's logical axes) and the state
    donated."""
    if mesh is not None:
        mesh = auto_mesh(mesh)
    step = build_step(graphdef, tx, mesh=mesh, rules=rules, loss_fn=loss_fn, lora=lora)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    if state_shardings is None:
        if state is None:
            raise ValueError("make_train_step(mesh=...) needs the state (or state_shardings) "
                             "to derive its shardings")
        state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return jit_with_batch(step, mesh, state_shardings, rules=rules,
                          out_shardings=(state_shardings, NamedSharding(mesh, P())),
                          donate_argnums=0)


def shared_pool(mesh) -> bool:
    """Whether the mesh's local devices are XLA's host-platform CPU devices, which all run on
    one thread pool. There, a few dozen programs with collectives queued ahead of the device
    can hold every thread while an earlier program's rendezvous waits for one, and XLA ends
    the process after 40 s ("Termination timeout for `all reduce ...`"). Programs on such a
    mesh wait for their results before the next is queued (docs/sharding.md)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return len(local) > 1 and local[0].platform == "cpu"


def jit_with_batch(fn, mesh, first_shardings, *, rules=TRAIN_RULES, out_shardings=None,
                   donate_argnums=()) -> Callable:
    """`fn(first, batch)` jitted with explicit in_shardings: `first_shardings` for its first
    argument (the state or the parameters) and, for the batch dict, each field's logical axes
    (`sharding.BATCH_AXES`; other fields replicated). One program per set of batch fields and
    shapes; the batch is placed with exactly those shardings first (host arrays, and device
    arrays whatever layout eager slicing left them in)."""
    compiled = {}
    wait = shared_pool(mesh)

    def program(batch):
        key = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if key not in compiled:
            b_sh = batch_shardings(batch, mesh, rules)
            compiled[key] = (b_sh, jax.jit(fn, in_shardings=(first_shardings, b_sh),
                                           out_shardings=out_shardings,
                                           donate_argnums=donate_argnums))
        return compiled[key]

    def run(first, batch):
        b_sh, jitted = program(batch)
        out = jitted(first, put_batch(batch, b_sh))
        return jax.block_until_ready(out) if wait else out

    # ahead-of-time compilation (guard_jax/aot.py) lowers on abstract arguments
    run.lower = lambda first, batch: program(batch)[1].lower(first, batch)
    run.compiled = compiled  # for tests: the shardings each program declares
    return run
