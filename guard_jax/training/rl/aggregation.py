"""Loss aggregation: how per-token values [B, T] with token weights become one scalar.

Every mode is a pair: `denominator(weights, scale)`, computed once over the whole mini-batch,
and `aggregate(values, weights, denom)`, the weighted sum of one micro-batch divided by that
denominator. The micro-batch results then add up to the mini-batch's value whatever the split
(docs/grpo.md#algorithm). Names and definitions as verl's `agg_loss` spells them, with w the
token weights, N the mini-batch's sequences that have any weight and n_i = sum_t w_it:

  token-mean               sum_it w v / sum_it w                     (DAPO's token-level loss)
  seq-mean-token-mean      (1/N) sum_i (sum_t w v / n_i)             (GRPO's original form)
  seq-mean-token-sum       (1/N) sum_i sum_t w v
  seq-mean-token-sum-norm  sum_i sum_t w v / (B L)                   (Dr. GRPO, Liu et al. 2025,
      "Understanding R1-Zero-like training", Sec. 3: the length normaliser 1/|o_i| replaced by
      a constant L, `grpo.loss_scale_factor` or the response budget T; B = the mini-batch's rows)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from guard_jax.training.rl.registry import Registry


class Aggregation(NamedTuple):
    denominator: Callable  # (weights [B, T], scale: float) -> scalar
    aggregate: Callable    # (values [B, T], weights [B, T], denom) -> scalar


REGISTRY = Registry("loss_agg_mode")


def _n_sequences(w, scale):
    return jnp.sum((jnp.sum(w, axis=-1) > 0).astype(jnp.float32))


def _token_mean(values, w, denom):
    return jnp.sum(values * w) / jnp.maximum(denom, 1e-8)


def _seq_mean_token_mean(values, w, denom):
    per_seq = jnp.sum(values * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1e-8)
    return jnp.sum(per_seq) / jnp.maximum(denom, 1e-8)


def _seq_sum(values, w, denom):
    return jnp.sum(jnp.sum(values * w, axis=-1)) / jnp.maximum(denom, 1e-8)


def _rows_times_scale(w, scale):
    return jnp.float32(w.shape[0] * (scale or w.shape[-1]))


REGISTRY["token-mean"] = Aggregation(lambda w, scale: jnp.sum(w), _token_mean)
REGISTRY["seq-mean-token-mean"] = Aggregation(_n_sequences, _seq_mean_token_mean)
REGISTRY["seq-mean-token-sum"] = Aggregation(_n_sequences, _seq_sum)
REGISTRY["seq-mean-token-sum-norm"] = Aggregation(_rows_times_scale, _seq_sum)


def denominator(weights, mode: str, scale: float = 0.0):
    """The mini-batch normaliser of `mode` (`scale`: seq-mean-token-sum-norm's constant, 0 =
    the response length T)."""
    return REGISTRY.get_fn(mode).denominator(jnp.asarray(weights, jnp.float32), scale)


def aggregate(values, weights, mode: str, denom):
    """`values` [B, T] aggregated under `mode`, normalised by the mini-batch's `denom`."""
    return REGISTRY.get_fn(mode).aggregate(values, jnp.asarray(weights, jnp.float32), denom)


def token_mean(values, weights, n_tokens):
    """The token mean over the mini-batch whatever the loss's mode: the diagnostics (clip
    fractions, ppo_kl) that verl and EasyR1 always average per token."""
    return _token_mean(values, jnp.asarray(weights, jnp.float32), n_tokens)
