"""GRPO's loss, advantages and clip schedules against an independent NumPy implementation.

The NumPy side is written from the formulas (docs/grpo.md#algorithm,
docs/recipes.md#guardreasoner-vl; verl's compute_policy_loss and kl_penalty): the loss in float64
and its gradient with respect to the logits derived by hand (d log p / d z = (onehot - p) / T, the
clipped branch and the dual clip have zero slope, dH / dz_j = -p_j (log p_j + H) / T). JAX's value
and autodiff gradient must match both for every knob combination.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guard_jax.training import grpo_loss as L

B, T, V = 6, 5, 7


# ---------------------------------------------------------------------------- NumPy reference
def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_agg_coefficients(w, agg, denom=None, scale=0.0):
    """c[b, t] with loss = sum c * per-token value (rl/aggregation.py's definitions: verl's
    agg_loss; Dr. GRPO's constant normaliser B x L)."""
    w = w.astype(np.float64)
    n_seq = (w.sum(1) > 0).sum()
    if agg == "token-mean":
        return w / (w.sum() if denom is None else denom)
    if agg == "seq-mean-token-mean":
        return w / np.maximum(w.sum(1, keepdims=True), 1e-300) / (n_seq if denom is None
                                                                   else denom)
    if agg == "seq-mean-token-sum":
        return w / (n_seq if denom is None else denom)
    assert agg == "seq-mean-token-sum-norm"
    return w / (w.shape[0] * (scale or w.shape[1]) if denom is None else denom)


def np_objective(logits, tokens, old, adv, w, *, temperature=1.0, eps_low=0.2, eps_high=0.2,
                 dual=0.0, ref=None, kl_coef=0.0, kl_kind="low_var_kl", ent_coef=0.0,
                 agg="token-mean", denom=None):
    """(loss, d loss / d logits) in float64."""
    z = logits.astype(np.float64) / temperature
    p = np_softmax(z)
    logp_all = np.log(p)
    onehot = np.eye(V)[tokens]
    logp = (logp_all * onehot).sum(-1)
    dlogp_dz = (onehot - p) / temperature                      # [B, T, V]
    ent = -(p * logp_all).sum(-1)
    dent_dz = -p * (logp_all + ent[..., None]) / temperature
    a = adv[:, None] * np.ones((1, T))
    w = w.astype(np.float64)

    c = np_agg_coefficients(w, agg, denom)

    lr = logp - old
    ratio = np.exp(lr)
    lo, hi = np.log(1 - eps_low), np.log(1 + eps_high)
    clipped = np.exp(np.clip(lr, lo, hi))
    pg1, pg2 = -a * ratio, -a * clipped
    pg = np.maximum(pg1, pg2)
    g_pg = np.where(pg1 >= pg2, -a * ratio, 0.0)  # the clipped branch is flat in logp
    if dual:
        pg3 = -a * dual
        capped = (a < 0) & (pg > pg3)
        pg = np.where(capped, pg3, pg)
        g_pg = np.where(capped, 0.0, g_pg)
    loss = (c * pg).sum()
    g_logp = c * g_pg
    if ref is not None and kl_coef:
        if kl_kind == "low_var_kl":
            dd = ref - logp
            kl = np.exp(dd) - dd - 1
            g_kl = 1.0 - np.exp(dd)
        else:
            kl, g_kl = logp - ref, np.ones_like(logp)
        loss += kl_coef * (c * kl).sum()
        g_logp = g_logp + kl_coef * c * g_kl
    grad = (g_logp[..., None] * dlogp_dz)
    if ent_coef:
        loss -= ent_coef * (c * ent).sum()
        grad = grad - ent_coef * c[..., None] * dent_dz
    return loss, grad


# ---------------------------------------------------------------------------- fixed inputs
@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (B, T, V)).astype(np.float32)
    tokens = rng.integers(0, V, (B, T))
    logp = np.log(np_softmax(logits.astype(np.float64)))[np.arange(B)[:, None],
                                                         np.arange(T)[None], tokens]
    # old log-probs far enough from the new ones that both clips and the dual clip bind
    old = (logp + rng.uniform(-1.6, 1.6, (B, T))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.5, (B, T))).astype(np.float32)
    adv = np.array([1.3, -0.7, 0.4, -1.9, 0.0, 2.1], np.float32)
    w = np.ones((B, T), np.float32)
    w[1, 3:] = 0          # padding after an EOS
    w[4] = 0              # a masked (degenerate or truncated) sequence
    w[5, 1:] = 0
    return logits, tokens, old, ref, adv, w


