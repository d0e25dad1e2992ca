"""Decode attention over a shared prompt cache and the live part of a completion cache.

One query per decode slot. Slot s reads the keys of its prompt (`prompt_of[s]`, one copy per
prompt in `[layers, prompts, L, kv_heads, head_dim]`, shared by the prompt's G samples) and the
first `fill[s]` keys of its own completion cache `[layers, slots, N, kv_heads, head_dim]`.
Both are read block by block with an online softmax (float32 running max, sum and weighted
values), so a step reads the prompt plus `ceil(max(fill) / block)` completion blocks, not all
N slots. XLA on every backend (docs/sampling.md#engines).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # the static path's masked score


def _update(carry, qh, keys, values, valid, scale):
    """One block of the online softmax. qh [S, K, G, D]; keys, values [S, T, K, D];
    valid [S, T] bool."""
    top, total, acc = carry
    scores = jnp.einsum("skgd,stkd->skgt", qh, keys, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(valid[:, None, None, :], scores, _NEG)
    new_top = jnp.maximum(top, jnp.max(scores, axis=-1))
    e = jnp.exp(scores - new_top[..., None])
    alpha = jnp.exp(top - new_top)
    total = total * alpha + jnp.sum(e, axis=-1)
    acc = acc * alpha[..., None] + jnp.einsum("skgt,stkd->skgd", e.astype(values.dtype), values,
                                              preferred_element_type=jnp.float32)
    return new_top, total, acc


def live_attention(q, layer, prompt_k, prompt_v, prompt_mask, prompt_of, comp_k, comp_v, fill,
                   *, block: int):
    """q [S, H, D] (rotated); layer: index into the caches' first axis; prompt_k, prompt_v
    [layers, P, L, K, D] with L a multiple of `block`; prompt_mask [P, L] bool (padding False);
    prompt_of [S] int32; comp_k, comp_v [layers, S, N, K, D] with N a multiple of `block`;
    fill [S] int32, the completion keys slot s attends to (its current token's included).
    Returns [S, H, D] float32."""
    s, h, d = q.shape
    kvh = prompt_k.shape[3]
    qh = q.reshape(s, kvh, h // kvh, d)
    scale = d ** -0.5
    dtype = q.dtype
    init = (jnp.full((s, kvh, h // kvh), -jnp.inf, jnp.float32),
            jnp.zeros((s, kvh, h // kvh), jnp.float32),
            jnp.zeros((s, kvh, h // kvh, d), jnp.float32))

    def layer_block(cache, rows, start):
        size = (1, rows, block) + cache.shape[3:]
        return jax.lax.dynamic_slice(cache, (layer, 0, start, 0, 0), size)[0].astype(dtype)

    p = prompt_k.shape[1]

    def prompt_step(b, carry):
        start = b * block
        keys = jnp.take(layer_block(prompt_k, p, start), prompt_of, axis=0)
        values = jnp.take(layer_block(prompt_v, p, start), prompt_of, axis=0)
        valid = jnp.take(jax.lax.dynamic_slice_in_dim(prompt_mask, start, block, axis=1),
                         prompt_of, axis=0)
        return _update(carry, qh, keys, values, valid, scale)

    def completion_step(b, carry):
        start = b * block
        valid = (start + jnp.arange(block))[None, :] < fill[:, None]
        return _update(carry, qh, layer_block(comp_k, s, start), layer_block(comp_v, s, start),
                       valid, scale)

    carry = jax.lax.fori_loop(0, prompt_k.shape[2] // block, prompt_step, init)
    # the live prefix: blocks up to the longest fill, a bound known only at run time
    live = (jnp.max(fill) + block - 1) // block
    top, total, acc = jax.lax.fori_loop(0, live, completion_step, carry)
    return (acc / total[..., None]).reshape(s, h, d)


def pad_to_block(n: int, block: int) -> int:
    """n rounded up to a multiple of block (at least one block)."""
    return max(1, -(-n // block)) * block


__all__ = ["live_attention", "pad_to_block"]
