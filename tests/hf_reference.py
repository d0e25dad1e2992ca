"""Helpers that drive transformers' torch Qwen2.5-VL as the reference in parity tests."""

from __future__ import annotations

import json

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig


def hf_config(c: Qwen25VLConfig) -> Qwen2_5_VLConfig:
    """transformers' nested config with every field given explicitly (class defaults differ)."""
    return c.to_transformers()


def build_hf_model(c: Qwen25VLConfig, seed: int = 0, scale: float = 0.02):
    """A random transformers model with every parameter perturbed (norms and biases included),
    so a forgotten or swapped tensor cannot hide behind ones or zeros."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(c)).eval().to(torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        seen = set()
        for name, p in model.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            noise = torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else scale)
            p.add_(noise)
    return model


def hf_logits(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
              position_ids=None, image_token_id=None):
    """Reference logits; passes mm_token_type_ids so transformers computes M-RoPE positions."""
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    if pixel_values is not None:
        kw["pixel_values"] = torch.as_tensor(np.asarray(pixel_values, np.float32))
        kw["image_grid_thw"] = torch.as_tensor(np.asarray(image_grid_thw), dtype=torch.long)
    if position_ids is not None:
        kw["position_ids"] = torch.as_tensor(np.asarray(position_ids), dtype=torch.long)
    else:
        tok = image_token_id if image_token_id is not None else model.config.image_token_id
        kw["mm_token_type_ids"] = (ids == tok).long()
    model.model.rope_deltas = None
    with torch.no_grad():
        out = model(input_ids=ids, **kw)
    return out.logits.float().numpy()


def flat_hub_config(path) -> None:
    """Rewrites a saved config.json into the flat hub form the official checkpoints use."""
    with open(path / "config.json") as f:
        d = json.load(f)
    text = d.pop("text_config")
    rope = text.pop("rope_parameters")
    for k, v in text.items():
        if k not in ("model_type", "dtype"):
            d.setdefault(k, v)
    d["rope_theta"] = rope["rope_theta"]
    d["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    d["torch_dtype"] = d.pop("dtype", "float32")
    d["vision_config"]["model_type"] = "qwen2_5_vl"
    with open(path / "config.json", "w") as f:
        json.dump(d, f)


def random_image_inputs(c: Qwen25VLConfig, grids, seed=0):
    """Random pixel_values for the given grids (processor layout)."""
    rng = np.random.default_rng(seed)
    n = int(sum(np.prod(g) for g in grids))
    return rng.standard_normal((n, c.vision.patch_dim)).astype(np.float32), np.asarray(grids)


def image_tokens(c: Qwen25VLConfig, grid) -> list[int]:
    n = int(np.prod(grid)) // c.vision.merge_unit
    return [c.vision_start_token_id] + [c.image_token_id] * n + [c.vision_end_token_id]


# ---------------------------------------------------------------------------- test helpers
def save_hf_reference(model, path, *, original_format: bool = True, flat: bool = False):
    """save_pretrained in the legacy hub key layout (default) or transformers-5 in-memory layout
    (`original_format=False`), optionally rewriting config.json into the flat hub form."""
    model.save_pretrained(path, save_original_format=original_format)
    if flat:
        flat_hub_config(path)
    return path


def safetensors_tensors(path) -> dict[str, torch.Tensor]:
    """Every tensor of a directory's safetensors files (single or sharded), as torch tensors
    keyed by their saved name; raises on a key that appears twice."""
    from pathlib import Path

    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            assert k not in out, f"{k} appears in two files"
            out[k] = v
    return out


def load_hf_model(path, dtype=torch.float32):
    """transformers' from_pretrained with the loading report; asserts the report is clean."""
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path, output_loading_info=True, dtype=dtype)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info[k], f"{k}: {info[k]}"
    return model.eval()


def left_pad(samples, pad_id):
    """Token lists -> left-padded [B, L] ids and attention mask (int64, as torch wants)."""
    length = max(len(s) for s in samples)
    ids = np.full((len(samples), length), pad_id, np.int64)
    mask = np.zeros((len(samples), length), np.int64)
    for i, s in enumerate(samples):
        ids[i, length - len(s):] = s
        mask[i, length - len(s):] = 1
    return ids, mask