KNOBS = {
    "clip": {},
    "clip_higher": dict(eps_low=0.2, eps_high=0.28),
    "dual_clip": dict(dual=3.0),
    "kl_k3": dict(kl_coef=0.3, kl_kind="low_var_kl"),
    "kl_k1": dict(kl_coef=0.3, kl_kind="kl"),
    "entropy": dict(ent_coef=0.05),
    "seq_mean_token_mean": dict(agg="seq-mean-token-mean"),
    "seq_mean_token_sum": dict(agg="seq-mean-token-sum", kl_coef=0.2, dual=3.0),
    "seq_mean_token_sum_norm": dict(agg="seq-mean-token-sum-norm", ent_coef=0.03),
    "everything": dict(eps_low=0.1, eps_high=0.3, dual=2.5, kl_coef=0.2, ent_coef=0.02,
                       agg="seq-mean-token-mean", temperature=1.3),
    "everything_token_mean": dict(eps_low=0.25, eps_high=0.15, dual=3.0, kl_coef=0.1,
                                  ent_coef=0.01, temperature=0.7),
}


@functools.partial(jax.jit, static_argnames=("settings",))
def _value_and_grad(logits, tokens, old, ref, adv, w, eps_low, eps_high, denom, n_tokens, *,
                    settings):
    def f(z):
        logp, ent = L.token_logprobs(z, tokens, temperature=settings.temperature,
                                     with_entropy=True)
        return L.policy_loss(logp, old, adv, w, settings, eps_low=eps_low, eps_high=eps_high,
                             ref_logp=ref if settings.kl_coef else None, entropy=ent,
                             denom=denom, n_tokens=n_tokens)
    return jax.value_and_grad(f, has_aux=True)(logits)


def jax_objective(logits, tokens, old, ref, adv, w, *, temperature=1.0, eps_low=0.2,
                  eps_high=0.2, dual=0.0, kl_coef=0.0, kl_kind="low_var_kl", ent_coef=0.0,
                  agg="token-mean", denom=None, n_tokens=None):
    if denom is None:
        denom = L.loss_denominator(w, agg)
    if n_tokens is None:
        n_tokens = float(np.sum(w))
    settings = L.LossSettings(temperature=temperature, loss_agg_mode=agg, clip_ratio_dual=dual,
                              kl_coef=kl_coef, kl_penalty=kl_kind, entropy_coeff=ent_coef)
    (loss, metrics), grad = _value_and_grad(
        logits, tokens, old, ref, adv, w, eps_low, eps_high, denom, n_tokens, settings=settings)
    return float(loss), np.asarray(grad), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("knobs", list(KNOBS.values()), ids=list(KNOBS))
def test_loss_and_gradient_equal_numpy(inputs, knobs):
    logits, tokens, old, ref, adv, w = inputs
    want, want_grad = np_objective(logits, tokens, old, adv, w, ref=ref, **knobs)
    got, got_grad, metrics = jax_objective(logits, tokens, old, ref, adv, w, **knobs)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(got_grad, want_grad, rtol=2e-4, atol=2e-6)
    assert np.abs(want_grad).max() > 1e-3          # the gradient is not trivially zero
    assert np.all(got_grad[4] == 0) and np.all(got_grad[1, 3:] == 0)  # masked tokens
    # the inputs make the clip bind somewhere, so the clipped branch is exercised
    assert 0 < metrics["pg_clipfrac"] < 1
    if knobs.get("dual"):
        assert metrics["pg_clipfrac_lower"] > 0


