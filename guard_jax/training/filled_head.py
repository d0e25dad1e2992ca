"""GRPO's output projection over the filled completion positions only.

A micro-batch's completions are padded to `grpo.max_new_tokens`, and with guard-like lengths
(many short verdicts, a long tail of analyses) most positions are padding. The projection onto
the vocabulary is most of a small model's update (151,936 columns against a hidden size of a
few hundred), so computing it where the mask is 0 wastes most of the step. With
`grpo.compact_head`, the host lists each row shard's filled positions (`filled_index`), the
jitted forward gathers those hidden states, runs the fused head and log-softmax on them and
scatters log p and entropy back to `[rows, N]` (zeros at padding, which the losses mask).

Rows split into `shards` contiguous blocks, as the batch's sharding splits them over data x
fsdp (`sharding.row_shards`), and each block gathers only its own positions: the gather and
the scatter stay on the device that holds the rows. The per-shard count is rounded up to one
of 8 sizes (`index_size`), so a run compiles at most 8 variants of each program.
See docs/grpo.md#output-projection-over-filled-positions.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

SIZES = 8  # per-shard counts round up to a multiple of 1/SIZES of the shard's positions


def index_size(count: int, positions: int, sizes: int = SIZES) -> int:
    """`count` filled positions of a shard's `positions`, rounded up to a multiple of
    ceil(positions / sizes) (at least 1, at most `positions`)."""
    step = -(-positions // sizes)
    return int(min(positions, max(1, -(-count // step)) * step))


def filled_index(mask: np.ndarray, shards: int, size: int | None = None) -> np.ndarray:
    """[shards, K] int32: for each contiguous block of rows, the flat positions
    (row in block x N + t) where `mask` [rows, N] is non-zero, in order, padded with the
    sentinel rows_per_block x N (out of range: gathers clip it, scatters drop it). K is
    `size`, or index_size of the largest block's count."""
    mask = np.asarray(mask) != 0
    rows, n = mask.shape
    if rows % shards:
        raise ValueError(f"{rows} rows do not split into {shards} row shards")
    blocks = mask.reshape(shards, -1)
    positions = blocks.shape[1]
    counts = blocks.sum(1)
    k = index_size(int(counts.max()), positions) if size is None else size
    if counts.max() > k:
        raise ValueError(f"index size {k} < {counts.max()} filled positions in a row shard")
    out = np.full((shards, k), positions, np.int32)
    for s in range(shards):
        where = np.flatnonzero(blocks[s])
        out[s, :where.size] = where
    return out


def pass_indices(mask: np.ndarray, slices, shards: int) -> list[np.ndarray]:
    """filled_index of each micro-batch (`slices` of the rows of the host `mask` [R, N]), all
    of the size of the pass's fullest row shard, so that one program serves the whole pass.
    A micro-batch whose rows do not split into `shards` is one block."""
    blocks = [np.asarray(mask[rs]) != 0 for rs in slices]
    split = [shards if len(b) % shards == 0 else 1 for b in blocks]
    fullest = max(int(b.reshape(s, -1).sum(1).max()) for b, s in zip(blocks, split))
    size = index_size(fullest, blocks[0].size // split[0])
    return [filled_index(b, s, size) for b, s in zip(blocks, split)]


def gather_filled(h, tokens, index):
    """h [B, N, E], tokens [B, N] -> ([S, K, E], [S, K]) at `index` [S, K] (filled_index)."""
    s = index.shape[0]
    hs = h.reshape(s, -1, h.shape[-1])
    safe = jnp.minimum(index, hs.shape[1] - 1)
    return (jnp.take_along_axis(hs, safe[..., None], axis=1),
            jnp.take_along_axis(tokens.reshape(s, -1), safe, axis=1))


def scatter_filled(values, index, shape):
    """values [S, K] at `index` back into zeros of `shape` [B, N] (sentinels dropped)."""
    s = index.shape[0]
    out = jnp.zeros((s, shape[0] * shape[1] // s), values.dtype)
    out = out.at[jnp.arange(s)[:, None], index].set(values, mode="drop")
    return out.reshape(shape)
