"""Advantage estimators for outcome rewards (one scalar per rollout), verl's names.

Rewards r [R] are sample-major groups of G (rows p*G .. p*G+G-1 share prompt p), already less
the KL-in-reward penalty summed over the response; `penalty` [R, T] is that per-token penalty
(coef x KL), which the token-level estimators place on each token. `mask` [R, T] marks the
response tokens. Each estimator returns [R] (one advantage per rollout) or [R, T].

  grpo    (r - mean_G r) / (std_G r + eps), std with ddof 1; r - mean_G r when
          norm_adv_by_std is False (Shao et al. 2024, DeepSeekMath, Sec. 4.1.2). A one-sample
          group uses mean 0, std 1 (verl's rule).
  dr_grpo r - mean_G r (Liu et al. 2025, "Understanding R1-Zero-like training", Sec. 3.1:
          no std normalisation).
  rloo    r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_G r) (Ahmadian et al. 2024, "Back
          to Basics", Sec. 3.2); r itself for G = 1.
  reinforce_plus_plus  per token the return to go R_t = r - sum_{s >= t} penalty_s (gamma 1),
          whitened over every response token of the batch: (R - mean) / sqrt(var + 1e-8), var
          unbiased (Hu 2025, "REINFORCE++", Sec. 3).
  reinforce_plus_plus_baseline  r - mean_G r (r itself for G = 1, verl's rule), then
          whitened over the batch's response tokens as above (verl's REINFORCE++-baseline).
"""

from __future__ import annotations

import jax.numpy as jnp

from guard_jax.training.rl.registry import Registry

REGISTRY = Registry("adv_estimator")


def _groups(x, num_generations: int):
    x = jnp.asarray(x, jnp.float32)
    if x.size % num_generations:
        raise ValueError(f"{x.size} rewards do not split into groups of {num_generations}")
    return x.reshape(-1, num_generations)


def _whiten(values, mask):
    m = jnp.asarray(mask, jnp.float32)
    n = jnp.sum(m)
    mean = jnp.sum(values * m) / jnp.maximum(n, 1.0)
    var = jnp.sum(jnp.square(values - mean) * m) / jnp.maximum(n - 1.0, 1.0)
    return (values - mean) * jnp.reciprocal(jnp.sqrt(var + 1e-8)) * m


@REGISTRY.register("grpo")
def grpo(rewards, num_generations: int, *, mask=None, penalty=None, norm_by_std: bool = True,
         eps: float = 1e-6):
    r = _groups(rewards, num_generations)
    if num_generations == 1:
        mean, std = jnp.zeros_like(r), jnp.ones_like(r)
    else:
        mean = jnp.mean(r, axis=1, keepdims=True)
        std = jnp.std(r, axis=1, keepdims=True, ddof=1)
    adv = (r - mean) / (std + eps) if norm_by_std else r - mean
    return adv.reshape(-1)


@REGISTRY.register("dr_grpo")
def dr_grpo(rewards, num_generations: int, **kw):
    return grpo(rewards, num_generations, norm_by_std=False)


@REGISTRY.register("rloo")
def rloo(rewards, num_generations: int, **kw):
    r = _groups(rewards, num_generations)
    if num_generations == 1:
        return r.reshape(-1)
    g = float(num_generations)
    return (g / (g - 1.0) * (r - jnp.mean(r, axis=1, keepdims=True))).reshape(-1)


@REGISTRY.register("reinforce_plus_plus")
def reinforce_plus_plus(rewards, num_generations: int, *, mask, penalty=None, **kw):
    m = jnp.asarray(mask, jnp.float32)
    returns = jnp.asarray(rewards, jnp.float32)[:, None] * m
    if penalty is not None:
        # r - sum_{s >= t} p_s = (r - sum_s p_s) + sum_{s < t} p_s; `rewards` is r - sum_s p_s
        p = jnp.asarray(penalty, jnp.float32) * m
        returns = returns + (jnp.cumsum(p, axis=-1) - p) * m
    return _whiten(returns, m)


@REGISTRY.register("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(rewards, num_generations: int, *, mask, **kw):
    r = _groups(rewards, num_generations)
    if num_generations > 1:
        r = r - jnp.mean(r, axis=1, keepdims=True)
    m = jnp.asarray(mask, jnp.float32)
    return _whiten(r.reshape(-1)[:, None] * m, m)


def compute_advantages(name: str, rewards, num_generations: int, **kw):
    """Advantages [R] or [R, T] of the estimator `name` (see the module docstring)."""
    return REGISTRY.get_fn(name)(rewards, num_generations, **kw)