def test_loss_terms_are_separate_and_signed(inputs):
    logits, tokens, old, ref, adv, w = inputs
    _, _, m = jax_objective(logits, tokens, old, ref, adv, w, kl_coef=0.5, ent_coef=0.1)
    assert m["kl_loss"] > 0 and m["entropy"] > 0
    np.testing.assert_allclose(m["loss"], m["pg_loss"] + 0.5 * m["kl_loss"] - 0.1 * m["entropy"],
                               rtol=1e-5)


@pytest.mark.parametrize("agg", L.LOSS_AGG_MODES)
def test_micro_batch_split_does_not_change_the_mini_batch_loss(inputs, agg):
    """Micro-batch losses normalised by the mini-batch denominator add up to the mini-batch
    loss and gradient, however the batch is split (the token-mean is over the mini-batch)."""
    logits, tokens, old, ref, adv, w = inputs
    kw = dict(agg=agg, kl_coef=0.1, ent_coef=0.01, dual=3.0)
    whole, whole_grad, _ = jax_objective(logits, tokens, old, ref, adv, w, **kw)
    denom = float(L.loss_denominator(w, agg))
    parts, grads, clipfrac = 0.0, [], 0.0
    halves = (slice(0, 3), slice(3, 6))
    for sl in halves:
        loss, grad, m = jax_objective(logits[sl], tokens[sl], old[sl], ref[sl], adv[sl],
                                      w[sl], denom=denom, n_tokens=float(w.sum()), **kw)
        parts += loss
        clipfrac += m["pg_clipfrac"]
        grads.append(grad)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(grads), whole_grad, rtol=1e-5, atol=1e-7)
    # the token-mean diagnostics add up over micro-batches too
    np.testing.assert_allclose(clipfrac, jax_objective(logits, tokens, old, ref, adv, w,
                                                       **kw)[2]["pg_clipfrac"], rtol=1e-6)
    # whereas normalising each micro-batch by itself gives another number
    alone = sum(jax_objective(logits[sl], tokens[sl], old[sl], ref[sl], adv[sl], w[sl], **kw)[0]
                for sl in halves)
    assert abs(alone - whole) > 1e-3


def test_ratio_one_means_plain_policy_gradient(inputs):
    """At the first update (old = new) nothing clips and d loss / d logp = -A / N."""
    logits, tokens, _, _, adv, w = inputs
    logp, _ = L.token_logprobs(jnp.asarray(logits), jnp.asarray(tokens))
    g = jax.grad(lambda lp: L.policy_loss(lp, jax.lax.stop_gradient(lp), adv, w,
                                          L.LossSettings(), eps_low=0.2, eps_high=0.2)[0])(logp)
    np.testing.assert_allclose(np.asarray(g), -adv[:, None] * w / w.sum(), rtol=1e-6)


@pytest.mark.parametrize("policy", L.POLICY_LOSSES)
def test_no_old_logp_is_the_on_policy_loss(inputs, policy):
    """old_logp=None (the skipped old-log-prob forward, docs/grpo.md#old-log-probs) gives the
    value, gradient and metrics of old = the current log-probs as constants: ratio 1, nothing
    clipped, ppo_kl 0, for every policy loss."""
    logits, tokens, _, ref, adv, w = inputs
    s = L.LossSettings(policy_loss=policy, kl_coef=0.1, entropy_coeff=0.01, kl_cov_ratio=0.2,
                       clip_ratio_dual=3.0 if policy == "vanilla" else 0.0)

    def f(z, old):
        logp, ent = L.token_logprobs(z, jnp.asarray(tokens), with_entropy=True)
        if old == "same":
            old = jax.lax.stop_gradient(logp)
        return L.policy_loss(logp, old, adv, w, s, eps_low=0.2, eps_high=0.28, ref_logp=ref,
                             entropy=ent)

    z = jnp.asarray(logits)
    (want, want_m), want_g = jax.value_and_grad(lambda z: f(z, "same"), has_aux=True)(z)
    (got, got_m), got_g = jax.value_and_grad(lambda z: f(z, None), has_aux=True)(z)
    assert float(got) == float(want)
    np.testing.assert_array_equal(np.asarray(got_g), np.asarray(want_g))
    assert np.abs(np.asarray(got_g)).max() > 1e-3
    assert float(got_m["ppo_kl"]) == 0.0
    for k in ("pg_clipfrac", "pg_clipfrac_lower"):
        if k in got_m:
            assert float(got_m[k]) == 0.0, k


