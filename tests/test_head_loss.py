"""The fused output projection + cross-entropy (training/head_loss.py) against autodiff of the
plain two-step expression: values and gradients, both weight layouts, bf16, and sharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guard_jax.sharding import make_mesh, use_rules
from guard_jax.training.head_loss import head_cross_entropy
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


def _reference(h, w, labels, mask, vocab_major):
    logits = jnp.einsum("ble,ve->blv" if vocab_major else "ble,ev->blv", h, w)
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
