"""GRPO's algorithm as pure array functions: the loss composed from the RL families, clip
schedules, group selection for dynamic sampling.

Everything here is a function of arrays and static settings, with no model, optimizer or host
state, so a reviewer can check it against the papers (docs/grpo.md#algorithm) and the tests can
hold it to an independent NumPy implementation. The families (advantage estimators, policy
losses, KL estimators, aggregation, rollout correction) are registries in
`guard_jax/training/rl/`; `policy_loss` below puts one of each together as `LossSettings` says.
Names follow verl / EasyR1 (`clip_ratio_low`, `clip_ratio_high`, `clip_ratio_dual`, `kl_coef`,
`entropy_coeff`, `loss_agg_mode`, `policy_loss`), so runs compare side by side with theirs.

Shapes: R rollouts = P prompts x G samples, sample-major (rows p*G .. p*G+G-1 are prompt p's);
T response tokens per rollout. Per-token `weights` [R, T] carry everything that takes a token
out of the loss (padding after the EOS, a degenerate group, a truncated response, a token the
rollout correction masks), so the loss has one masking rule.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from guard_jax.training.rl import advantages as _adv
from guard_jax.training.rl import aggregation as _agg
from guard_jax.training.rl import kl as _kl
from guard_jax.training.rl import policy_losses as _pl

LOSS_AGG_MODES = tuple(_agg.REGISTRY)
KL_PENALTIES = tuple(_kl.REGISTRY)
POLICY_LOSSES = tuple(_pl.REGISTRY)
ADV_ESTIMATORS = tuple(_adv.REGISTRY)
CLIP_SCHEDULES = ("constant", "linear", "compound")
FILTER_BY = ("std", "mean")
LOG_RATIO_CLAMP = _kl.LOG_RATIO_CLAMP
LOW_VAR_KL_CLAMP = _kl.LOW_VAR_KL_CLAMP
kl_penalty, sequence_kl = _kl.kl_penalty, _kl.sequence_kl
aggregate = _agg.aggregate


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss's static knobs (grpo.* of the same names). Frozen and hashable: the update is
    compiled once per settings value, and a run that changes anything else (data, rewards,
    dynamic sampling, the clip schedule) reuses the compiled update (grpo._COMPILED)."""
    temperature: float = 1.0
    policy_loss: str = "vanilla"
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: float = 0.0
    clip_ratio_dual: float = 0.0
    kl_coef: float = 0.0
    kl_penalty: str = "low_var_kl"
    entropy_coeff: float = 0.0
    kl_cov_ratio: float = 0.0002
    ppo_kl_coef: float = 0.1

    @classmethod
    def from_config(cls, grpo) -> "LossSettings":
        """The settings of a run's `grpo` section (a ConfigDict or a dict)."""
        return cls(**{f.name: grpo[f.name] for f in dataclasses.fields(cls)})


# ---------------------------------------------------------------------------- advantages
def group_advantages(rewards, num_generations: int, *, norm_by_std: bool = True,
                     eps: float = 1e-6):
    """Per-rollout GRPO advantage [R] from scalar rewards [R] (rl/advantages.py: grpo)."""
    return _adv.grpo(rewards, num_generations, norm_by_std=norm_by_std, eps=eps)


def zero_std_groups(rewards, num_generations: int, *, tol: float = 1e-6):
    """[P] bool: the group's rewards are all equal (within tol), so GRPO learns nothing from it.
    Measured as max - min, which is exact for equal values where a float std may not be 0."""
    r = _adv._groups(rewards, num_generations)
    return (jnp.max(r, axis=1) - jnp.min(r, axis=1)) <= tol


