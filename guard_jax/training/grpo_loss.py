"""GRPO's algorithm as pure array functions: advantages, clip schedules, the clipped loss.

Everything here is a function of arrays and static settings, with no model, optimizer or host
state, so a reviewer can check it against the papers (docs/grpo.md#algorithm) and
the tests can hold it to an independent NumPy implementation. Names follow EasyR1 / verl
(`clip_ratio_low`, `clip_ratio_high`, `clip_ratio_dual`, `kl_coef`, `entropy_coeff`,
`loss_agg_mode`), so runs compare side by side with the guard papers' configs.

Shapes: R rollouts = P prompts x G samples, sample-major (rows p*G .. p*G+G-1 are prompt p's);
T response tokens per rollout. Per-token `weights` [R, T] carry everything that takes a token
out of the loss (padding after the EOS, a degenerate group, a truncated response), so the loss
has one masking rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")
CLIP_SCHEDULES = ("constant", "linear", "compound")
KL_PENALTIES = ("low_var_kl", "kl")
# EasyR1 clamps the log-ratio before exp so that one wild token cannot overflow the ratio.
LOG_RATIO_CLAMP = 20.0
# verl clamps the k3 estimate per token to this range (kl_penalty "low_var_kl").
LOW_VAR_KL_CLAMP = 10.0


# ---------------------------------------------------------------------------- advantages
def _groups(x, num_generations: int):
    x = jnp.asarray(x, jnp.float32)
    if x.size % num_generations:
        raise ValueError(f"{x.size} rewards do not split into groups of {num_generations}")
    return x.reshape(-1, num_generations)


def group_advantages(rewards, num_generations: int, *, norm_by_std: bool = True,
                     eps: float = 1e-6):
    """Per-rollout advantage [R] from scalar rewards [R] (EasyR1's GRPO estimator).

    A = (r - mean_g(r)) / (std_g(r) + eps) with the unbiased std (ddof = 1), or r - mean_g(r)
    when `norm_by_std` is False (verl's norm_adv_by_std_in_grpo). A one-sample group has no
    spread to normalise by: it uses mean 0 and std 1, as EasyR1 does. A group of equal rewards
    gets 0 everywhere (its std is 0, the numerator 0)."""
    r = _groups(rewards, num_generations)
    if num_generations == 1:
        mean, std = jnp.zeros_like(r), jnp.ones_like(r)
    else:
        mean = jnp.mean(r, axis=1, keepdims=True)
        std = jnp.std(r, axis=1, keepdims=True, ddof=1)
    adv = (r - mean) / (std + eps) if norm_by_std else r - mean
    return adv.reshape(-1)


def zero_std_groups(rewards, num_generations: int, *, tol: float = 1e-6):
    """[P] bool: the group's rewards are all equal (within tol), so GRPO learns nothing from it.
    Measured as max - min, which is exact for equal values where a float std may not be 0."""
    r = _groups(rewards, num_generations)
    return (jnp.max(r, axis=1) - jnp.min(r, axis=1)) <= tol


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


def kl_penalty(logp, ref_logp, kind: str = "low_var_kl"):
    """Per-token KL estimate of the policy from the reference. low_var_kl (Schulman's k3):
    exp(ref - logp) - (ref - logp) - 1 >= 0, clamped to +-10 as verl does; kl (k1): logp -
    ref (the form verl puts into the reward)."""
    if kind == "kl":
        return logp - ref_logp
    if kind != "low_var_kl":
        raise ValueError(f"kl_penalty {kind!r}; choose one of {KL_PENALTIES}")
    d = ref_logp - logp
    return jnp.clip(jnp.exp(d) - d - 1.0, -LOW_VAR_KL_CLAMP, LOW_VAR_KL_CLAMP)


def sequence_kl(logp, ref_logp, weights, kind: str = "kl"):
    """[R] summed per-token KL over each response: verl's KL-in-reward subtracts
    coef * this from the scalar reward before the group normalisation."""
    return jnp.sum(kl_penalty(logp, ref_logp, kind) * weights, axis=-1)


# ---------------------------------------------------------------------------- aggregation
def loss_denominator(weights, loss_agg_mode: str):
    """The normaliser of a mini-batch: its weighted token count (token-mean) or the number of
    sequences with any weight (seq-mean-token-mean). Computed once over the whole mini-batch
    and passed to every micro-batch, so the summed micro-batch losses equal the mini-batch
    loss whatever the split (docs/grpo.md#algorithm)."""
    w = jnp.asarray(weights, jnp.float32)
    if loss_agg_mode == "token-mean":
        return jnp.sum(w)
    if loss_agg_mode == "seq-mean-token-mean":
        return jnp.sum((jnp.sum(w, axis=-1) > 0).astype(jnp.float32))
    raise ValueError(f"loss_agg_mode {loss_agg_mode!r}; choose one of {LOSS_AGG_MODES}")


def aggregate(values, weights, loss_agg_mode: str, denom):
    """Weighted sum of per-token values, normalised by `denom` (see loss_denominator)."""
    w = jnp.asarray(weights, jnp.float32)
    denom = jnp.maximum(denom, 1e-8)
    if loss_agg_mode == "token-mean":
        return jnp.sum(values * w) / denom
    if loss_agg_mode == "seq-mean-token-mean":
        per_seq = jnp.sum(values * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1e-8)
        return jnp.sum(per_seq) / denom
    raise ValueError(f"loss_agg_mode {loss_agg_mode!r}; choose one of {LOSS_AGG_MODES}")


# ---------------------------------------------------------------------------- the loss
def policy_loss(logp, old_logp, advantages, weights, *, clip_ratio_low, clip_ratio_high,
                clip_ratio_dual: float = 0.0, ref_logp=None, kl_coef: float = 0.0,
                kl_penalty_kind: str = "low_var_kl", entropy=None, entropy_coeff: float = 0.0,
                loss_agg_mode: str = "token-mean", denom=None):
    """The token-level clipped GRPO objective (to minimise) and its diagnostics.

    ratio = exp(logp - old_logp); per token
        pg = max(-A * ratio, -A * clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high))
    (the clip taken in log space, EasyR1's form); with a dual clip c > 1 and A < 0 also
        pg = min(pg, -A * c)
    then loss = agg(pg) + kl_coef * agg(KL(policy || ref)) - entropy_coeff * agg(entropy).

    logp, old_logp, ref_logp, entropy, weights: [B, T]; advantages [B] (broadcast over the
    tokens) or [B, T]; clip ratios may be traced scalars (a schedule). `denom` is the
    mini-batch normaliser (loss_denominator); None normalises over this batch alone.
    Terms whose coefficient is a Python 0 are not computed."""
    logp = logp.astype(jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    adv = jnp.asarray(advantages, jnp.float32)
    if adv.ndim == 1:
        adv = adv[:, None]
    if denom is None:
        denom = loss_denominator(w, loss_agg_mode)

    def agg(x):
        return aggregate(x, w, loss_agg_mode, denom)

    log_ratio = jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    low = jnp.log1p(-jnp.asarray(clip_ratio_low, jnp.float32))
    high = jnp.log1p(jnp.asarray(clip_ratio_high, jnp.float32))
    clipped_ratio = jnp.exp(jnp.clip(log_ratio, low, high))
    pg1 = -adv * ratio
    pg2 = -adv * clipped_ratio
    pg = jnp.maximum(pg1, pg2)
    metrics = {"pg_clipfrac": agg((pg2 > pg1).astype(jnp.float32)),
               "ppo_kl": agg(-log_ratio)}
    if clip_ratio_dual:
        pg3 = -adv * clip_ratio_dual
        lower = (adv < 0) & (pg > pg3)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
        metrics["pg_clipfrac_lower"] = agg(lower.astype(jnp.float32))
    pg_loss = agg(pg)
    loss = pg_loss
    metrics["pg_loss"] = pg_loss
    if ref_logp is not None and kl_coef:
        kl_loss = agg(kl_penalty(logp, ref_logp, kl_penalty_kind))
        loss = loss + kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss
    if entropy is not None:
        ent = agg(entropy)
        metrics["entropy"] = ent
        if entropy_coeff:
            loss = loss - entropy_coeff * ent
    metrics["loss"] = loss
    return loss, metrics


__all__ = ["LOSS_AGG_MODES", "CLIP_SCHEDULES", "KL_PENALTIES", "group_advantages",
           "zero_std_groups", "select_groups", "rows_of_groups", "clip_factor", "clip_ratios",
           "token_logprobs", "kl_penalty", "sequence_kl", "loss_denominator", "aggregate",
           "policy_loss"]
