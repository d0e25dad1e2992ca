"""Policy-gradient losses per token, verl's `policy_loss.loss_mode` names.

Each takes logp, old_logp [B, T], advantages A [B, 1] or [B, T], token weights w [B, T], the
settings (grpo_loss.LossSettings) and the clip ratios (eps_low, eps_high: traced scalars, a
schedule changes them without recompiling), and returns (pg [B, T] to aggregate, {diagnostic:
per-token indicator}); the caller token-means the indicators. Log-ratios are clamped to +-20
before any exp (kl.LOG_RATIO_CLAMP), and clips are taken in log space: clip(x, log(1 - eps_low),
log(1 + eps_high)).

  vanilla     PPO's clipped surrogate (Schulman et al. 2017, Eq. 7) with r = exp(logp - old):
              max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)); eps_high > eps_low is DAPO's
              clip-higher (Yu et al. 2025, Sec. 3.1); with the dual clip c > 1 (Ye et al. 2020,
              "Mastering complex control in MOBA games", Eq. 5) min(that, -A c) where A < 0.
  gspo        GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", Eq. 5-7): the
              sequence ratio s = exp(mean_t (logp - old)) over the response's tokens in the
              same clipped surrogate, every token of a response carrying the sequence's value
              (aggregate with seq-mean-token-mean for the paper's objective).
  gspo_token  GSPO-token (ibid., Eq. 13-14): s_t = sg(s) exp(logp_t - sg(logp_t)), equal to
              gspo in value, and in gradient when A is constant over the response.
  cispo       CISPO (MiniMax 2025, "MiniMax-M1", Sec. 3.1, Eq. 4-5): -sg(clip(r, 1 - eps_low,
              1 + eps_high)) A logp: the clipped ratio is a stop-gradient weight, so every
              token keeps a gradient.
  kl_cov      KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs",
              Sec. 4.2): -A r, plus ppo_kl_coef |logp - old| on the kl_cov_ratio fraction of the
              weighted tokens (at least one) with the largest centred covariance
              (A - mean A)(logp - mean logp), means over the micro-batch's weighted tokens
              (selected per micro-batch, as verl does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from guard_jax.training.rl.kl import LOG_RATIO_CLAMP
from guard_jax.training.rl.registry import Registry

REGISTRY = Registry("policy_loss")


def _log_clip_bounds(eps_low, eps_high):
    return (jnp.log1p(-jnp.asarray(eps_low, jnp.float32)),
            jnp.log1p(jnp.asarray(eps_high, jnp.float32)))


def _clipped_surrogate(log_ratio, adv, eps_low, eps_high):
    low, high = _log_clip_bounds(eps_low, eps_high)
    pg1 = -adv * jnp.exp(log_ratio)
    pg2 = -adv * jnp.exp(jnp.clip(log_ratio, low, high))
    return jnp.maximum(pg1, pg2), {"pg_clipfrac": (pg2 > pg1).astype(jnp.float32)}


@REGISTRY.register("vanilla")
def vanilla(logp, old_logp, adv, w, s, eps_low, eps_high):
    log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    pg, flags = _clipped_surrogate(log_ratio, adv, eps_low, eps_high)
    if s.clip_ratio_dual:
        pg3 = -adv * s.clip_ratio_dual
        flags["pg_clipfrac_lower"] = ((adv < 0) & (pg > pg3)).astype(jnp.float32)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
    return pg, flags


def _sequence_log_ratio(logp, old_logp, w):
    m = (w > 0).astype(jnp.float32)
    return jnp.sum((logp - old_logp) * m, axis=-1, keepdims=True) / jnp.maximum(
        jnp.sum(m, axis=-1, keepdims=True), 1.0)


@REGISTRY.register("gspo")
def gspo(logp, old_logp, adv, w, s, eps_low, eps_high):
    seq = jnp.clip(_sequence_log_ratio(logp, old_logp, w), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return _clipped_surrogate(jnp.broadcast_to(seq, logp.shape), adv, eps_low, eps_high)


@REGISTRY.register("gspo_token")
def gspo_token(logp, old_logp, adv, w, s, eps_low, eps_high):
    seq = jax.lax.stop_gradient(_sequence_log_ratio(logp, old_logp, w))
    log_ratio = logp - jax.lax.stop_gradient(logp) + seq
    log_ratio = jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return _clipped_surrogate(log_ratio, adv, eps_low, eps_high)


@REGISTRY.register("cispo")
def cispo(logp, old_logp, adv, w, s, eps_low, eps_high):
    log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    low, high = _log_clip_bounds(eps_low, eps_high)
    clipped = jnp.clip(log_ratio, low, high)
    weight = jax.lax.stop_gradient(jnp.exp(clipped))
    return -adv * weight * logp, {"pg_clipfrac": (clipped != log_ratio).astype(jnp.float32)}


@REGISTRY.register("kl_cov")
def kl_cov(logp, old_logp, adv, w, s, eps_low, eps_high):
    log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    adv = jnp.broadcast_to(adv, logp.shape)
    valid = w > 0
    m = valid.astype(jnp.float32)
    n = jnp.sum(m)
    a, lp = jax.lax.stop_gradient(adv), jax.lax.stop_gradient(logp)
    mean_a = jnp.sum(a * m) / jnp.maximum(n, 1.0)
    mean_lp = jnp.sum(lp * m) / jnp.maximum(n, 1.0)
    cov = jnp.where(valid, (a - mean_a) * (lp - mean_lp), -jnp.inf).reshape(-1)
    k = jnp.maximum(1, jnp.floor(n * s.kl_cov_ratio).astype(jnp.int32))
    rank = jnp.zeros(cov.shape, jnp.int32).at[jnp.argsort(-cov, stable=True)].set(
        jnp.arange(cov.size, dtype=jnp.int32))
    chosen = ((rank < k).reshape(logp.shape) & valid).astype(jnp.float32)
    pg = -adv * jnp.exp(log_ratio) + chosen * s.ppo_kl_coef * jnp.abs(log_ratio)
    return pg, {"pg_kl_cov_frac": chosen}
