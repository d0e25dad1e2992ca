"""The RL families (guard_jax/training/rl/) against NumPy implementations written from their
published definitions (each module's docstring cites the paper or documentation): values and
gradients with respect to the policy's log-probs, extreme log-ratios, fully masked batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guard_jax.training import grpo_loss as L
from guard_jax.training.rl import advantages as A
from guard_jax.training.rl import kl as K
from guard_jax.training.rl.rollout_correction import rollout_correction

B, T = 6, 5
CLAMP = 20.0


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(7)
    logp = -rng.gamma(1.0, 1.0, (B, T)).astype(np.float32)
    old = (logp + rng.uniform(-0.8, 0.8, (B, T))).astype(np.float32)
    adv = np.array([1.3, -0.7, 0.4, -1.9, 0.0, 2.1], np.float32)
    w = np.ones((B, T), np.float32)
    w[1, 3:] = 0
    w[4] = 0
    w[5, 2:] = 0
    return logp, old, adv, w


# ---------------------------------------------------------------------------- NumPy references
def np_agg(w, mode, scale=0.0):
    """c[b, t] with agg(v) = sum c v (verl agg_loss; Dr. GRPO's B x L normaliser)."""
    w = w.astype(np.float64)
    n_seq = max((w.sum(1) > 0).sum(), 1)
    return {"token-mean": lambda: w / max(w.sum(), 1e-8),
            "seq-mean-token-mean": lambda: w / np.maximum(w.sum(1, keepdims=True), 1e-8) / n_seq,
            "seq-mean-token-sum": lambda: w / n_seq,
            "seq-mean-token-sum-norm": lambda: w / (w.shape[0] * (scale or w.shape[1]))}[mode]()


def np_policy(name, logp, old, adv, w, eps_low=0.2, eps_high=0.28, ratio_cov=0.25, coef=0.1):
    """(per-token loss, d per-token loss / d logp as a [B, T, B, T]-free form): returns pg and a
    function mapping aggregation coefficients c to d(sum c pg)/d logp."""
    lp, old, w = logp.astype(np.float64), old.astype(np.float64), w.astype(np.float64)
    a = np.broadcast_to(adv.astype(np.float64)[:, None], lp.shape)
    lo, hi = np.log(1 - eps_low), np.log(1 + eps_high)
    if name in ("gspo", "gspo_token"):
        m = (w > 0).astype(np.float64)
        n = np.maximum(m.sum(1, keepdims=True), 1)
        seq = np.clip(((lp - old) * m).sum(1, keepdims=True) / n, -CLAMP, CLAMP)
        s = np.exp(seq) * np.ones_like(lp)
        pg1, pg2 = -a * s, -a * np.exp(np.clip(seq, lo, hi))
        pg = np.maximum(pg1, pg2)
        dpg_ds = np.where(pg1 >= pg2, -a, 0.0)  # the clipped branch is flat

        def grad(c):
            if name == "gspo":  # d s / d logp_t = s m_t / n: every token of the response
                return (c * dpg_ds * s).sum(1, keepdims=True) * m / n
            return c * dpg_ds * s  # gspo_token: each token through its own factor
        return pg, grad
    d = np.clip(lp - old, -CLAMP, CLAMP)
    r = np.exp(d)
    if name == "cispo":
        wt = np.exp(np.clip(d, lo, hi))
        return -a * wt * lp, lambda c: c * -a * wt
    assert name == "kl_cov"
    valid = w > 0
    av, lv = a[valid], lp[valid]
    cov = np.full(lp.shape, -np.inf)
    cov[valid] = (av - av.mean()) * (lv - lv.mean())
    k = max(1, int(np.floor(valid.sum() * ratio_cov)))
    sel = np.zeros(lp.size)
    sel[np.argsort(-cov.reshape(-1), kind="stable")[:k]] = 1
    sel = sel.reshape(lp.shape) * valid
    pg = -a * r + sel * coef * np.abs(d)
    return pg, lambda c: c * (-a * r + sel * coef * np.sign(d))


def np_kl(name, logp, ref):
    """(value, d value / d logp) of J. Schulman's estimators ("Approximating KL Divergence"),
    with d = logp - ref clamped to +-20 where the estimator exponentiates or squares it."""
    d = logp.astype(np.float64) - ref.astype(np.float64)
    dc = np.clip(d, -CLAMP, CLAMP)
    inside = (np.abs(d) <= CLAMP).astype(np.float64)
    base = name.rstrip("+")
    if base in ("kl", "k1"):
        v, g = d, np.ones_like(d)
    elif base == "abs":
        v, g = np.abs(d), np.where(d >= 0, 1.0, -1.0)  # (the subgradient 1 at d = 0)
    elif base in ("mse", "k2"):
        v, g = 0.5 * dc ** 2, dc * inside
    else:
        raw = np.exp(-dc) + dc - 1
        v = np.clip(raw, -10, 10)
        g = (1 - np.exp(-dc)) * inside * (raw <= 10)
    if name.endswith("+"):
        g = dc * inside  # the straight-through gradient is k2's
    return v, g


# ---------------------------------------------------------------------------- policy losses
@pytest.mark.parametrize("mode", L.LOSS_AGG_MODES)
@pytest.mark.parametrize("name", ["gspo", "gspo_token", "cispo", "kl_cov"])
def test_policy_losses_match_numpy(batch, name, mode):
    logp, old, adv, w = batch
    s = L.LossSettings(policy_loss=name, loss_agg_mode=mode, kl_cov_ratio=0.25, ppo_kl_coef=0.1)

    def f(lp):
        return L.policy_loss(lp, old, adv, w, s, eps_low=0.2, eps_high=0.28)
    (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(logp))
    pg, np_grad = np_policy(name, logp, old, adv, w)
    c = np_agg(w, mode)
    np.testing.assert_allclose(float(loss), (c * pg).sum(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), np_grad(c), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(grad)).max() > 1e-3 and np.all(np.asarray(grad)[4] == 0)
    key = "pg_kl_cov_frac" if name == "kl_cov" else "pg_clipfrac"
    assert 0 < float(metrics[key]) < 1


def test_gspo_and_gspo_token_agree_for_sequence_advantages(batch):
    """GSPO paper Eq. 14: with A constant over a response, GSPO-token's gradient is GSPO's."""
    logp, old, adv, w = batch
    out = {}
    for name in ("gspo", "gspo_token"):
        s = L.LossSettings(policy_loss=name, loss_agg_mode="seq-mean-token-mean")
        out[name] = jax.value_and_grad(lambda lp, s=s: L.policy_loss(
            lp, old, adv, w, s, eps_low=0.2, eps_high=0.28)[0])(jnp.asarray(logp))
    np.testing.assert_allclose(out["gspo"][0], out["gspo_token"][0], rtol=1e-6)
    np.testing.assert_allclose(out["gspo"][1], out["gspo_token"][1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", L.POLICY_LOSSES)
def test_every_loss_is_finite_at_extreme_log_ratios_and_on_a_masked_batch(name):
    """Log-ratios of +-1e4 (clamped to +-20 before every exp) and a fully masked micro-batch:
    finite values and gradients, zero where the weight is 0."""
    logp = jnp.asarray([[-1e4, -0.1, -3.0], [-0.01, -50.0, -2.0]])
    old = jnp.asarray([[-0.5, -1e4, -3.0], [-80.0, -0.2, -2.0]])
    ref = jnp.asarray([[-0.01, -1e4, -90.0], [-1e4, -0.01, -2.0]])
    adv = jnp.asarray([1.5, -2.0])
    for w in (jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]), jnp.zeros((2, 3))):
        for kl in L.KL_PENALTIES:
            s = L.LossSettings(policy_loss=name, kl_coef=0.1, kl_penalty=kl,
                               clip_ratio_dual=3.0 if name == "vanilla" else 0.0)
            (loss, m), g = jax.value_and_grad(lambda lp: L.policy_loss(
                lp, old, adv, w, s, eps_low=0.2, eps_high=0.2, ref_logp=ref,
                entropy=jnp.ones_like(lp)), has_aux=True)(logp)
            assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in m.values())
            g = np.asarray(g)
            assert np.all(np.isfinite(g)) and np.all(g[np.asarray(w) == 0] == 0), (name, kl)


