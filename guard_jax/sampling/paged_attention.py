"""Decode attention over a paged KV cache: one query per decode slot, its keys found through a
page table (docs/sampling.md#engines).

Layout (one layer): pages `[kv_heads, pages, page, head_dim]`; `table` [S, W] int32 lists the
pages of slot s in order (its prompt's pages, shared by the prompt's G samples, then its own
pages); `lengths` [S] the keys slot s attends to (positions 0 .. length-1 of that list; 0 for an
idle slot). Two implementations of the same function:
- `xla` (every backend, the reference): block by block (`pages_per_block` pages) with an online
  softmax in float32, up to the longest slot's length only, so a step reads the live prefix and
  never the unused tail of the pages;
- `pallas`: the TPU paged-attention kernel that ships with jax
  (`jax.experimental.pallas.ops.tpu.paged_attention`), under `shard_map` on a mesh (rows over the
  batch axes, KV heads over `tensor`; the pages are replicated over the batch axes);
  `pallas_interpret` runs that kernel in TPU interpret mode on any backend, for tests.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # the static path's masked score
KERNELS = ("xla", "pallas", "pallas_interpret")


def kernel_fits(head_dim: int, page: int) -> str | None:
    """Why the Pallas kernel cannot take these shapes (None when it can): Mosaic tiles the
    last two dimensions of a block by (8, 128)."""
    if head_dim % 128:
        return f"head_dim {head_dim} is not a multiple of 128"
    if page % 16:
        return f"a page of {page} keys is not a multiple of 16"
    return None


def kernel_for(attention_impl: str, head_dim: int, page: int) -> str:
    """The decode kernel that goes with a resolved model attention implementation: the Pallas
    kernel where the model runs the Pallas splash kernel (a TPU) and the shapes fit it, else
    XLA."""
    pallas = {"splash": "pallas", "splash_interpret": "pallas_interpret"}.get(attention_impl)
    return pallas if pallas and kernel_fits(head_dim, page) is None else "xla"


def paged_attention(q, k_pages, v_pages, lengths, table, *, kernel: str = "xla",
                    pages_per_block: int = 1):
    """q [S, H, D] (rotated); k_pages, v_pages [K, pages, page, D]; lengths [S] int32;
    table [S, W] int32 with W a multiple of pages_per_block -> [S, H, D] float32."""
    if kernel not in KERNELS:
        raise ValueError(f"decode kernel {kernel!r}; choose one of {KERNELS}")
    if table.shape[1] % pages_per_block:
        raise ValueError(f"a page table of width {table.shape[1]} does not split into blocks "
                         f"of {pages_per_block} pages")
    if kernel == "xla":
        return _xla(q, k_pages, v_pages, lengths, table, pages_per_block)
    return _pallas_on_mesh(q, k_pages, v_pages, lengths, table, pages_per_block,
                           interpret=kernel == "pallas_interpret")


def _update(carry, qh, keys, values, valid, scale):
    """One block of the online softmax. qh [S, K, G, D]; keys, values [K, S, T, D];
    valid [S, T] bool."""
    top, total, acc = carry
    scores = jnp.einsum("skgd,kstd->skgt", qh, keys, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(valid[:, None, None, :], scores, _NEG)
    new_top = jnp.maximum(top, jnp.max(scores, axis=-1))
    e = jnp.exp(scores - new_top[..., None])
    alpha = jnp.exp(top - new_top)
    total = total * alpha + jnp.sum(e, axis=-1)
    acc = acc * alpha[..., None] + jnp.einsum("skgt,kstd->skgd", e.astype(values.dtype), values,
                                              preferred_element_type=jnp.float32)
    return new_top, total, acc


def _xla(q, k_pages, v_pages, lengths, table, ppb):
    s, h, d = q.shape
    kvh, _, page, _ = k_pages.shape
    g = h // kvh
    qh = q.reshape(s, kvh, g, d)
    keys_per_block = ppb * page
    init = (jnp.full((s, kvh, g), -jnp.inf, jnp.float32), jnp.zeros((s, kvh, g), jnp.float32),
            jnp.zeros((s, kvh, g, d), jnp.float32))

    def gather(pages, ids):  # [K, pages, page, D] x [S, ppb] -> [K, S, ppb * page, D]
        return pages[:, ids].reshape(kvh, s, keys_per_block, d).astype(q.dtype)

    def block(b, carry):
        ids = jax.lax.dynamic_slice_in_dim(table, b * ppb, ppb, axis=1)
        valid = (b * keys_per_block + jnp.arange(keys_per_block))[None, :] < lengths[:, None]
        return _update(carry, qh, gather(k_pages, ids), gather(v_pages, ids), valid, d ** -0.5)

    # the live prefix: blocks up to the longest length, a bound known only at run time
    live = (jnp.max(lengths) + keys_per_block - 1) // keys_per_block
    top, total, acc = jax.lax.fori_loop(0, live, block, init)
    return (acc / total[..., None]).reshape(s, h, d)


def _pallas(q, k_pages, v_pages, lengths, table, ppb, interpret):
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as kernel
    mode = pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext()
    scaled = (q.astype(jnp.float32) * q.shape[-1] ** -0.5).astype(q.dtype)  # kernel: no scale
    with mode:
        out = kernel(scaled, k_pages.astype(q.dtype), v_pages.astype(q.dtype), lengths, table,
                     pages_per_compute_block=ppb)
    return out.astype(jnp.float32)


def _pallas_on_mesh(q, k_pages, v_pages, lengths, table, ppb, *, interpret):
    """The Mosaic kernel cannot be partitioned by the compiler: on a mesh it runs under
    `shard_map`, slots over the batch axes and KV heads over `tensor` where the sizes divide."""
    from guard_jax.sharding import current_mesh, mesh_axes_of
    mesh = current_mesh()
    if mesh is None or mesh.size == 1:
        return _pallas(q, k_pages, v_pages, lengths, table, ppb, interpret)
    rows = mesh_axes_of("act_batch", q.shape[0])
    heads = mesh_axes_of("act_heads", q.shape[1])
    kv_heads = mesh_axes_of("act_kv_heads", k_pages.shape[0])
    if heads != kv_heads:
        heads = kv_heads = None
    qs = P(rows, heads, None)

    def local(q, kp, vp, lengths, table):
        return _pallas(q, kp, vp, lengths, table, ppb, interpret)

    return jax.shard_map(local, mesh=mesh, in_specs=(qs, P(kv_heads), P(kv_heads), P(rows),
                                                     P(rows, None)),
                         out_specs=qs, check_vma=False)(q, k_pages, v_pages, lengths, table)


def pad_to_block(n: int, block: int) -> int:
    """n rounded up to a multiple of block (at least one block)."""
    return max(1, -(-n // block)) * block


__all__ = ["paged_attention", "kernel_for", "kernel_fits", "pad_to_block", "KERNELS"]