def valid_groups(rewards, num_generations: int, *, by: str = "std", low: float = 0.0,
                 high: float = 1.0):
    """[P] bool: the groups dynamic sampling keeps. by "std": the rewards differ within the
    group (DAPO, Yu et al. 2025, Eq. 11: 0 < |correct| < G); by "mean": the group's mean
    reward lies strictly inside (low, high) (EasyR1's filter_low / filter_high)."""
    if by == "std":
        return ~zero_std_groups(rewards, num_generations)
    if by != "mean":
        raise ValueError(f"filter_by {by!r}; choose one of {FILTER_BY}")
    mean = jnp.mean(_adv._groups(rewards, num_generations), axis=1)
    return (mean > low) & (mean < high)


def select_groups(valid, num_groups: int):
    """Static-shape dynamic sampling (docs/grpo.md#dynamic-sampling): from P' candidate groups pick
    `num_groups`, valid ones first, each kind in its original order. Returns (take [num_groups]
    int32 group indices, weight [num_groups] float32: 1 for a valid group, 0 for a backfilled
    degenerate one, so the loss ignores it while every array keeps its size)."""
    valid = jnp.asarray(valid, bool)
    n = valid.shape[0]
    if num_groups > n:
        raise ValueError(f"cannot select {num_groups} groups from {n}")
    order = jnp.argsort(jnp.where(valid, 0, 1) * n + jnp.arange(n))
    take = order[:num_groups].astype(jnp.int32)
    return take, valid[take].astype(jnp.float32)


def rows_of_groups(take, num_generations: int):
    """Group indices [K] -> their rollout rows [K * G] (sample-major)."""
    take = jnp.asarray(take, jnp.int32)
    return (take[:, None] * num_generations + jnp.arange(num_generations)[None]).reshape(-1)


# ---------------------------------------------------------------------------- clip schedule
def clip_factor(schedule: str, step, total_steps: int):
    """The multiplier on the base clip ratios at rollout step `step` (0-based, traced) of
    `total_steps` (static), as a float32 scalar, so a changing epsilon never recompiles.

    constant: 1. linear (GuardReasoner-VL paper, Eq. 7): (S - s) / S. compound (what the
    released driver code computes by mutating its config every step,
    docs/recipes.md#guardreasoner-vl): prod_{k=1..s} (1 - k / S). Both reach 0 at s = S."""
    if schedule not in CLIP_SCHEDULES:
        raise ValueError(f"clip schedule {schedule!r}; choose one of {CLIP_SCHEDULES}")
    if total_steps < 1:
        raise ValueError(f"clip schedule needs total_steps >= 1, got {total_steps}")
    s = jnp.asarray(step, jnp.float32)
    total = float(total_steps)
    if schedule == "constant":
        return jnp.ones((), jnp.float32)
    if schedule == "linear":
        return jnp.clip((total - s) / total, 0.0, 1.0)
    k = jnp.arange(1, total_steps + 1, dtype=jnp.float32)
    return jnp.prod(jnp.where(k <= s, 1.0 - k / total, 1.0))


def clip_ratios(schedule: str, clip_ratio_low: float, clip_ratio_high: float, step,
                total_steps: int):
    """(eps_low, eps_high) at `step`: both base ratios times `clip_factor`."""
    f = clip_factor(schedule, step, total_steps)
    return clip_ratio_low * f, clip_ratio_high * f


