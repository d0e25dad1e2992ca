"""Host-side (numpy) index arithmetic for Qwen2.5-VL: M-RoPE position ids and vision segments.

Everything here depends only on token ids, the attention mask and the image grids, never on
activations, so it runs once on the host and feeds `jit` as plain integer arrays with static
shapes. Patches stay in the image processor's (merge-block-major) order throughout: windowed
and full attention become segment-id masks, which is exact (docs/model.md#how-the-model-is-built).
"""

from __future__ import annotations

import numpy as np

from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig

PAD_SEGMENT = -1  # padding patches form their own segment and never mix with real ones


def _as_grid(grid_thw, name: str = "image_grid_thw") -> np.ndarray:
    if grid_thw is None:
        return np.zeros((0, 3), np.int64)
    grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    if (grid <= 0).any():
        raise ValueError(f"{name} has non-positive entries: {grid.tolist()}")
    return grid


def _time_steps(second_per_grid_ts, n_videos: int, config: Qwen25VLConfig) -> np.ndarray:
    """Per video, the float32 temporal-position step tokens_per_second x second_per_grid_ts
    (1 second when not given), float32 as the processor's tensor makes it."""
    if second_per_grid_ts is None:
        sec = np.ones((n_videos,), np.float32)
    else:
        sec = np.asarray(second_per_grid_ts, np.float32).reshape(-1)
        if len(sec) != n_videos:
            raise ValueError(f"second_per_grid_ts has {len(sec)} entries but video_grid_thw "
                             f"lists {n_videos} videos")
        if not (np.isfinite(sec) & (sec >= 0)).all():
            raise ValueError(f"second_per_grid_ts must be finite and >= 0: {sec.tolist()}")
    return np.float32(config.vision.tokens_per_second) * sec