# ---------------------------------------------------------------------------- KL estimators
@pytest.mark.parametrize("name", L.KL_PENALTIES)
def test_kl_estimators_match_numpy(name):
    """Values and gradients, including log-ratios past the clamp (+-95) and a value past k3's
    +-10 clamp: all finite."""
    logp = np.array([-1.0, -2.0, -0.5, -95.0, -0.01, -30.0, -1e4], np.float32)
    ref = np.array([-1.0, -1.5, -0.9, -1.0, -95.0, -1.0, -0.5], np.float32)
    v, g = jax.vmap(jax.value_and_grad(lambda a, b: K.kl_penalty(a, b, name)))(
        jnp.asarray(logp), jnp.asarray(ref))
    want_v, want_g = np_kl(name, logp, ref)
    np.testing.assert_allclose(np.asarray(v), want_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(g)))


def test_adaptive_kl_controller_follows_ziegler():
    """value <- value (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon) per step."""
    ctrl = K.KLController(0.05, "adaptive", target=0.1, horizon=100)
    want = 0.05
    for kl in (0.3, 0.05, 0.1, 0.0):
        ctrl.update(kl, n_steps=8)
        want *= 1 + np.clip(kl / 0.1 - 1, -0.2, 0.2) * 8 / 100
        assert ctrl.value == pytest.approx(want, rel=1e-12)
    fixed = K.KLController(0.05)
    fixed.update(3.0, 8)
    assert fixed.value == 0.05


