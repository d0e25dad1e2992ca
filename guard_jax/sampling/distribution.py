"""Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling.

The order of the processors is transformers' (temperature, then top-k, then top-p), and so are
their tie rules: top-p keeps the smallest set of most likely tokens whose mass reaches `top_p`
(always at least one). All arithmetic is float32. Everything is decided by static Python
values, so the RL hot path (temperature only) never sorts the vocabulary.

A draw is an inverse-CDF draw: one uniform number per row, found in the cumulative mass of the
row's probabilities, block by block (the block's total, then the token inside it). It samples
the same distribution as `jax.random.categorical`'s Gumbel-max trick but draws one random
number per row instead of one per vocabulary entry, which on a 151,936-token vocabulary was
as costly as the LM head itself (docs/sampling.md#how-it-works).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _nucleus(sorted_logits, top_p: float):
    """sorted_logits [R, K] in descending order -> the same with tokens outside the nucleus
    set to -inf: a token stays when the mass of the tokens ranked above it is below top_p."""
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    above = jnp.cumsum(probs, axis=-1) - probs
    return jnp.where(above < top_p, sorted_logits, -jnp.inf)


BLOCK = 512  # vocabulary entries per block of the inverse-CDF search


def sample(logits, key):
    """One token per row of logits [R, K] (float32; -inf = excluded), drawn with probability
    softmax(logits): a uniform u per row, then the first token whose cumulative mass exceeds
    u times the row's total; only tokens of positive mass can be drawn."""
    r, v = logits.shape
    block = min(BLOCK, v)
    nb = -(-v // block)
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    blocks = jnp.pad(p, ((0, 0), (0, nb * block - v))).reshape(r, nb, block)
    within = jnp.cumsum(blocks, axis=-1)          # [R, nb, block]
    across = jnp.cumsum(within[..., -1], axis=-1)  # [R, nb]: the mass up to each block's end
    target = jax.random.uniform(key, (r,), jnp.float32) * across[:, -1]
    b = jnp.minimum(jnp.sum(across <= target[:, None], axis=-1), nb - 1)
    before = jnp.where(b > 0, _pick(across, jnp.maximum(b - 1, 0)), 0.0)
    inner = jnp.take_along_axis(within, b[:, None, None], axis=1)[:, 0]  # [R, block]
    j = jnp.sum(inner <= (target - before)[:, None], axis=-1)
    # float rounding may run past the block's last token of positive mass: stop there
    mass = jnp.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0] > 0
    last = block - 1 - jnp.argmax(mass[:, ::-1], axis=-1)
    return (b * block + jnp.minimum(j, last)).astype(jnp.int32)


def truncated_logits(logits, *, temperature: float, top_p: float = 1.0, top_k: int = 0):
    """Tempered logits [R, V] with the tokens top-k / top-p exclude set to -inf (the
    distribution `choose` samples from, as a dense array; for tests and inspection)."""
    x = logits.astype(jnp.float32) / temperature
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if top_p < 1.0:
        order = jnp.argsort(-x, axis=-1)
        kept = _nucleus(jnp.take_along_axis(x, order, axis=-1), top_p)
        x = jnp.zeros_like(x).at[jnp.arange(x.shape[0])[:, None], order].set(kept)
    return x


def choose(logits, key, *, temperature: float, top_p: float = 1.0, top_k: int = 0):
    """logits [R, V] -> (token [R] int32, logprob [R], sampling_logprob [R]).

    logprob is log_softmax(logits / T) at the token over the whole vocabulary (T = 1 when
    greedy): the quantity a GRPO trainer recomputes. sampling_logprob is the log-probability
    under the distribution actually sampled from, after top-k / top-p renormalisation (0 for
    greedy, a point mass)."""
    x = logits.astype(jnp.float32)
    if temperature == 0.0:
        token = jnp.argmax(x, axis=-1)
        logprob = _pick(jax.nn.log_softmax(x, axis=-1), token)
        return token.astype(jnp.int32), logprob, jnp.zeros_like(logprob)
    x = x / temperature
    full = jax.nn.log_softmax(x, axis=-1)
    v = x.shape[-1]
    if 0 < top_k < v or top_p < 1.0:
        # sample in the space of candidates sorted by logit: the top k of them, or all
        if 0 < top_k < v:
            cand, ids = jax.lax.top_k(x, top_k)
        else:
            ids = jnp.argsort(-x, axis=-1)
            cand = jnp.take_along_axis(x, ids, axis=-1)
        if top_p < 1.0:
            cand = _nucleus(cand, top_p)
        slot = sample(cand, key)
        token = _pick(ids, slot)
        sampling_logprob = _pick(jax.nn.log_softmax(cand, axis=-1), slot)
    else:
        token = sample(x, key)
        sampling_logprob = None
    logprob = _pick(full, token)
    if sampling_logprob is None:
        sampling_logprob = logprob
    return token.astype(jnp.int32), logprob, sampling_logprob


def _pick(table, index):
    return jnp.take_along_axis(table, index[:, None].astype(jnp.int32), axis=-1)[:, 0]


__all__ = ["choose", "sample", "truncated_logits"]
