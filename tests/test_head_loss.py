"""The fused output projection + cross-entropy and + per-token log-probs
(training/head_loss.py) against autodiff of the plain two-step expressions: values and
gradients, both weight layouts, temperature and entropy, bf16, and sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guard_jax.sharding import make_mesh, use_rules
from guard_jax.training.grpo_loss import token_logprobs
from guard_jax.training.head_loss import head_cross_entropy, head_token_logprobs
from guard_jax.training.train_step import token_cross_entropy

B, L, E, V = 2, 7, 16, 50


def _inputs(vocab_major: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((B, L, E)), jnp.float32)
    w_shape = (V, E) if vocab_major else (E, V)
    w = jnp.asarray(rng.standard_normal(w_shape) * 0.5, jnp.float32)
    labels = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
    mask = jnp.asarray(rng.random((B, L)) < 0.7, jnp.int32).at[:, -1].set(0)
    return h, w, labels, mask


def _logits(h, w, vocab_major):
    return jnp.einsum("ble,ve->blv" if vocab_major else "ble,ev->blv", h, w)


def _reference(h, w, labels, mask, vocab_major):
    logits = _logits(h, w, vocab_major)
    total, count = token_cross_entropy(logits, labels, mask)
    return total / count


def _fused(h, w, labels, mask, vocab_major):
    total, count = head_cross_entropy(h, w, labels, mask, vocab_major=vocab_major)
    return total / count


@pytest.mark.parametrize("vocab_major", [True, False], ids=["tied_vxe", "lm_head_exv"])
def test_value_and_gradients_match_autodiff(vocab_major):
    h, w, labels, mask = _inputs(vocab_major)
    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1)), static_argnums=4)  # noqa: E731
    ref, (ref_dh, ref_dw) = grad(_reference)(h, w, labels, mask, vocab_major)
    out, (dh, dw) = grad(_fused)(h, w, labels, mask, vocab_major)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-7)
    # masked positions get no gradient, and the count is the mask's sum
    assert float(jnp.abs(dh[mask == 0]).max()) == 0.0
    _, count = head_cross_entropy(h, w, labels, mask, vocab_major=vocab_major)
    assert float(count) == float(jnp.sum(mask))


def test_bfloat16_gradients_close_to_float32():
    h, w, labels, mask = _inputs(True, seed=1)
    f = jax.jit(jax.value_and_grad(_fused, argnums=(0, 1)), static_argnums=4)
    ref, ref_g = f(h, w, labels, mask, True)
    out, g = f(h.astype(jnp.bfloat16), w.astype(jnp.bfloat16), labels, mask, True)
    assert g[0].dtype == jnp.bfloat16 and g[1].dtype == jnp.bfloat16
    assert abs(float(out) - float(ref)) < 0.02 * abs(float(ref))
    for a, b in zip(g, ref_g):
        a = np.asarray(a, np.float32)
        assert np.linalg.norm(a - b) < 0.03 * np.linalg.norm(b)


def test_sharded_equals_single_device():
    """On a (2, 2, 2) mesh with the training rules (vocab on 'tensor', tokens on data/fsdp),
    the loss and both gradients equal the unsharded ones."""
    h, w, labels, mask = _inputs(True, seed=2)
    f = jax.jit(jax.value_and_grad(_fused, argnums=(0, 1)), static_argnums=4)
    ref, (ref_dh, ref_dw) = f(h, w, labels, mask, True)
    with use_rules(make_mesh((2, 2, 2))):
        out, (dh, dw) = jax.jit(jax.value_and_grad(_fused, argnums=(0, 1)),
                                static_argnums=4)(h, w, labels, mask, True)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- per-token log p
def _logp_loss(fused: bool, vocab_major: bool, temperature: float, entropy: str):
    """sum(r1 * log p) (+ sum(r2 * entropy)): random cotangents on both outputs."""
    def f(h, w, tokens, r1, r2):
        if fused:
            logp, ent = head_token_logprobs(
                h, w, tokens, vocab_major=vocab_major, temperature=temperature,
                with_entropy=entropy != "none", entropy_grad=entropy == "grad")
        else:
            logp, ent = token_logprobs(_logits(h, w, vocab_major), tokens, temperature=temperature,
                                       with_entropy=entropy == "grad")
        loss = jnp.sum(r1 * logp)
        if ent is not None:
            loss = loss + jnp.sum(r2 * ent)
        return loss, (logp, ent)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize("entropy", ["none", "value", "grad"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("vocab_major", [True, False], ids=["tied_vxe", "lm_head_exv"])
def test_token_logprobs_match_autodiff(vocab_major, temperature, entropy):
    """Values of log p and entropy, and gradients of a loss on both, equal autodiff of
    h @ W + grpo_loss.token_logprobs. With entropy='value' the entropy is returned but takes
    no gradient, so the gradients equal those of the log p term alone."""
    h, w, tokens, _ = _inputs(vocab_major, seed=3)
    rng = np.random.default_rng(4)
    r1, r2 = (jnp.asarray(rng.standard_normal((B, L)), jnp.float32) for _ in range(2))
    (_, (logp, ent)), (dh, dw) = _logp_loss(True, vocab_major, temperature, entropy)(
        h, w, tokens, r1, r2)
    (_, (ref_logp, ref_ent)), (ref_dh, ref_dw) = _logp_loss(
        False, vocab_major, temperature, entropy)(h, w, tokens, r1, r2)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-6)
    if entropy == "none":
        assert ent is None
    else:
        _, full_ent = token_logprobs(_logits(h, w, vocab_major), tokens,
                                     temperature=temperature, with_entropy=True)
        np.testing.assert_allclose(ent, full_ent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-6)
    # not differentiated (old / reference log-probs) it gives the same values
    plain_logp, plain_ent = jax.jit(lambda h, w: head_token_logprobs(
        h, w, tokens, vocab_major=vocab_major, temperature=temperature,
        with_entropy=entropy != "none"))(h, w)
    np.testing.assert_allclose(plain_logp, logp, rtol=1e-5, atol=1e-6)
    if entropy != "none":
        np.testing.assert_allclose(plain_ent, ent, rtol=1e-5, atol=1e-6)


def test_token_logprobs_entropy_gradient_finite_when_probabilities_underflow():
    """Logits hundreds apart: most exp(x - max) underflow to 0 in float32. The entropy's
    gradient must stay finite (p log p -> 0) and equal autodiff's."""
    h, w, tokens, _ = _inputs(True, seed=5)
    w = w * 60.0
    r = jnp.ones((B, L), jnp.float32)
    (_, (_, ent)), (dh, dw) = _logp_loss(True, True, 1.0, "grad")(h, w, tokens, r, r)
    (_, _), (ref_dh, ref_dw) = _logp_loss(False, True, 1.0, "grad")(h, w, tokens, r, r)
    logits = _logits(h, w, True)
    assert float(jnp.mean(jnp.exp(logits - logits.max(-1, keepdims=True)) == 0)) > 0.5
    assert bool(jnp.all(jnp.isfinite(dh))) and bool(jnp.all(jnp.isfinite(dw)))
    assert bool(jnp.all(jnp.isfinite(ent)))
    scale = float(jnp.abs(ref_dw).max())
    np.testing.assert_allclose(dh, ref_dh, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-5 * scale)


def test_token_logprobs_sharded_equals_single_device():
    h, w, tokens, _ = _inputs(True, seed=6)
    r = jnp.asarray(np.random.default_rng(7).standard_normal((B, L)), jnp.float32)
    f = _logp_loss(True, True, 0.7, "grad")
    (ref, _), (ref_dh, ref_dw) = f(h, w, tokens, r, r)
    with use_rules(make_mesh((2, 2, 2))):
        (out, _), (dh, dw) = _logp_loss(True, True, 0.7, "grad")(h, w, tokens, r, r)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    np.testing.assert_allclose(dh, ref_dh, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-5, atol=1e-7)
