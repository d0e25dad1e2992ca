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


def _per_sample(batch: dict, grid_key: str, count_key: str, b: int) -> list[np.ndarray]:
    if grid_key not in batch:
        return [np.zeros((0, 3), np.int64)] * b
    return [np.asarray(batch[grid_key][i][:int(batch[count_key][i])]).reshape(-1, 3)
            for i in range(b)]


def _flat(rows: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([g for g in rows if len(g)] or [np.zeros((0, 3), np.int64)])


def to_model_batch(batch: dict, config: Qwen25VLConfig) -> dict[str, np.ndarray]:
    """`batch` from data_pipeline.loader (input_ids, attention_mask, loss_mask, pixel_values
    [B, P, 1176], image_grid_thw [B, max_images, 3], num_images [B]; with videos also
    pixel_values_videos [B, Pv, 1176], video_grid_thw [B, max_videos, 3], num_videos [B],
    second_per_grid_ts [B, max_videos]) -> the keyword arguments of `Qwen25VL.forward` plus
    `labels` and `loss_mask` for `next_token_loss`. Each sample's vision row holds its images'
    patches, then its videos' (P + Pv rows; docs/model.md#video)."""
    ids = np.asarray(batch["input_ids"])
    mask = np.asarray(batch["attention_mask"])
    b, length = ids.shape
    grids_per = _per_sample(batch, "image_grid_thw", "num_images", b)
    vgrids_per = _per_sample(batch, "video_grid_thw", "num_videos", b)
    flat_grids, flat_vgrids = _flat(grids_per), _flat(vgrids_per)
    video_kw = {}
    if len(flat_vgrids):
        secs = np.concatenate([np.asarray(batch["second_per_grid_ts"][i][:len(g)])
                               for i, g in enumerate(vgrids_per)])
        video_kw = {"video_grid_thw": flat_vgrids, "second_per_grid_ts": secs}
    position_ids, _ = pos_lib.get_rope_index(ids, flat_grids, mask, config, **video_kw)
    out = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
           "position_ids": position_ids,
           # logits at i predict token i+1: shift the labels and the loss mask left
           "labels": np.concatenate([ids[:, 1:], np.zeros((b, 1), ids.dtype)], 1).astype(np.int32),
           "loss_mask": np.concatenate([np.asarray(batch["loss_mask"])[:, 1:],
                                        np.zeros((b, 1), np.int32)], 1).astype(np.int32)}
    if len(flat_grids) or len(flat_vgrids):
        pv = np.asarray(batch["pixel_values"])
        patches = pv.shape[1]
        flat_pv, per_sample = _rows(pv, grids_per)
        if "pixel_values_videos" in batch:
            pvv = np.asarray(batch["pixel_values_videos"])
            patches += pvv.shape[1]
            flat_pvv, per_video = _rows(pvv, vgrids_per)
            flat_pv, flat_grids, per_sample = pos_lib.join_images_and_videos(
                flat_pv, flat_grids, per_sample, flat_pvv, flat_vgrids, per_video)
        max_windows, frames = 0, 1
        for items in per_sample:
            if items:
                g = flat_grids[items]
                n_win = pos_lib.vision_attention_index(g, config)["win_idx"].shape[0]
                max_windows = max(max_windows, n_win)
                frames = max(frames, int(g[:, 0].sum()))
        out.update(pos_lib.vision_batch(
            flat_pv, flat_grids, per_sample, config, patches=patches,
            windows=_round_up(max_windows, WINDOW_BUCKET), frames=frames,
            frame_patches=patches))
    return out


def _rows(pv: np.ndarray, grids_per: list[np.ndarray]):
    """The real patch rows of every sample in grid order, and which grids each sample owns
    (vision_batch re-splits them per sample)."""
    per_sample, start = [], 0
    for g in grids_per:
        per_sample.append(list(range(start, start + len(g))))
        start += len(g)
    rows = [pv[i, :int(np.prod(g, axis=1).sum())] for i, g in enumerate(grids_per)]
    return np.concatenate(rows) if rows else pv.reshape(-1, pv.shape[-1])[:0], per_sample