# ---------------------------------------------------------------------------- video helpers
def video_tokens(c: Qwen25VLConfig, grid) -> list[int]:
    n = int(np.prod(grid)) // c.vision.merge_unit
    return [c.vision_start_token_id] + [c.video_token_id] * n + [c.vision_end_token_id]


def patchify_frames(frames, c: Qwen25VLConfig) -> tuple[np.ndarray, list[int]]:
    """Frames [T, C, H, W] (H, W multiples of patch_size x merge_size) -> (pixel_values_videos,
    grid_thw) in the Qwen2-VL video processor's layout: an odd T is padded by repeating the
    last frame, then patches of temporal_patch_size frames in merge-block-major order."""
    v = c.vision
    frames = np.asarray(frames, np.float32)
    tp, p, m = v.temporal_patch_size, v.patch_size, v.spatial_merge_size
    if len(frames) % tp:
        pad = np.repeat(frames[-1:], tp - len(frames) % tp, axis=0)
        frames = np.concatenate([frames, pad])
    t, ch, h, w = frames.shape
    gt, gh, gw = t // tp, h // p, w // p
    x = frames.reshape(gt, tp, ch, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, ch * tp * p * p), [gt, gh, gw]


def mm_token_type_ids(ids, c: Qwen25VLConfig) -> torch.Tensor:
    """transformers' modality ids: text 0, image 1, video 2."""
    ids = np.asarray(ids)
    out = (ids == c.image_token_id).astype(np.int64) + 2 * (ids == c.video_token_id)
    return torch.as_tensor(out, dtype=torch.long)


def hf_mm_kwargs(c: Qwen25VLConfig, ids, *, pv=None, grid=None, pv_videos=None,
                 video_grid=None, second_per_grid_ts=None) -> dict:
    """transformers' keyword arguments for images and videos (with mm_token_type_ids, so it
    computes M-RoPE positions)."""
    kw = {"mm_token_type_ids": mm_token_type_ids(ids, c)}
    if pv is not None:
        kw["pixel_values"] = torch.as_tensor(np.asarray(pv, np.float32))
        kw["image_grid_thw"] = torch.as_tensor(np.asarray(grid), dtype=torch.long)
    if pv_videos is not None:
        kw["pixel_values_videos"] = torch.as_tensor(np.asarray(pv_videos, np.float32))
        kw["video_grid_thw"] = torch.as_tensor(np.asarray(video_grid), dtype=torch.long)
    if second_per_grid_ts is not None:
        # the processor's list of floats becomes a float32 tensor
        kw["second_per_grid_ts"] = torch.tensor([float(s) for s in second_per_grid_ts])
    return kw


def hf_video_logits(model, c: Qwen25VLConfig, ids, mask=None, **mm) -> np.ndarray:
    """Reference logits for inputs with videos (and images): `mm` as for hf_mm_kwargs."""
    t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    kw = hf_mm_kwargs(c, ids, **mm)
    if mask is not None:
        kw["attention_mask"] = torch.as_tensor(np.asarray(mask), dtype=torch.long)
    model.model.rope_deltas = None
    with torch.no_grad():
        return model(input_ids=t, **kw).logits.float().numpy()


def assert_logits_close(name, out, ref, ids, mask, diffs: dict, tol: float) -> float:
    """Max |out - ref| over the non-padding positions, recorded in `diffs[name]`; fails above
    `tol`, on non-finite logits, or when the reference is too flat to tell models apart."""
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    valid = np.ones(np.shape(ids), bool) if mask is None else np.asarray(mask).astype(bool)
    assert np.isfinite(out[valid]).all()
    assert ref[valid].std() > 1e-2, "reference logits are degenerate; the comparison is vacuous"
    diff = float(np.abs(out - ref)[valid].max())
    diffs[name] = diff
    assert diff <= tol, f"{name}: max |Δlogits| = {diff:.3e} > {tol} (ref absmax " \
                        f"{np.abs(ref[valid]).max():.3g})"
    return diff


def reference_pair(c: Qwen25VLConfig, folder, seed: int = 0):
    """(transformers model with perturbed weights, guard_jax's float32 model loaded from its
    save_pretrained in `folder`)."""
    import guard_jax
    hf = build_hf_model(c, seed=seed)
    save_hf_reference(hf, folder)
    return hf, guard_jax.load_hf(folder, dtype="float32", progress=False)
