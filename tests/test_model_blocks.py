"""Building blocks of the Qwen2.5-VL model with hand-written backward passes, against autodiff
of the plain expressions (float32 exact up to rounding; bfloat16 within its precision)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guard_jax.models.qwen2_5_vl.model import swiglu_mlp


def _plain(h, gate, up, down, gate_bias, up_bias):
    g, u = h @ gate, h @ up
    if gate_bias is not None:
        g, u = g + gate_bias, u + up_bias
    return (jax.nn.silu(g) * u) @ down


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(24, 16), (2, 12, 16)])
def test_swiglu_mlp_matches_autodiff(bias, shape):
    rng = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    e, i = shape[-1], 40
    args = [f(*shape), f(e, i) * 0.3, f(e, i) * 0.3, f(i, e) * 0.3,
            f(i) if bias else None, f(i) if bias else None]
    r = f(*shape)
    n = 6 if bias else 4
    ours = jax.value_and_grad(lambda *a: jnp.sum(swiglu_mlp(*a, *args[n:]) * r),
                              argnums=tuple(range(n)))(*args[:n])
    ref = jax.value_and_grad(lambda *a: jnp.sum(_plain(*a, *args[n:]) * r),
                             argnums=tuple(range(n)))(*args[:n])
    assert float(ours[0]) == pytest.approx(float(ref[0]), rel=1e-6)
    for name, a, b in zip(["h", "gate", "up", "down", "gate_bias", "up_bias"], ours[1], ref[1]):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_swiglu_mlp_bfloat16_gradients_close_to_float32():
    rng = np.random.default_rng(1)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    args = [f(32, 16), f(16, 48) * 0.3, f(16, 48) * 0.3, f(48, 16) * 0.3]
    r = f(32, 16)

    def grads(dtype):
        a = [x.astype(dtype) for x in args]
        return jax.grad(lambda *a: jnp.sum(swiglu_mlp(*a).astype(jnp.float32) * r),
                        argnums=(0, 1, 2, 3))(*a)

    for a, b in zip(grads(jnp.bfloat16), grads(jnp.float32)):
        assert a.dtype == jnp.bfloat16
        scale = float(jnp.abs(b).max())
        assert float(jnp.abs(a.astype(jnp.float32) - b).max()) <= 0.05 * scale