# ---------------------------------------------------------------------------- advantages
def np_whiten(x, m):
    v = x[m > 0]
    return (x - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8) * m


@pytest.mark.parametrize("g", [1, 2, 4])
def test_advantage_estimators_match_numpy(g):
    rng = np.random.default_rng(g)
    r_raw = rng.normal(0, 1, 8).astype(np.float32)
    m = (np.arange(T)[None] < rng.integers(1, T + 1, (8, 1))).astype(np.float32)
    pen = (0.01 * rng.normal(0, 1, (8, T)) * m).astype(np.float32)
    r = r_raw - pen.sum(1)  # the scalar reward less the summed KL penalty, as the trainer has it
    gr = r.astype(np.float64).reshape(-1, g)
    mean = gr.mean(1, keepdims=True) if g > 1 else np.zeros_like(gr)
    std = gr.std(1, ddof=1, keepdims=True) if g > 1 else np.ones_like(gr)
    want = {
        "grpo": ((gr - mean) / (std + 1e-6)).reshape(-1),
        "dr_grpo": (gr - mean).reshape(-1),
        "rloo": (gr - mean).reshape(-1) * g / (g - 1) if g > 1 else gr.reshape(-1),
        # return to go: r_raw - sum_{s >= t} penalty_s, whitened over the batch's tokens
        "reinforce_plus_plus": np_whiten(
            (r_raw[:, None] - np.cumsum(pen[:, ::-1], 1)[:, ::-1]) * m, m),
        "reinforce_plus_plus_baseline": np_whiten((gr - (gr.mean(1, keepdims=True) if g > 1
                                                         else 0)).reshape(-1)[:, None] * m, m),
    }
    assert set(want) == set(L.ADV_ESTIMATORS)
    for name, w in want.items():
        got = A.compute_advantages(name, r, g, mask=m, penalty=pen)
        np.testing.assert_allclose(np.asarray(got), w, rtol=2e-5, atol=2e-6, err_msg=name)


# ---------------------------------------------------------------------------- shaping, filters
def test_overlong_penalty_is_dapos():
    """DAPO Eq. 13: 0 up to L_max - L_cache, then ((L_max - L_cache) - |y|) / L_cache."""
    from guard_jax.training.grpo_rewards import overlong_penalty, with_overlong_penalty
    lengths = np.array([1, 12, 16, 17, 19, 20])
    want = np.where(lengths <= 16, 0.0, (16 - lengths) / 4.0) * 0.5
    np.testing.assert_allclose(overlong_penalty(lengths, max_len=20, buffer_len=4, factor=0.5),
                               want, rtol=1e-6)
    mask = np.arange(20)[None] < lengths[:, None]
    terms = with_overlong_penalty({"total": jnp.ones(6)}, mask, max_len=20, buffer_len=4,
                                  factor=0.5)
    np.testing.assert_allclose(terms["total"], 1 + want, rtol=1e-6)


