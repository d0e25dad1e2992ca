"""Parameter specifications of Qwen2.5-VL as data: shape, logical axes and initialiser.

The layer stacks carry a leading `layers` axis so the decoder and the vision tower run as one
`lax.scan`. Shapes keep heads as their own axis (q: [layers, embed, heads, head_dim]) so that a
`tensor` mesh axis splits whole heads. Counting parameters or building abstract shapes needs
nothing but these specs.
"""

from __future__ import annotations

import dataclasses
import math

from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]  # logical axis names, one per dimension
    init: str = "normal"  # normal | zeros | ones

    def __post_init__(self):
        assert len(self.shape) == len(self.axes), (self.shape, self.axes)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def vision_specs(c: Qwen25VLConfig) -> dict[str, dict[str, ParamSpec]]:
    v = c.vision
    d, nh, hd, f, n = v.hidden_size, v.num_heads, v.head_dim, v.intermediate_size, v.depth
    md = d * v.merge_unit
    L = "layers"
    return {
        "patch_embed": {
            "kernel": ParamSpec((v.patch_dim, d), ("vision_patch_in", "vision_embed")),
        },
        "blocks": {
            "norm1": ParamSpec((n, d), (L, "vision_embed"), "ones"),
            "norm2": ParamSpec((n, d), (L, "vision_embed"), "ones"),
            "qkv": ParamSpec((n, d, 3, nh, hd), (L, "vision_embed", None, "vision_heads", "head_dim")),
            "qkv_bias": ParamSpec((n, 3, nh, hd), (L, None, "vision_heads", "head_dim"), "zeros"),
            "proj": ParamSpec((n, nh, hd, d), (L, "vision_heads", "head_dim", "vision_embed")),
            "proj_bias": ParamSpec((n, d), (L, "vision_embed"), "zeros"),
            "gate": ParamSpec((n, d, f), (L, "vision_embed", "vision_mlp")),
            "gate_bias": ParamSpec((n, f), (L, "vision_mlp"), "zeros"),
            "up": ParamSpec((n, d, f), (L, "vision_embed", "vision_mlp")),
            "up_bias": ParamSpec((n, f), (L, "vision_mlp"), "zeros"),
            "down": ParamSpec((n, f, d), (L, "vision_mlp", "vision_embed")),
            "down_bias": ParamSpec((n, d), (L, "vision_embed"), "zeros"),
        },
        "merger": {
            "ln_q": ParamSpec((d,), ("vision_embed",), "ones"),
            "fc1": ParamSpec((md, md), ("merger_in", "vision_mlp")),
            "fc1_bias": ParamSpec((md,), ("vision_mlp",), "zeros"),
            "fc2": ParamSpec((md, v.out_hidden_size), ("vision_mlp", "embed")),
            "fc2_bias": ParamSpec((v.out_hidden_size,), ("embed",), "zeros"),
        },
    }


def text_specs(c: Qwen25VLConfig) -> dict[str, dict[str, ParamSpec]]:
    t = c.text
    e, h, kv, hd, f, n = (t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim,
                          t.intermediate_size, t.num_hidden_layers)
    L = "layers"
    top = {
        "embed": ParamSpec((t.vocab_size, e), ("vocab", "embed")),
        "norm": ParamSpec((e,), ("embed",), "ones"),
    }
    if not c.tie_word_embeddings:
        top["lm_head"] = ParamSpec((e, t.vocab_size), ("embed", "vocab"))
    return {
        "top": top,
        "layers": {
            "input_norm": ParamSpec((n, e), (L, "embed"), "ones"),
            "post_norm": ParamSpec((n, e), (L, "embed"), "ones"),
            "q": ParamSpec((n, e, h, hd), (L, "embed", "heads", "head_dim")),
            "q_bias": ParamSpec((n, h, hd), (L, "heads", "head_dim"), "zeros"),
            "k": ParamSpec((n, e, kv, hd), (L, "embed", "kv_heads", "head_dim")),
            "k_bias": ParamSpec((n, kv, hd), (L, "kv_heads", "head_dim"), "zeros"),
            "v": ParamSpec((n, e, kv, hd), (L, "embed", "kv_heads", "head_dim")),
            "v_bias": ParamSpec((n, kv, hd), (L, "kv_heads", "head_dim"), "zeros"),
            "o": ParamSpec((n, h, hd, e), (L, "heads", "head_dim", "embed")),
            "gate": ParamSpec((n, e, f), (L, "embed", "mlp")),
            "up": ParamSpec((n, e, f), (L, "embed", "mlp")),
            "down": ParamSpec((n, f, e), (L, "mlp", "embed")),
        },
    }


def all_specs(c: Qwen25VLConfig) -> dict[str, ParamSpec]:
    """Flat view: 'visual.blocks.qkv' -> spec, 'text.layers.q' -> spec, 'text.embed' -> spec."""
    out = {}
    for group, specs in vision_specs(c).items():
        for name, s in specs.items():
            out[f"visual.{group}.{name}"] = s
    for group, specs in text_specs(c).items():
        for name, s in specs.items():
            out[f"text.{name}" if group == "top" else f"text.{group}.{name}"] = s
    return out


def count_params(c: Qwen25VLConfig) -> dict[str, int]:
    specs = all_specs(c)
    vision = sum(s.size for k, s in specs.items() if k.startswith("visual."))
    total = sum(s.size for s in specs.values())
    return {"total": total, "vision": vision, "text": total - vision}
