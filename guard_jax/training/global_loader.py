"""One loader read by every process of a job: each process reads its share, and every batch is
gathered so that all processes hold the same global batch (docs/grpo-multihost.md, "Which
prompts a step trains on"; SFT feeds its micro-batches the same way, docs/sft.md).

Process k of n reads elements k, k + n, k + 2n, ... of the loader's global sequence (grain
sharding by process), batch_size / n rows a batch. The gathered batch has its rows in the order
one process reading the whole sequence would see them (row i x n + k is process k's row i), so a
run trains on the same data in the same order whatever the process count. Arrays whose trailing
dimensions differ between processes (a share that picked a shorter length bucket) are first
right-padded to the largest, which is the bucket one process would have picked for the whole
batch.

The state is every process's loader position, so a checkpoint covers every share, and a run
resumes on the same or another process count (`shard_state`).
"""

from __future__ import annotations

import numpy as np


class GlobalLoader:
    """`make(index, count)` builds process `index`'s share of a loader sharded over `count`
    processes; iterating yields global host batches (the same on every process). `pad_values`:
    the value a field is padded with (default 0), e.g. {"input_ids": pad_id}."""

    def __init__(self, make, process_count: int, process_index: int, *, pad_values=None):
        self.n, self.k = process_count, process_index
        self.pad_values = dict(pad_values or {})
        self.it = make(process_index, process_count)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        from guard_jax.distributed import allgather_interleaved
        batch = next(self.it)
        if self.n == 1:
            return batch
        return allgather_interleaved(self._pad_to_common_shapes(batch))

    def _pad_to_common_shapes(self, batch: dict) -> dict:
        from guard_jax.distributed import allgather_json
        arrays = {k: v for k, v in batch.items()
                  if isinstance(v, np.ndarray) and v.ndim > 1 and v.dtype.kind in "biuf"}
        shapes = allgather_json({k: list(v.shape[1:]) for k, v in arrays.items()})
        out = dict(batch)
        for k, v in arrays.items():
            target = np.max([s[k] for s in shapes], axis=0)
            pad = [(0, 0)] + [(0, int(t) - d) for t, d in zip(target, v.shape[1:])]
            if any(after for _, after in pad):
                out[k] = np.pad(v, pad, constant_values=self.pad_values.get(k, 0))
        return out

    def get_state(self):
        """One process: the loader's own state. Several: {"process_count": n, "shards": [the
        state of each process]} (a collective: every process calls it)."""
        from guard_jax.distributed import allgather_json
        from guard_jax.training.checkpoint import _encode_data_state
        if self.n == 1:
            return self.it.get_state()
        return {"process_count": self.n,
                "shards": allgather_json(_encode_data_state(self.it.get_state()))}

    def set_state(self, state) -> None:
        from guard_jax.training.checkpoint import _decode_data_state
        self.it.set_state(_decode_data_state(shard_state(state, self.n, self.k)))

    def close(self):
        if hasattr(self.it, "close"):
            self.it.close()


def shard_state(state, process_count: int, process_index: int):
    """Process `process_index`'s loader state of `process_count` from a saved state (see
    GlobalLoader.get_state). The same count takes its own share's position; another count
    needs every share at the same position j (no record skipped on one share only), i.e. the
    first n x j elements of the global sequence read, which restarts each of m processes at
    n x j / m."""
    from guard_jax.errors import InputError
    if isinstance(state, dict) and "shards" in state:
        shards = state["shards"]
    else:
        shards = [state]
    if len(shards) == process_count:
        return shards[process_index]
    positions = {s.get("next_index") if isinstance(s, dict) and set(s) == {"next_index"}
                 else None for s in shards}
    read = len(shards) * next(iter(positions)) if len(positions) == 1 else None
    if None in positions or read is None or read % process_count:
        raise InputError(
            f"the checkpoint's data position was written by {len(shards)} processes "
            f"(positions {[s for s in shards]}) and cannot be split over {process_count}: "
            f"resume on {len(shards)} processes (the shares read different numbers of "
            "records, e.g. after skipped records, or the prompts read do not divide)")
    return {"next_index": read // process_count}
