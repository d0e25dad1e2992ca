"""Dot-product attention with a kernel picked by backend.

`xla` is the reference path (scores and softmax in float32, as transformers' eager attention);
`cudnn` is cuDNN flash attention through `jax.nn.dot_product_attention` on GPUs. `auto` picks
cuDNN on a GPU for half-precision inputs and XLA elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def resolve_impl(impl: str, dtype) -> str:
    if impl != "auto":
        return impl
    if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return "xla"


def dot_product_attention(q, k, v, *, mask=None, is_causal=False, impl="xla"):
    """q: [B, T, N, D]; k, v: [B, S, K, D] with N % K == 0 (GQA); mask: bool, broadcastable to
    [B, 1, T, S] (True = attend). Returns [B, T, N, D] in q's dtype."""
    impl = resolve_impl(impl, q.dtype)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, scale=q.shape[-1] ** -0.5,
            implementation="cudnn")
    if impl != "xla":
        raise ValueError(f"unknown attention implementation {impl!r}")
    b, t, n, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = n // kv
    qg = q.reshape(b, t, kv, g, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    full = None
    if is_causal:
        full = jnp.tril(jnp.ones((t, s), bool), k=s - t)[None, None]
    if mask is not None:
        m = jnp.broadcast_to(mask, (b, 1, t, s))
        full = m if full is None else (full & m)
    if full is not None:
        scores = jnp.where(full[:, :, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, t, n, d).astype(q.dtype)
