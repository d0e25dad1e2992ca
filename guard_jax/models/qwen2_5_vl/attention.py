"""Dot-product attention with a kernel picked by backend.

`xla` is the reference path (scores and softmax in float32, as transformers' eager attention);
long query sequences are processed in checkpointed query chunks, so memory stays
O(chunk x keys) in the forward and the backward pass. `cudnn` is cuDNN flash attention through
`jax.nn.dot_product_attention` on GPUs; `splash` is the Pallas splash-attention kernel on TPUs
(`splash_interpret` runs it in interpret mode anywhere, for tests). `auto` picks cuDNN on a GPU
for half-precision inputs, splash on a TPU, and XLA elsewhere; the platform is that of the mesh
the step is traced for (`guard_jax.sharding.use_rules`), so a step compiled ahead of time for a
TPU topology on a CPU host picks the TPU kernel.

Mosaic kernels cannot be partitioned by the compiler, so on a mesh the splash kernel runs
inside `shard_map`: rows split like the activations' batch (data x fsdp), heads like the
attention heads (tensor); each device runs the single-device kernel on its block. Decode steps
(one query against the cache) stay on XLA on every backend. See docs/tpu.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)
QUERY_CHUNK = 1024  # queries per chunk on the XLA path, for sequences longer than 2 chunks
CAUSAL_BLOCKS = 4  # causal self-attention of >= 256 queries: query blocks, each against its prefix


def _platform() -> str:
    """The platform the current trace is for: the mesh's devices when tracing under
    `use_rules` (ahead-of-time compiles for other platforms), else JAX's default backend."""
    from guard_jax.sharding import current_mesh
    mesh = current_mesh()
    if mesh is not None:
        return mesh.devices.flat[0].platform
    return jax.default_backend()


def resolve_impl(impl: str, dtype) -> str:
    if impl != "auto":
        return impl
    backend = _platform()
    if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if backend == "tpu":
        return "splash"
    return "xla"