# ---------------------------------------------------------------------------- KL estimators
def test_kl_estimators():
    logp = jnp.asarray([-1.0, -2.0, -0.5, -30.0])
    ref = jnp.asarray([-1.0, -1.5, -0.9, -1.0])
    k3 = np.asarray(L.kl_penalty(logp, ref, "low_var_kl"))
    d = np.asarray(ref - logp, np.float64)
    np.testing.assert_allclose(k3[:3], (np.exp(d) - d - 1)[:3], rtol=1e-6)
    assert k3[0] == 0 and np.all(k3 >= 0) and k3[3] == L.LOW_VAR_KL_CLAMP  # clamped like verl
    np.testing.assert_allclose(L.kl_penalty(logp, ref, "kl"), logp - ref)
    w = jnp.asarray([[1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(L.sequence_kl(logp[None], ref[None], w, "kl"), [-0.5])
    with pytest.raises(ValueError, match="kl_penalty"):
        L.kl_penalty(logp, ref, "k4")


# ---------------------------------------------------------------------------- clip schedules
def test_clip_schedules_give_the_published_values():
    """docs/recipes.md#guardreasoner-vl, S = 24: compound 0.128 / 0.036 / 0.0036 and linear
    0.167 / 0.133 / 0.100 at steps 4 / 8 / 12."""
    want = {"compound": (0.128, 0.036, 0.0036), "linear": (0.167, 0.133, 0.100),
            "constant": (0.2, 0.2, 0.2)}
    jitted = jax.jit(L.clip_ratios, static_argnums=(0, 1, 2, 4))  # the step is traced
    for schedule, values in want.items():
        for step, value in zip((4, 8, 12), values):
            lo, hi = jitted(schedule, 0.2, 0.2, jnp.int32(step), 24)
            assert float(lo) == float(hi)
            closed = 0.2 * {"compound": np.prod(1 - np.arange(1, step + 1) / 24),
                            "linear": (24 - step) / 24, "constant": 1.0}[schedule]
            np.testing.assert_allclose(float(lo), closed, rtol=1e-5)
            # the table rounds to two significant figures (0.00355 is printed 0.0036)
            np.testing.assert_allclose(float(lo), value, rtol=0.02, err_msg=schedule)
    assert jitted._cache_size() == 3  # one compilation per schedule, none per step
    for schedule in ("linear", "compound"):
        assert float(L.clip_factor(schedule, 0, 24)) == 1.0
        assert float(L.clip_factor(schedule, 24, 24)) == 0.0
        assert float(L.clip_factor(schedule, 30, 24)) == 0.0
    lo, hi = L.clip_ratios("linear", 0.2, 0.28, 6, 24)
    np.testing.assert_allclose([lo, hi], [0.15, 0.21], rtol=1e-6)
    with pytest.raises(ValueError, match="clip schedule"):
        L.clip_factor("cosine", 0, 10)


# ---------------------------------------------------------------------------- advantages
def test_group_advantages_match_numpy():
    r = np.array([1.0, 0.0, 0.5, 2.0, 3.0, 3.0, 3.0, 1.0], np.float32)
    got = np.asarray(L.group_advantages(r, 4))
    g = r.reshape(2, 4).astype(np.float64)
    want = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(L.group_advantages(r, 4, norm_by_std=False),
                               (g - g.mean(1, keepdims=True)).reshape(-1), rtol=1e-6)


def test_advantage_edge_cases():
    # a one-sample group: mean 0 and std 1, so the advantage is the reward (verl's rule)
    np.testing.assert_allclose(L.group_advantages(np.array([2.5, -1.0]), 1),
                               np.array([2.5, -1.0]) / (1 + 1e-6), rtol=1e-6)
    # equal rewards: zero advantage, finite, and the group is flagged degenerate
    r = np.array([-105.0, -105.0, -105.0, 0.0, 0.0, 1.0], np.float32)
    adv = np.asarray(L.group_advantages(r, 3))
    assert np.all(adv[:3] == 0) and np.all(np.isfinite(adv))
    np.testing.assert_array_equal(L.zero_std_groups(r, 3), [True, False])
    assert bool(L.zero_std_groups(np.array([0.7, 0.7 + 1e-9]), 2)[0])
    with pytest.raises(ValueError, match="groups of 4"):
        L.group_advantages(np.zeros(6), 4)


def test_select_groups_is_static_and_valid_first():
    valid = jnp.asarray([False, True, False, True, True, False])
    take, weight = jax.jit(L.select_groups, static_argnums=1)(valid, 4)
    np.testing.assert_array_equal(take, [1, 3, 4, 0])  # valid in order, then backfill
    np.testing.assert_array_equal(weight, [1, 1, 1, 0])  # the backfilled group is masked
    np.testing.assert_array_equal(L.rows_of_groups(take[:2], 3), [3, 4, 5, 9, 10, 11])


def test_loss_denominators():
    w = np.array([[1, 1, 0], [0, 0, 0], [0.5, 0.5, 0.5]], np.float32)
    assert float(L.loss_denominator(w, "token-mean")) == 3.5
    assert float(L.loss_denominator(w, "seq-mean-token-mean")) == 2.0
    with pytest.raises(ValueError, match="loss_agg_mode"):
        L.loss_denominator(w, "seq-sum")


# ---------------------------------------------------------------------------- defects (issue 19)
def test_extreme_log_ratio_gives_finite_kl_gradient_even_masked():
    """A token whose reference log-prob exceeds the policy's by ~89 or more overflowed exp() in
    low_var_kl: the value was clamped afterwards but the gradient was NaN, and NaN reached the
    loss's gradient even with the token's weight 0. Now the log-ratio is clamped before the
    exp (to +-20, as verl and EasyR1 do) and the clamped token has a zero gradient."""
    logp = jnp.asarray([[-95.0, -1.0]])
    ref = jnp.asarray([[-1.0, -1.2]])
    w = jnp.asarray([[0.0, 1.0]])  # the extreme token is masked
    s = L.LossSettings(kl_coef=0.1, kl_penalty="low_var_kl")

    def loss(lp):
        return L.policy_loss(lp, jax.lax.stop_gradient(lp), jnp.asarray([1.0]), w, s,
                             eps_low=0.2, eps_high=0.2, ref_logp=ref)[0]
    g = np.asarray(jax.grad(loss)(logp))
    assert np.all(np.isfinite(g)) and g[0, 0] == 0
    k3_grad = np.asarray(jax.grad(lambda lp: L.kl_penalty(lp, ref).sum())(logp))
    assert np.all(np.isfinite(k3_grad)) and k3_grad[0, 0] == 0
    assert float(L.kl_penalty(logp, ref)[0, 0]) == L.LOW_VAR_KL_CLAMP


def test_clip_fraction_and_ppo_kl_are_token_means_in_every_mode():
    """verl and EasyR1 average pg_clipfrac and ppo_kl per token whatever loss_agg_mode is; they
    were averaged with the loss's mode (seq-mean-token-mean gave 0.5 and -0.5 here)."""
    lp = jnp.asarray([[-1.0, -1.0, -1.0, -1.0], [-1.0, 0.0, 0.0, 0.0]])
    old = jnp.asarray([[-1.0, -1.0, -1.0, -1.0], [-2.0, 0.0, 0.0, 0.0]])
    w = jnp.asarray([[1.0, 1, 1, 1], [1, 0, 0, 0]])
    for mode in L.LOSS_AGG_MODES:
        m = L.policy_loss(lp, old, jnp.asarray([1.0, 1.0]), w, L.LossSettings(loss_agg_mode=mode),
                          eps_low=0.2, eps_high=0.2)[1]
        np.testing.assert_allclose([m["pg_clipfrac"], m["ppo_kl"]], [0.2, -0.2], rtol=1e-6,
                                   err_msg=mode)


# ---------------------------------------------------------------------------- recipe configs
# sha256 of (advantages, loss, d loss / d logp, d loss / d entropy) as float32 bytes, and the
# loss as float.hex, for each GRPO recipe config's knobs on the inputs below, recorded with the
# code before the loss families were split into training/rl/: the recipes' losses are unchanged
# bit for bit.
RECIPE_BITS = {
    "guardreasoner_vl_grpo_3b.py": ("b45356a4fd8a14b86d3203d35e4af12814a4437e2b5831acb8e787a72c4a0f5a",
                                    "0x1.3fdf9a0000000p-3"),
    "guardreasoner_vl_grpo_7b.py": ("b45356a4fd8a14b86d3203d35e4af12814a4437e2b5831acb8e787a72c4a0f5a",
                                    "0x1.3fdf9a0000000p-3"),
    "proguard_grpo_3b.py": ("c6fc037bbaa382e655bb0caf0fe240c79ebcaad7400723dc459c11890ecc9ef2",
                            "0x1.139fca0000000p-3"),
    "proguard_grpo_7b.py": ("c6fc037bbaa382e655bb0caf0fe240c79ebcaad7400723dc459c11890ecc9ef2",
                            "0x1.139fca0000000p-3"),
    "safeguard_vl_grpo_7b.py": ("3b9e6b259a8591542fe4e784fbf44f557348e59f03248990b8c97c1ba0b2eceb",
                                "0x1.679b440000000p-7"),
    "tiny_grpo.py": ("41751368fc3dd9b261a417cccbfd20f3a59ffcee6f5e0e867c7c2fbf1fb8725e",
                     "-0x1.9d61340000000p-2"),
}


def _recipe_inputs(g):
    rng = np.random.default_rng(19)
    b, t = 2 * g, 12
    logp = -rng.gamma(1.0, 1.0, (b, t)).astype(np.float32)
    old = (logp + rng.uniform(-0.6, 0.6, (b, t))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.5, (b, t))).astype(np.float32)
    ent = rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)
    rewards = rng.integers(0, 3, b).astype(np.float32)
    w = (np.arange(t)[None] < rng.integers(1, t + 1, (b, 1))).astype(np.float32)
    w[0] = 0
    return logp, old, ref, ent, rewards, w


@pytest.mark.parametrize("name", sorted(RECIPE_BITS))
def test_recipe_configs_keep_their_loss_bit_for_bit(name):
    import hashlib
    import os

    from guard_jax.run_config import load_config
    from guard_jax.training.rl.advantages import compute_advantages
    run = load_config(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", name))
    g = run.grpo
    logp, old, ref, ent, rewards, w = _recipe_inputs(g.num_generations)
    reward = jnp.asarray(rewards)
    if g.kl_in_reward_coef:
        reward = reward - g.kl_in_reward_coef * L.sequence_kl(old, ref, w,
                                                              g.kl_in_reward_penalty)
    adv = compute_advantages(g.adv_estimator, reward, g.num_generations, mask=w,
                             norm_by_std=g.norm_adv_by_std, eps=g.adv_eps)
    eps_low, eps_high = L.clip_ratios(g.clip_schedule, g.clip_ratio_low, g.clip_ratio_high, 3,
                                      run.train.steps)
    denom = L.loss_denominator(w, g.loss_agg_mode, g.loss_scale_factor)
    settings = L.LossSettings.from_config(g)

    @jax.jit
    def f(logp, ent, old, ref, adv, w, eps_low, eps_high, denom):
        def loss(lp, e):
            return L.policy_loss(lp, old, adv, w, settings, eps_low=eps_low, eps_high=eps_high,
                                 ref_logp=ref if g.kl_coef else None, entropy=e, denom=denom)
        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(logp, ent)
    (loss, _), (g_logp, g_ent) = f(logp, ent, old, ref, adv, w, eps_low, eps_high, denom)
    h = hashlib.sha256()
    for a in (adv, loss, g_logp, g_ent):
        h.update(np.asarray(a, np.float32).tobytes())
    assert (h.hexdigest(), float(loss).hex()) == RECIPE_BITS[name]
