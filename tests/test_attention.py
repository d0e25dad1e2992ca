"""Attention kernels agree with the XLA reference path: splash (interpret mode), query chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guard_jax.models.qwen2_5_vl import attention as A
from guard_jax.models.qwen2_5_vl import init_model, tiny


def _qkv(b=2, t=40, n=4, kv=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    mask = np.ones((b, t), bool)
    mask[1, :5] = False  # left padding in the second row
    return f(b, t, n, d), f(b, t, kv, d), f(b, t, kv, d), jnp.asarray(mask)


@pytest.mark.parametrize("case", ["causal_mask", "lengths"])
def test_splash_matches_xla_values_and_grads(case):
    q, k, v, mask = _qkv()
    if case == "causal_mask":
        kw = dict(mask=mask[:, None, None, :], is_causal=True)
        valid = mask
    else:
        lens = jnp.asarray([40, 23])
        kw = dict(kv_lengths=lens)
        valid = jnp.arange(40)[None, :] < lens[:, None]

    def f(impl, q):
        return A.dot_product_attention(q, k, v, impl=impl, **kw)

    np.testing.assert_allclose(np.asarray(f("splash_interpret", q))[np.asarray(valid)],
                               np.asarray(f("xla", q))[np.asarray(valid)], atol=1e-5)
    g = [jax.grad(lambda q, i=i: jnp.sum(f(i, q) * valid[..., None, None]))(q)
         for i in ("xla", "splash_interpret")]
    np.testing.assert_allclose(np.asarray(g[1]), np.asarray(g[0]), atol=1e-5)


def test_query_chunking_matches_one_pass(monkeypatch):
    q, k, v, mask = _qkv(t=100)
    ref = A.dot_product_attention(q, k, v, mask=mask[:, None, None, :], is_causal=True)
    monkeypatch.setattr(A, "QUERY_CHUNK", 16)  # 100 queries -> 7 checkpointed chunks
    out = A.dot_product_attention(q, k, v, mask=mask[:, None, None, :], is_causal=True)
    np.testing.assert_allclose(np.asarray(out)[np.asarray(mask)],
                               np.asarray(ref)[np.asarray(mask)], atol=1e-6)


def test_model_logits_with_splash_equal_xla():
    c = tiny()
    ids = np.asarray([[5, 6, 7, c.vision_start_token_id] + [c.image_token_id] * 4 +
                      [c.vision_end_token_id, 8, 9]])
    rng = np.random.default_rng(0)
    pv = rng.standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    grid = np.asarray([[1, 4, 4]])
    ref = np.asarray(init_model(c, seed=1)(ids, pixel_values=pv, image_grid_thw=grid))
    m = init_model(c.replace(attention_impl="splash_interpret"), seed=1)
    out = np.asarray(m(ids, pixel_values=pv, image_grid_thw=grid))
    assert np.abs(out - ref).max() <= 1e-5


def _plain_attention(q, k, v, mask, is_causal):
    """Reference: GQA attention by repetition of the kv heads, jnp.where masking, autodiff."""
    b, t, n, d = q.shape
    g = n // k.shape[2]
    kk, vv = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, kk) * d ** -0.5
    keep = jnp.ones((t, k.shape[1]), bool)
    if is_causal:
        keep = jnp.tril(keep)
    keep = keep[None, None] & mask
    s = jnp.where(keep, s, -1e30)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), vv)


@pytest.mark.parametrize("is_causal", [True, False])
def test_xla_attention_gradients_match_autodiff(is_causal):
    """The XLA path's hand-written backward (probabilities recomputed from the saved row
    log-sum-exp) against autodiff of a plain implementation, with GQA and left padding."""
    q, k, v, mask = _qkv()
    m4 = mask[:, None, None, :]
    valid = np.asarray(mask)[:, :, None, None]
    r = jnp.asarray(np.random.default_rng(5).standard_normal(q.shape), jnp.float32) * valid

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * r)

    ours = jax.grad(lambda *a: loss(lambda q, k, v: A.dot_product_attention(
        q, k, v, mask=m4, is_causal=is_causal), *a), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(lambda *a: loss(lambda q, k, v: _plain_attention(
        q, k, v, m4, is_causal), *a), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, ref):
        assert float(jnp.abs(b).max()) > 1e-3, name
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, err_msg=name)


def test_causal_blocks_match_one_pass(monkeypatch):
    """Causal self-attention split into query blocks against their key prefixes: values and
    gradients equal the single pass (which runs when the blocks are switched off)."""
    q, k, v, mask = _qkv(t=300)  # 4 blocks of 75 queries
    m4 = mask[:, None, None, :]
    valid = np.asarray(mask)

    def run(q, k, v):
        return A.dot_product_attention(q, k, v, mask=m4, is_causal=True)

    def loss(q, k, v):
        return jnp.sum(run(q, k, v) * jnp.asarray(valid)[:, :, None, None])

    out, grads = run(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    monkeypatch.setattr(A, "CAUSAL_BLOCKS", 10**6)  # too many blocks for 300 queries: one pass
    ref, ref_grads = run(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=1e-6)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
