"""Rollout-training mismatch correction: the sampler's log-probs against the trainer's.

The sampler and the training forward compute the same distribution in different programs
(bf16 kernels, another batch layout), so the tokens are drawn from pi_rollout while the loss
takes pi_old. With rho = pi_old / pi_rollout per token, exp(old - sampler), or per sequence,
exp(sum_t (old - sampler)) (log-ratios clamped to +-20):

  truncate  truncated importance sampling (TIS; Yao et al. 2025, "Your Efficient RL Framework
            Secretly Brings You Off-Policy RL Training"): the policy-gradient term of each
            token is multiplied by min(rho, C).
  mask      masked importance sampling (MIS; verl's rollout_is_mode "mask"): tokens (level
            token) or whole responses (level sequence) with rho outside [C_low, C] are taken
            out of the loss (token weight 0), the rest weighted by rho.

C = grpo.rollout_is_threshold, C_low = grpo.rollout_is_threshold_lower (0 = 1 / C). The
weights carry no gradient (sampler and old log-probs are constants). Metrics follow verl's
`rollout_corr/*`: the weights' mean, max, min, std and effective sample size (1 / mean(w~^2)
with w~ = w / mean(w)), the fractions of tokens above C and below C_low, the masked fraction,
and the mismatch itself, `kl` = mean(sampler - old) (k1 of KL(rollout || old)) and `k3_kl`.
"""

from __future__ import annotations

import jax.numpy as jnp

from guard_jax.training.rl.kl import LOG_RATIO_CLAMP

LEVELS = ("", "token", "sequence")
MODES = ("truncate", "mask")


def rollout_correction(old_logp, sampler_logp, mask, *, level: str, mode: str,
                       threshold: float, threshold_lower: float = 0.0):
    """(is_weights [R, T], keep [R, T], metrics {name: scalar}). `keep` multiplies the token
    weights (all ones in truncate mode); `is_weights` multiplies the policy-gradient term."""
    if level not in LEVELS[1:] or mode not in MODES:
        raise ValueError(f"rollout_is={level!r}, rollout_is_mode={mode!r}; choose from "
                         f"{LEVELS[1:]} and {MODES}")
    m = jnp.asarray(mask, jnp.float32)
    d = (jnp.asarray(old_logp, jnp.float32) - jnp.asarray(sampler_logp, jnp.float32)) * m
    if level == "sequence":
        d = jnp.broadcast_to(jnp.sum(d, axis=-1, keepdims=True), d.shape)
    rho = jnp.exp(jnp.clip(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    low = threshold_lower or 1.0 / threshold
    high_frac, low_frac = (rho > threshold).astype(jnp.float32), (rho < low).astype(jnp.float32)
    if mode == "truncate":
        weights, keep = jnp.minimum(rho, threshold) * m, m
    else:
        keep = m * (1.0 - jnp.maximum(high_frac, low_frac))
        weights = rho * keep
    n = jnp.maximum(jnp.sum(m), 1.0)

    def mean(x):
        return jnp.sum(x * m) / n

    w_mean, w_sq = mean(weights), mean(jnp.square(weights))
    diff = jnp.asarray(sampler_logp, jnp.float32) - jnp.asarray(old_logp, jnp.float32)
    big, small = jnp.finfo(jnp.float32).max, -jnp.finfo(jnp.float32).max
    metrics = {
        "rollout_is_mean": w_mean,
        "rollout_is_max": jnp.max(jnp.where(m > 0, weights, small)),
        "rollout_is_min": jnp.min(jnp.where(m > 0, weights, big)),
        "rollout_is_std": jnp.sqrt(mean(jnp.square(weights - w_mean))),
        # 1 / mean((w / mean w)^2) = mean(w)^2 / mean(w^2); 0 when every weight is 0
        "rollout_is_eff_sample_size": jnp.where(w_sq > 0, w_mean ** 2 / jnp.maximum(w_sq, 1e-30),
                                                0.0),
        "rollout_is_ratio_fraction_high": mean(high_frac),
        "rollout_is_ratio_fraction_low": mean(low_frac),
        "rollout_is_masked_fraction": 1.0 - jnp.sum(keep) / n,
        "kl": mean(diff),
        "k3_kl": mean(jnp.exp(jnp.clip(-diff, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)) + diff - 1.0),
    }
    return weights, keep, metrics
