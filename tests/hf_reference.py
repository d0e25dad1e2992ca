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