def test_group_filters():
    r = np.array([0, 0, 1, 1, 1, 1, 0, 1, 0.5, 0.5, 0.5, 0.5], np.float32)
    # group means 0.5, 0.75, 0.5; the last group's rewards are all equal
    np.testing.assert_array_equal(L.valid_groups(r, 4, by="std"), [True, True, False])
    np.testing.assert_array_equal(L.valid_groups(r, 4, by="mean", low=0.01, high=0.99),
                                  [True, True, True])
    np.testing.assert_array_equal(L.valid_groups(r, 4, by="mean", low=0.6, high=1.0),
                                  [False, True, False])
    # G = 1: a mean filter is defined (the one reward), the std filter would drop everything
    np.testing.assert_array_equal(L.valid_groups(np.array([0.0, 0.5, 1.0]), 1, by="mean"),
                                  [False, True, False])


# ---------------------------------------------------------------------------- rollout correction
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_rollout_correction_matches_numpy(level, mode):
    """The mismatch is built explicitly (on the CPU the sampler and trainer agree to 1e-7)."""
    rng = np.random.default_rng(3)
    m = (np.arange(T)[None] < np.array([[5], [3], [1], [4]])).astype(np.float32)
    sampler = -rng.gamma(1.0, 1.0, (4, T)).astype(np.float32)
    old = (sampler + rng.normal(0, 0.6, (4, T)) * m).astype(np.float32)
    weights, keep, met = rollout_correction(old, sampler, m, level=level, mode=mode,
                                            threshold=1.5)
    d = (old.astype(np.float64) - sampler) * m
    if level == "sequence":
        d = np.broadcast_to(d.sum(1, keepdims=True), d.shape)
    rho = np.exp(np.clip(d, -CLAMP, CLAMP))
    if mode == "truncate":
        want_w, want_keep = np.minimum(rho, 1.5) * m, m
    else:
        want_keep = m * ((rho >= 1 / 1.5) & (rho <= 1.5))
        want_w = rho * want_keep
    np.testing.assert_allclose(np.asarray(weights), want_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(keep), want_keep)
    valid = m > 0
    np.testing.assert_allclose(float(met["rollout_is_mean"]), want_w[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(met["rollout_is_ratio_fraction_high"]),
                               (rho[valid] > 1.5).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(met["kl"]), (sampler - old)[valid].mean(), rtol=1e-5)
    kept = want_w[valid]
    ess = kept.mean() ** 2 / (kept ** 2).mean() if kept.any() else 0.0
    np.testing.assert_allclose(float(met["rollout_is_eff_sample_size"]), ess, rtol=1e-5)
    assert (float(met["rollout_is_masked_fraction"]) > 0) == (mode == "mask")


def test_rollout_is_weights_scale_the_policy_gradient(batch):
    logp, old, adv, w = batch
    isw = np.linspace(0.5, 1.5, B * T).reshape(B, T).astype(np.float32)
    s = L.LossSettings()

    def f(lp, is_w):
        return L.policy_loss(lp, old, adv, w, s, eps_low=0.2, eps_high=0.2, is_weights=is_w)[0]
    g_is = np.asarray(jax.grad(f)(jnp.asarray(logp), jnp.asarray(isw)))
    g = np.asarray(jax.grad(f)(jnp.asarray(logp), jnp.ones((B, T))))
    np.testing.assert_allclose(g_is, g * isw, rtol=1e-6, atol=1e-9)


def test_registries_are_the_config_choices():
    from guard_jax.run_config import grpo_choices
    c = grpo_choices()
    assert c["policy_loss"] == L.POLICY_LOSSES == ("vanilla", "gspo", "gspo_token", "cispo",
                                                   "kl_cov")
    assert c["loss_agg_mode"] == ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                  "seq-mean-token-sum-norm")
    assert {"kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "k3+", "low_var_kl+",
            "kl+"} <= set(c["kl_penalty"]) and c["kl_in_reward_penalty"] == c["kl_penalty"]
    with pytest.raises(ValueError, match="policy_loss 'ppo2'; choose one of"):
        L.policy_loss(jnp.zeros((1, 1)), jnp.zeros((1, 1)), jnp.zeros(1), jnp.ones((1, 1)),
                      L.LossSettings(policy_loss="ppo2"), eps_low=0.2, eps_high=0.2)