# ---------------------------------------------------------------------------- per token
def token_logprobs(logits, tokens, *, temperature: float = 1.0, with_entropy: bool = False):
    """log p(token) [B, T] under softmax(logits / temperature) (the distribution the sampler
    drew from, as verl and EasyR1 recompute it), and optionally the entropy [B, T] of that
    distribution. Float32 whatever the logits' dtype."""
    x = logits.astype(jnp.float32)
    if temperature != 1.0:
        x = x / temperature
    logp_all = jax.nn.log_softmax(x, axis=-1)
    logp = jnp.take_along_axis(logp_all, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if not with_entropy:
        return logp, None
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy



# ---------------------------------------------------------------------------- aggregation
def loss_denominator(weights, loss_agg_mode: str, scale: float = 0.0):
    """The normaliser of a mini-batch under `loss_agg_mode` (rl/aggregation.py). Computed once
    over the whole mini-batch and passed to every micro-batch, so the summed micro-batch losses
    equal the mini-batch loss whatever the split (docs/grpo.md#algorithm)."""
    return _agg.denominator(weights, loss_agg_mode, scale)


# ---------------------------------------------------------------------------- the loss
def policy_loss(logp, old_logp, advantages, weights, settings: LossSettings, *, eps_low,
                eps_high, ref_logp=None, entropy=None, denom=None, n_tokens=None,
                is_weights=None):
    """The objective to minimise and its diagnostics:

        loss = agg(is_w pg) + kl_coef agg(KL(policy || ref)) - entropy_coeff agg(entropy)

    with pg the per-token policy loss `settings.policy_loss` (rl/policy_losses.py), agg the
    aggregation `settings.loss_agg_mode` (rl/aggregation.py), KL the estimator
    `settings.kl_penalty` (rl/kl.py) and is_w the rollout-correction weights
    (rl/rollout_correction.py; None = 1). The clip fractions and ppo_kl (the token mean of
    old - new) are token means whatever the aggregation, as verl and EasyR1 log them.

    logp, old_logp, ref_logp, entropy, weights, is_weights: [B, T]; advantages [B] (broadcast
    over the tokens) or [B, T]; eps_low / eps_high may be traced scalars (a schedule). `denom`
    is the mini-batch normaliser (loss_denominator) and `n_tokens` the mini-batch's weighted
    token count; None computes either over this batch alone. Terms whose coefficient is a
    Python 0 are not computed.

    old_logp None: the update is strictly on-policy (docs/grpo.md#old-log-probs), so the old
    log-probs are the current ones as constants, `stop_gradient(logp)`: the ratio is exactly
    1 and the gradient is the one a separate old-log-prob forward would give."""
    s = settings
    logp = logp.astype(jnp.float32)
    if old_logp is None:
        old_logp = jax.lax.stop_gradient(logp)
    w = jnp.asarray(weights, jnp.float32)
    adv = jnp.asarray(advantages, jnp.float32)
    if adv.ndim == 1:
        adv = adv[:, None]
    mode = _agg.REGISTRY.get_fn(s.loss_agg_mode)
    if denom is None:
        denom = mode.denominator(w, s.loss_scale_factor)
    if n_tokens is None:
        n_tokens = jnp.sum(w)

    def agg(x):
        return mode.aggregate(x, w, denom)

    pg, flags = _pl.REGISTRY.get_fn(s.policy_loss)(logp, old_logp, adv, w, s, eps_low,
                                                    eps_high)
    if is_weights is not None:
        pg = pg * jax.lax.stop_gradient(is_weights)
    metrics = {k: _agg.token_mean(v, w, n_tokens) for k, v in flags.items()}
    metrics["ppo_kl"] = _agg.token_mean(
        -jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), w, n_tokens)
    pg_loss = agg(pg)
    loss = pg_loss
    metrics["pg_loss"] = pg_loss
    if ref_logp is not None and s.kl_coef:
        kl_loss = agg(kl_penalty(logp, ref_logp, s.kl_penalty))
        loss = loss + s.kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss
    if entropy is not None:
        ent = agg(entropy)
        metrics["entropy"] = ent
        if s.entropy_coeff:
            loss = loss - s.entropy_coeff * ent
    metrics["loss"] = loss
    return loss, metrics


__all__ = ["ADV_ESTIMATORS", "CLIP_SCHEDULES", "FILTER_BY", "KL_PENALTIES", "LOSS_AGG_MODES",
           "POLICY_LOSSES", "LossSettings", "aggregate", "clip_factor", "clip_ratios",
           "group_advantages", "kl_penalty", "loss_denominator", "policy_loss",
           "rows_of_groups", "select_groups", "sequence_kl", "token_logprobs", "valid_groups",
           "zero_std_groups"]