def get_rope_index(input_ids, image_grid_thw, attention_mask, config: Qwen25VLConfig, *,
                   video_grid_thw=None, second_per_grid_ts=None):
    """3-axis M-RoPE positions, as transformers' `get_rope_index` (docs/model.md#positions).

    Text advances all three axes by 1 per token. An image or video with merged grid
    (t, lh, lw) starting at position p gets (p + time, p + row, p + column), where time is the
    temporal-patch index for images and floor(index x tokens_per_second x second_per_grid_ts)
    for videos; the text after it starts at p + max(lh, lw). Returns `position_ids` int32
    (3, B, L) and `rope_deltas` int32 (B, 1) (max position + 1 - real tokens). Padding
    positions (attention_mask 0) get position 0 on every axis.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    b, length = ids.shape
    mask = np.ones_like(ids, dtype=bool) if attention_mask is None else (
        np.asarray(attention_mask).astype(bool))
    kinds = {config.image_token_id: ("image", _as_grid(image_grid_thw)),
             config.video_token_id: ("video", _as_grid(video_grid_thw, "video_grid_thw"))}
    n_vid = len(kinds[config.video_token_id][1])
    steps = _time_steps(second_per_grid_ts, n_vid, config)
    merge = config.vision.spatial_merge_size
    pos = np.zeros((3, b, length), np.int64)
    deltas = np.zeros((b, 1), np.int64)
    used = {config.image_token_id: 0, config.video_token_id: 0}
    for i in range(b):
        valid = np.nonzero(mask[i])[0]
        toks = ids[i, valid]
        is_vis = (toks == config.image_token_id) | (toks == config.video_token_id)
        out = np.zeros((3, len(toks)), np.int64)
        cur = 0
        j = 0
        n = len(toks)
        while j < n:
            if not is_vis[j]:
                k = j
                while k < n and not is_vis[k]:
                    k += 1
                out[:, j:k] = cur + np.arange(k - j)
                cur += k - j
                j = k
                continue
            tok = int(toks[j])
            what, grid = kinds[tok]
            item = used[tok]
            if item >= len(grid):
                raise ValueError(
                    f"sample {i}: more {what}-token runs than {what}s in {what}_grid_thw "
                    f"({len(grid)} {what}s)")
            t, h, w = (int(x) for x in grid[item])
            lh, lw = h // merge, w // merge
            count = t * lh * lw
            run_end = j
            while run_end < n and toks[run_end] == tok:
                run_end += 1
            if run_end - j < count:
                raise ValueError(
                    f"sample {i}: {what} {item} (grid {[t, h, w]}) needs {count} {what} tokens "
                    f"but the run at position {j} has {run_end - j}")
            if what == "video":  # float32 product, truncated, as transformers does
                times = (np.arange(t, dtype=np.float32) * steps[item]).astype(np.int64)
            else:
                times = np.arange(t)
            ti, hi, wi = np.meshgrid(times, np.arange(lh), np.arange(lw), indexing="ij")
            out[0, j:j + count] = cur + ti.ravel()
            out[1, j:j + count] = cur + hi.ravel()
            out[2, j:j + count] = cur + wi.ravel()
            cur += max(lh, lw)
            j += count
            used[tok] += 1
        pos[:, i, valid] = out
        deltas[i, 0] = (out.max() + 1 if n else 0) - n
    for tok, (what, grid) in kinds.items():
        if used[tok] != len(grid):
            raise ValueError(f"{what}_grid_thw lists {len(grid)} {what}s but input_ids hold "
                             f"{what} tokens for {used[tok]}")
    if (pos > np.iinfo(np.int32).max).any():
        raise ValueError("M-RoPE positions exceed int32 (second_per_grid_ts too large)")
    return pos.astype(np.int32), deltas.astype(np.int32)


def vision_segments(image_grid_thw, config: Qwen25VLConfig, num_patches: int | None = None):
    """Per-patch metadata for the vision tower, in the processor's patch order.

    Returns a dict of int32 arrays of length `num_patches` (default: the grids' total):
      seg_full: the (image, frame) each patch belongs to (full-attention blocks);
      seg_win:  the attention window each patch belongs to (windowed blocks);
      pos_hw:   [N, 2] row and column of the patch in its frame's patch grid (2-D RoPE).
    Extra padding patches get PAD_SEGMENT in both segment arrays and position (0, 0).
    """
    grid = _as_grid(image_grid_thw)
    vc = config.vision
    m = vc.spatial_merge_size
    vmw = vc.window_merged
    total = int(np.prod(grid, axis=1).sum()) if len(grid) else 0
    n = total if num_patches is None else int(num_patches)
    if n < total:
        raise ValueError(f"num_patches={n} is smaller than the {total} patches of image_grid_thw")
    seg_full = np.full((n,), PAD_SEGMENT, np.int32)
    seg_win = np.full((n,), PAD_SEGMENT, np.int32)
    pos_hw = np.zeros((n, 2), np.int32)
    off = 0
    frame_id = 0
    win_id = 0
    for t, h, w in grid:
        t, h, w = int(t), int(h), int(w)
        if h % m or w % m:
            raise ValueError(f"image grid {[t, h, w]} is not divisible by spatial_merge_size {m}")
        lh, lw = h // m, w // m
        # merged-token coordinates in raster order; 4 patches per token, (mh, mw) inner
        bh, bw, mh, mw = np.meshgrid(np.arange(lh), np.arange(lw), np.arange(m), np.arange(m),
                                     indexing="ij")
        hh = (bh * m + mh).ravel()
        ww = (bw * m + mw).ravel()
        nwh, nww = -(-lh // vmw), -(-lw // vmw)
        win = ((bh // vmw) * nww + (bw // vmw)).ravel()
        per = h * w
        for f in range(t):
            sl = slice(off, off + per)
            seg_full[sl] = frame_id
            seg_win[sl] = win_id + win
            pos_hw[sl, 0] = hh
            pos_hw[sl, 1] = ww
            off += per
            frame_id += 1
            win_id += nwh * nww
    return {"seg_full": seg_full, "seg_win": seg_win, "pos_hw": pos_hw}


def window_index(image_grid_thw, config: Qwen25VLConfig):
    """transformers' `get_window_index` (window_index, cu_window_seqlens), for tests and kernels
    that want contiguous windows."""
    grid = _as_grid(image_grid_thw)
    vc = config.vision
    m, vmw, u = vc.spatial_merge_size, vc.window_merged, vc.merge_unit
    index, cu = [], [0]
    offset = 0
    for t, h, w in grid:
        lh, lw = int(h) // m, int(w) // m
        ids = np.arange(int(t) * lh * lw).reshape(int(t), lh, lw)
        ph, pw = vmw - lh % vmw, vmw - lw % vmw
        nwh, nww = (lh + ph) // vmw, (lw + pw) // vmw
        padded = np.pad(ids, ((0, 0), (0, ph), (0, pw)), constant_values=-100)
        padded = padded.reshape(int(t), nwh, vmw, nww, vmw).transpose(0, 1, 3, 2, 4)
        padded = padded.reshape(int(t), nwh * nww, vmw, vmw)
        lens = (padded != -100).sum(axis=(2, 3)).reshape(-1)
        flat = padded.reshape(-1)
        index.append(flat[flat != -100] + offset)
        cu.extend((np.cumsum(lens) * u + cu[-1]).tolist())
        offset += int(t) * lh * lw
    cu_arr = np.asarray(cu, np.int64)
    cu_arr = cu_arr[np.concatenate([[True], np.diff(cu_arr) != 0])]
    idx = np.concatenate(index) if index else np.zeros((0,), np.int64)
    return idx, cu_arr


def _group(seg: np.ndarray, n_total: int, width: int | None) -> np.ndarray:
    """Patch indices grouped by segment id (PAD_SEGMENT excluded), one row per segment, padded
    with `n_total` (an index past the last patch, which the model treats as empty)."""
    ids = np.unique(seg[seg != PAD_SEGMENT])
    members = [np.nonzero(seg == i)[0] for i in ids]
    w = max((len(m) for m in members), default=1) if width is None else width
    out = np.full((max(len(members), 1), w), n_total, np.int32)
    for r, m in enumerate(members):
        if len(m) > w:
            raise ValueError(f"segment {ids[r]} has {len(m)} patches, more than the width {w}")
        out[r, :len(m)] = m
    return out


def vision_attention_index(image_grid_thw, config: Qwen25VLConfig,
                           num_patches: int | None = None) -> dict[str, np.ndarray]:
    """Gather indices that turn the vision tower's attention into dense blocks.

    win_idx [W, S]: the patches of each attention window (S = window_merged**2 * merge_unit,
      64 in the real models), padded with N; windowed blocks attend within a row.
    full_idx [F, P]: the patches of each image frame (P = the largest frame), padded with N;
      full-attention blocks attend within a row.
    pos_hw [N, 2]: patch row and column for the 2-D rotary embedding.
    Attention cost is O(N * S) for windowed blocks instead of O(N^2) with segment masks.
    """
    seg = vision_segments(image_grid_thw, config, num_patches)
    n = len(seg["seg_full"])
    vc = config.vision
    s = vc.window_merged**2 * vc.merge_unit
    return {"pos_hw": seg["pos_hw"],
            "win_idx": _group(seg["seg_win"], n, s),
            "full_idx": _group(seg["seg_full"], n, None)}


def split_images_by_sample(input_ids, image_grid_thw, config: Qwen25VLConfig,
                           attention_mask=None, *, video: bool = False) -> list[list[int]]:
    """Which images (indices into image_grid_thw, in order) each sample's image tokens use;
    with `video`, which videos of video_grid_thw its video tokens use."""
    what = "video" if video else "image"
    token = config.video_token_id if video else config.image_token_id
    ids = np.asarray(input_ids)
    grid = _as_grid(image_grid_thw, f"{what}_grid_thw")
    mask = None if attention_mask is None else np.asarray(attention_mask).astype(bool)
    tokens = [int(n) for n in np.prod(grid, axis=1) // config.vision.merge_unit]
    out, nxt = [], 0
    for i in range(ids.shape[0]):
        row = ids[i] if mask is None else ids[i][mask[i]]
        need = int((row == token).sum())
        mine = []
        while need > 0:
            if nxt >= len(tokens):
                raise ValueError(f"sample {i}: {what} tokens left over after all "
                                 f"{len(tokens)} {what}s of {what}_grid_thw were assigned")
            if tokens[nxt] > need:
                raise ValueError(f"sample {i}: {what} {nxt} (grid {grid[nxt].tolist()}) needs "
                                 f"{tokens[nxt]} {what} tokens but the sample has {need} left")
            mine.append(nxt)
            need -= tokens[nxt]
            nxt += 1
        out.append(mine)
    if nxt != len(tokens):
        raise ValueError(f"{what}_grid_thw lists {len(tokens)} {what}s but input_ids hold "
                         f"{what} tokens for {nxt}")
    return out


def join_images_and_videos(pixel_values, image_grid_thw, images_per_sample,
                           pixel_values_videos, video_grid_thw, videos_per_sample):
    """One list of vision items for `vision_batch`: the images, then the videos (their patch
    rows and grids appended), and per sample its images followed by its videos. The tower
    treats a video as an image with t temporal patches, and the model's embedding gives a
    sample's image tokens the first features of its row and its video tokens the rest
    (docs/model.md#video)."""
    img_grid = _as_grid(image_grid_thw)
    vid_grid = _as_grid(video_grid_thw, "video_grid_thw")
    parts = [np.asarray(x) for x in (pixel_values, pixel_values_videos) if x is not None]
    pv = np.concatenate(parts) if len(parts) > 1 else parts[0]
    n_img = len(img_grid)
    per = [list(im) + [n_img + v for v in vd]
           for im, vd in zip(images_per_sample, videos_per_sample)]
    return pv, np.concatenate([img_grid, vid_grid]), per


def vision_batch(pixel_values, image_grid_thw, images_per_sample: list[list[int]],
                 config: Qwen25VLConfig, *, patches: int | None = None,
                 windows: int | None = None, frames: int | None = None,
                 frame_patches: int | None = None) -> dict[str, np.ndarray]:
    """Batch-major vision inputs: each sample's patches in its own row, so the tower shards
    over the batch like everything else.

    pixel_values [B, P, C*T*P*P] (zeros past a sample's patches), pos_hw [B, P, 2],
    win_idx [B, W, S] and full_idx [B, F, Pf] with indices into the sample's row, padded with P.
    `patches`, `windows`, `frames`, `frame_patches` fix P, W, F and Pf (static-shape buckets);
    by default the largest sample decides."""
    pv = np.asarray(pixel_values)
    grid = _as_grid(image_grid_thw)
    sizes = np.prod(grid, axis=1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    per = [vision_attention_index(grid[imgs], config) if imgs else None
           for imgs in images_per_sample]
    counts = [int(sizes[imgs].sum()) if imgs else 0 for imgs in images_per_sample]
    p_max = max(max(counts), config.vision.merge_unit) if patches is None else patches
    if max(counts) > p_max:
        raise ValueError(f"a sample has {max(counts)} patches, more than the budget {p_max}")
    s = config.vision.window_merged**2 * config.vision.merge_unit
    w_max = max([x["win_idx"].shape[0] for x in per if x is not None] + [1])
    f_max = max([x["full_idx"].shape[0] for x in per if x is not None] + [1])
    pf_max = max([x["full_idx"].shape[1] for x in per if x is not None] + [1])
    w_max = w_max if windows is None else windows
    f_max = f_max if frames is None else frames
    if frame_patches is not None:
        if frame_patches < pf_max:
            raise ValueError(f"a frame has {pf_max} patches, more than frame_patches "
                             f"{frame_patches}")
        pf_max = frame_patches
    b = len(images_per_sample)
    out = {"pixel_values": np.zeros((b, p_max, pv.shape[-1]), pv.dtype),
           "pos_hw": np.zeros((b, p_max, 2), np.int32),
           "win_idx": np.full((b, w_max, s), p_max, np.int32),
           "full_idx": np.full((b, f_max, pf_max), p_max, np.int32)}
    for i, (imgs, x) in enumerate(zip(images_per_sample, per)):
        if not imgs:
            continue
        rows = np.concatenate([np.arange(starts[j], starts[j + 1]) for j in imgs])
        n = len(rows)
        out["pixel_values"][i, :n] = pv[rows]
        out["pos_hw"][i, :n] = x["pos_hw"]
        for key, limit in (("win_idx", w_max), ("full_idx", f_max)):
            idx = x[key]
            if idx.shape[0] > limit:
                raise ValueError(f"sample {i}: {idx.shape[0]} groups in {key}, budget {limit}")
            idx = np.where(idx == n, p_max, idx)
            out[key][i, :idx.shape[0], :idx.shape[1]] = idx
    return out
