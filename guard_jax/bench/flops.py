"""Model matmul FLOPs of one Qwen2.5-VL training step, for MFU.

Conventions (the usual ones for MFU, as in the PaLM paper's appendix B):
  * a matmul [M, K] x [K, N] costs 2*M*K*N FLOPs; element-wise work, norms, softmax, RoPE and
    the embedding lookup are not counted;
  * a training step (forward + backward) costs 3x the forward pass; rematerialised recomputation
    is NOT counted (MFU, not hardware FLOP utilisation);
  * text attention is causal: QK^T and PV count half of the full L x L products;
  * vision attention is block-diagonal: a full-attention block costs per frame (h*w)^2 pairs, a
    windowed block costs per window (patches in the window)^2 pairs, i.e. linear in the window
    size (N * window_patches for full windows), not N^2;
  * the lm head ([L, E] x [E, V]) is included, tied or not.

Pure Python: imports nothing heavy, so the CLI can use it anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig


def _window_sizes(lh: int, vmw: int) -> list[int]:
    """Sizes (in merged tokens) of the windows that tile one side of lh merged tokens."""
    full, rest = divmod(lh, vmw)
    return [vmw] * full + ([rest] if rest else [])


def vision_forward_flops(config: Qwen25VLConfig,
                         grids: Sequence[Sequence[int]]) -> dict[str, float]:
    """Forward matmul FLOPs of the vision tower (patch embed, blocks, merger) for these images.

    grids: the image_grid_thw rows (t, h, w) in patches.
    """
    v = config.vision
    d, f, m = v.hidden_size, v.intermediate_size, v.spatial_merge_size
    n = sum(int(t) * int(h) * int(w) for t, h, w in grids)
    depth = v.depth
    n_full = len(set(v.fullatt_block_indexes))
    n_win = depth - n_full

    patch_embed = 2.0 * n * v.patch_dim * d
    # per block: qkv (d -> 3d), proj (d -> d), gated MLP (3 matrices d x f)
    dense_per_block = 2.0 * n * (3 * d * d + d * d + 3 * d * f)
    # attention: QK^T and PV, each 2 * pairs * d (all heads together)
    pairs_full = 0
    pairs_win = 0
    for t, h, w in grids:
        t, h, w = int(t), int(h), int(w)
        pairs_full += t * (h * w) ** 2
        wh = _window_sizes(h // m, v.window_merged)
        ww = _window_sizes(w // m, v.window_merged)
        pairs_win += t * sum((a * m * b * m) ** 2 for a in wh for b in ww)
    attn = 4.0 * d * (n_full * pairs_full + n_win * pairs_win)
    md = d * v.merge_unit
    n_tok = n // v.merge_unit
    merger = 2.0 * n_tok * (md * md + md * v.out_hidden_size)
    blocks = depth * dense_per_block + attn
    return {"patch_embed": patch_embed, "blocks_dense": depth * dense_per_block,
            "attention": attn, "merger": merger,
            "total": patch_embed + blocks + merger}


def text_forward_flops(config: Qwen25VLConfig, seq_len: int) -> dict[str, float]:
    """Forward matmul FLOPs of the text decoder and lm head for ONE sequence of seq_len tokens."""
    t = config.text
    e, h, kv, hd, f, n = (t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim,
                          t.intermediate_size, t.num_hidden_layers)
    L = int(seq_len)
    dense = 2.0 * L * (e * (h + 2 * kv) * hd + h * hd * e + 3 * e * f) * n
    # causal: QK^T and PV each 2 * L^2 * h * hd for the full square, half of that counted
    attn = 0.5 * 4.0 * L * L * h * hd * n
    lm_head = 2.0 * L * e * t.vocab_size
    return {"dense": dense, "attention": attn, "lm_head": lm_head,
            "total": dense + attn + lm_head}


def train_step_flops(config: Qwen25VLConfig, seq_len: int, batch: int = 1,
                     grids: Sequence[Sequence[int]] = ()) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward = 3x forward).

    seq_len: tokens per sequence (image tokens included); batch: sequences per step;
    grids: image_grid_thw of ALL images in the step (across the batch).
    """
    text = text_forward_flops(config, seq_len)
    vision = vision_forward_flops(config, grids) if len(grids) else {"total": 0.0}
    fwd = batch * text["total"] + vision["total"]
    return {"vision_forward": vision["total"],
            "text_forward": batch * (text["dense"] + text["attention"]),
            "lm_head_forward": batch * text["lm_head"],
            "forward": fwd,
            "train_step": 3.0 * fwd}


# Peak dense bf16 FLOP/s per chip (no sparsity). Keys are matched against jax's device_kind,
# lower-cased: "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "TPU v5" (a v5p;
# jax spells it so), "TPU v5p", "TPU v6 lite" (a v6e).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v5p": 459e12,
    "TPU v6e": 918e12,
}


def peak_flops(device_kind: str) -> float | None:
    """Peak bf16 FLOP/s of one device of this kind, or None when the table has no entry."""
    k = device_kind.lower()
    for name in ("h200", "h100", "a100"):
        if name in k:
            return PEAK_FLOPS[name.upper()]
    if "v6e" in k or "v6 lite" in k:
        return PEAK_FLOPS["TPU v6e"]
    if "v5p" in k or (("tpu v5" in k) and "lite" not in k and "v5e" not in k):
        return PEAK_FLOPS["TPU v5p"]
    return None


def mfu(flops_per_step: float, step_seconds: float, peak: float) -> float:
    return flops_per_step / (step_seconds * peak)
