"""Loader batches -> model batches: the host-side index work the model needs.

The data pipeline yields model-agnostic arrays (token ids, masks, padded patches, image grids);
this adds M-RoPE position ids, the vision tower's window / frame gather indices and next-token
labels, with static shapes (window and frame counts rounded up to buckets, so a run compiles a
handful of step variants at most).
"""

from __future__ import annotations

import numpy as np

from guard_jax.models.qwen2_5_vl import positions as pos_lib
from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig

WINDOW_BUCKET = 16  # window rows per sample are rounded up to a multiple of this


def _round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def to_model_batch(batch: dict, config: Qwen25VLConfig) -> dict[str, np.ndarray]:
    """`batch` from data_pipeline.loader (input_ids, attention_mask, loss_mask, pixel_values
    [B, P, 1176], image_grid_thw [B, max_images, 3], num_images [B]) -> the keyword arguments
    of `Qwen25VL.forward` plus `labels` and `loss_mask` for `next_token_loss`."""
    ids = np.asarray(batch["input_ids"])
    mask = np.asarray(batch["attention_mask"])
    b, length = ids.shape
    grids_per = [np.asarray(batch["image_grid_thw"][i][:int(batch["num_images"][i])])
                 for i in range(b)]
    flat_grids = np.concatenate([g for g in grids_per if len(g)] or [np.zeros((0, 3), int)])
    position_ids, _ = pos_lib.get_rope_index(ids, flat_grids, mask, config)
    out = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
           "position_ids": position_ids,
           # logits at i predict token i+1: shift the labels and the loss mask left
           "labels": np.concatenate([ids[:, 1:], np.zeros((b, 1), ids.dtype)], 1).astype(np.int32),
           "loss_mask": np.concatenate([np.asarray(batch["loss_mask"])[:, 1:],
                                        np.zeros((b, 1), np.int32)], 1).astype(np.int32)}
    if len(flat_grids):
        pv = np.asarray(batch["pixel_values"])
        patches = pv.shape[1]
        per_sample = []
        start = 0
        for g in grids_per:
            per_sample.append(list(range(start, start + len(g))))
            start += len(g)
        # flatten the real patches in grid order (vision_batch re-splits them per sample)
        rows = [pv[i, :int(np.prod(g, axis=1).sum())] for i, g in enumerate(grids_per)]
        flat_pv = np.concatenate(rows) if rows else pv.reshape(-1, pv.shape[-1])[:0]
        max_windows = 0
        for g in grids_per:
            if len(g):
                n_win = pos_lib.vision_attention_index(g, config)["win_idx"].shape[0]
                max_windows = max(max_windows, n_win)
        frames = max(1, max(int(g[:, 0].sum()) if len(g) else 0 for g in grids_per))
        out.update(pos_lib.vision_batch(
            flat_pv, flat_grids, per_sample, config, patches=patches,
            windows=_round_up(max_windows, WINDOW_BUCKET), frames=frames,
            frame_patches=patches))
    return out