def dot_product_attention(q, k, v, *, mask=None, is_causal=False, kv_lengths=None, impl="xla",
                          batch_sharded=True):
    """q: [B, T, N, D]; k, v: [B, S, K, D] with N % K == 0 (GQA).

    mask: bool broadcastable to [B, 1, 1, S] (True = attend; a key-padding mask);
    kv_lengths: [B] valid keys (and queries) per row, valid entries first: the same information
    as a right-padding mask, in the form cuDNN takes. `batch_sharded=False` says B is not the
    activations' batch (vision windows; their batch is a vmapped axis). Returns [B, T, N, D] in
    q's dtype."""
    impl = resolve_impl(impl, q.dtype)
    if impl == "cudnn":
        kw = {}
        if kv_lengths is not None:
            kw = dict(query_seq_lengths=kv_lengths, key_value_seq_lengths=kv_lengths)
            mask = None
        elif mask is not None:  # cuDNN takes a full [B, 1, T, S] mask (as a bias)
            mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, is_causal=is_causal, scale=q.shape[-1] ** -0.5,
            implementation="cudnn", **kw)
    if impl in ("splash", "splash_interpret"):
        if q.shape[1] != k.shape[1]:  # decode steps (queries shorter than keys) stay on XLA
            return dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                         kv_lengths=kv_lengths, impl="xla")
        return _splash_on_mesh(q, k, v, mask, is_causal, kv_lengths,
                               interpret=impl == "splash_interpret", batch_sharded=batch_sharded)
    if impl != "xla":
        raise ValueError(f"unknown attention implementation {impl!r}")
    if kv_lengths is not None:
        valid = jnp.arange(k.shape[1])[None, :] < kv_lengths[:, None]
        mask = valid[:, None, None, :] if mask is None else (mask & valid[:, None, None, :])
    t = q.shape[1]
    if t <= 2 * QUERY_CHUNK:
        if is_causal and t == k.shape[1] and t >= CAUSAL_BLOCKS * 64:
            return _causal_blocks(q, k, v, mask)
        return _xla_attention(q, k, v, mask, is_causal, 0)
    n_chunks = -(-t // QUERY_CHUNK)
    pad = n_chunks * QUERY_CHUNK - t
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    qc = jnp.moveaxis(qp.reshape(q.shape[0], n_chunks, QUERY_CHUNK, *q.shape[2:]), 1, 0)

    @jax.checkpoint
    def chunk(args):
        i, qi = args
        return _xla_attention(qi, k, v, mask, is_causal, i * QUERY_CHUNK, total_q=t)

    out = jax.lax.map(chunk, (jnp.arange(n_chunks), qc))
    out = jnp.moveaxis(out, 0, 1).reshape(q.shape[0], n_chunks * QUERY_CHUNK, *q.shape[2:])
    return out[:, :t]


def _causal_blocks(q, k, v, mask):
    """Causal self-attention as CAUSAL_BLOCKS query blocks, block i attending to the keys up to
    its own end: the score matrices skip the fully masked upper blocks (10/16 of the full work
    with 4 blocks), as flash attention kernels do."""
    t = q.shape[1]
    size = -(-t // CAUSAL_BLOCKS)
    outs = []
    for start in range(0, t, size):
        end = min(start + size, t)
        m = None if mask is None else mask[..., :end]
        outs.append(_xla_attention(q[:, start:end], k[:, :end], v[:, :end], m, True, start,
                                   total_q=end))
    return jnp.concatenate(outs, axis=1)


SPLASH_BLOCK = 128


def _splash_on_mesh(q, k, v, mask, is_causal, kv_lengths, *, interpret, batch_sharded):
    """The splash kernel under `shard_map` when traced on a mesh (the compiler cannot partition
    a Mosaic kernel): rows over the activations' batch axes, heads over the tensor axis, each
    where the size divides (else that dimension is replicated). Grouped-query attention stays
    consistent because q heads and kv heads split into the same number of contiguous blocks."""
    from guard_jax.sharding import current_mesh, mesh_axes_of
    mesh = current_mesh()
    if mesh is None or mesh.size == 1:
        return _splash(q, k, v, mask, is_causal, kv_lengths, interpret=interpret)
    b, t, n, _ = q.shape
    rows = mesh_axes_of("act_batch", b) if batch_sharded else None
    heads, kv_heads = mesh_axes_of("act_heads", n), mesh_axes_of("act_kv_heads", k.shape[2])
    if heads != kv_heads:
        heads = kv_heads = None
    valid = jnp.ones((b, t), bool)
    if mask is not None:
        valid = valid & jnp.broadcast_to(mask, (b, 1, 1, t))[:, 0, 0, :]
    if kv_lengths is not None:
        valid = valid & (jnp.arange(t)[None, :] < kv_lengths[:, None])
    qs = P(rows, None, heads, None)
    ks = P(rows, None, kv_heads, None)

    def local(q, k, v, valid):
        return _splash(q, k, v, valid[:, None, None, :], is_causal, None, interpret=interpret)

    return jax.shard_map(local, mesh=mesh, in_specs=(qs, ks, ks, P(rows, None)), out_specs=qs,
                         check_vma=False)(q, k, v, valid)


def _splash(q, k, v, mask, is_causal, kv_lengths, *, interpret=False):
    """TPU splash attention (Pallas). Padding becomes segment ids (valid 1, padding 0); the
    sequence is padded to a multiple of the block size; GQA runs the MQA kernel per KV head.
    `interpret=True` runs the same kernel on any backend (tests)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, t, n, d = q.shape
    kvh = k.shape[2]
    g = n // kvh
    tp = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK
    valid = jnp.ones((b, t), bool)
    if mask is not None:
        valid = valid & jnp.broadcast_to(mask, (b, 1, 1, t))[:, 0, 0, :]
    if kv_lengths is not None:
        valid = valid & (jnp.arange(t)[None, :] < kv_lengths[:, None])
    seg = jnp.pad(valid.astype(jnp.int32), ((0, 0), (0, tp - t)))

    def pad(x):
        return jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0)))

    qh = jnp.transpose(pad(q * (d ** -0.5)), (0, 2, 1, 3)).reshape(b, kvh, g, tp, d)
    kh = jnp.transpose(pad(k), (0, 2, 1, 3))  # [b, kvh, tp, d]
    vh = jnp.transpose(pad(v), (0, 2, 1, 3))
    shape = (tp, tp)
    head_mask = sm.CausalMask(shape) if is_causal else sm.FullMask(shape)
    blocks = sk.BlockSizes(block_q=SPLASH_BLOCK, block_kv=SPLASH_BLOCK,
                           block_kv_compute=SPLASH_BLOCK, block_q_dkv=SPLASH_BLOCK,
                           block_kv_dkv=SPLASH_BLOCK, block_kv_dkv_compute=SPLASH_BLOCK,
                           block_q_dq=SPLASH_BLOCK, block_kv_dq=SPLASH_BLOCK)
    kernel = sk.make_splash_mqa_single_device(sm.MultiHeadMask([head_mask] * g),
                                              block_sizes=blocks, interpret=interpret)

    def one(qb, kb, vb, sb):  # one sample: qb [kvh, g, tp, d], kb/vb [kvh, tp, d]
        ids = sk.SegmentIds(q=sb, kv=sb)
        return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=ids))(qb, kb, vb)

    out = jax.vmap(one)(qh, kh, vh, seg)  # [b, kvh, g, tp, d]
    out = out.reshape(b, n, tp, d)[:, :, :t]
    return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)


def _xla_attention(q, k, v, mask, is_causal, q_offset, total_q=None):
    """Scores and softmax in float32. Heads are moved in front of the tokens first (a copy of
    q, k and v, which are small) so that both einsums are plain batched matmuls with the
    contraction on the minor axis and [.., T, S] outputs in row-major order: no transposes of
    the T x S score matrices, which on XLA:CPU cost as much as the matmuls themselves. Masks
    enter as an additive bias built from [T, S] and [B, S] pieces (never a [B, H, T, S] mask)."""
    b, t, n, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = n // kv
    qh = jnp.transpose(q.reshape(b, t, kv, g, d), (0, 2, 3, 1, 4))  # [B, K, G, T, D]
    kh = jnp.transpose(k, (0, 2, 1, 3))  # [B, K, S, D]
    vh = jnp.transpose(v, (0, 2, 1, 3))
    keep = None
    if is_causal:
        # queries are the last `total_q` positions of the keys (decode appends at the end)
        rows = q_offset + jnp.arange(t)[:, None] + (s - (total_q or t))
        keep = (jnp.arange(s)[None, :] <= rows)[None, None, None]  # [1, 1, 1, T, S]
    if mask is not None:
        m = jnp.broadcast_to(mask, (b, 1, 1, s))[:, :, None]  # [B, 1, 1, 1, S]
        keep = m if keep is None else (keep & m)
    # an additive bias rather than a select, so no masking pass over the scores' gradient
    bias = None if keep is None else jnp.where(keep, 0.0, _NEG)
    out = _attention_core(qh, kh, vh, bias)
    out = jnp.transpose(out, (0, 3, 1, 2, 4))  # [B, T, K, G, D]
    return out.reshape(b, t, n, d).astype(q.dtype)


def _scores(qh, kh, bias):
    scores = jnp.einsum("bkgtd,bksd->bkgts", qh, kh, preferred_element_type=jnp.float32)
    scores = scores * (qh.shape[-1] ** -0.5)
    return scores if bias is None else scores + bias


@jax.custom_vjp
def _attention_core(qh, kh, vh, bias):
    """softmax(q k^T / sqrt(d) + bias) v for heads-first q [B, K, G, T, D], k and v [B, K, S, D];
    float32 out. The backward pass (below) keeps only the inputs, the output and the row
    log-sum-exp, and recomputes the probabilities, as flash attention does: autodiff would
    keep the [.., T, S] probabilities of every layer for the backward pass."""
    return _attention_fwd(qh, kh, vh, bias)[0]


def _attention_fwd(qh, kh, vh, bias):
    scores = _scores(qh, kh, bias)
    top = jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(scores - top)
    total = jnp.sum(e, axis=-1, keepdims=True)
    probs = (e / total).astype(vh.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, vh, preferred_element_type=jnp.float32)
    lse = top + jnp.log(total)
    return out, (qh, kh, vh, bias, out, lse)


def _attention_bwd(res, d_out):
    qh, kh, vh, bias, out, lse = res
    probs = jnp.exp(_scores(qh, kh, bias) - lse)
    d_v = jnp.einsum("bkgts,bkgtd->bksd", probs.astype(vh.dtype), d_out.astype(vh.dtype),
                     preferred_element_type=jnp.float32)
    d_p = jnp.einsum("bkgtd,bksd->bkgts", d_out.astype(vh.dtype), vh,
                     preferred_element_type=jnp.float32)
    # softmax backward: d_s = p (d_p - sum_s p d_p), and sum_s p d_p = sum_d out d_out
    delta = jnp.sum(out * d_out, axis=-1, keepdims=True)
    d_s = (probs * (d_p - delta) * (qh.shape[-1] ** -0.5)).astype(qh.dtype)
    d_q = jnp.einsum("bkgts,bksd->bkgtd", d_s, kh, preferred_element_type=jnp.float32)
    d_k = jnp.einsum("bkgts,bkgtd->bksd", d_s, qh, preferred_element_type=jnp.float32)
    return (d_q.astype(qh.dtype), d_k.astype(kh.dtype), d_v.astype(vh.dtype),
            None if bias is None else jnp.zeros_like(bias))


_attention_core.defvjp(_attention_fwd, _attention_bwd)


def grouped_attention(q, k, v, idx, *, impl="xla"):
    """Attention within groups of tokens given by gather indices.

    q, k, v: [N, H, D]; idx: [G, S] token indices of each group, valid entries first, padded
    with N. Every token belongs to at most one group; tokens in none get zeros."""
    n, h, d = q.shape

    def gather(t):
        return jnp.concatenate([t, jnp.zeros((1, h, d), t.dtype)], axis=0)[idx]

    lengths = jnp.sum(idx < n, axis=-1).astype(jnp.int32)
    out = dot_product_attention(gather(q), gather(k), gather(v), kv_lengths=lengths, impl=impl,
                                batch_sharded=False)
    flat = out.reshape(-1, h, d)
    return jnp.zeros((n + 1, h, d), out.dtype).at[idx.reshape(-1)].set(flat)[:n]
