"""The map between our parameters and Hugging Face checkpoint keys, as data.

Each entry names our parameter, the hub-layout key (with `{i}` for a layer index when our
parameter is a stack), the HF tensor shape, and how many leading dimensions of our per-layer
array are a Linear's input (0 for tensors copied as they are). Linear weights are [out, in] in
torch and [in, ...out] here; the Conv3d patch embedding is a Linear over the flattened patch.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from guard_jax.errors import InputError
from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig


@dataclasses.dataclass(frozen=True)
class KeyMap:
    ours: str  # e.g. "text.layers.q"
    hf: str  # e.g. "model.layers.{i}.self_attn.q_proj.weight"
    hf_shape: tuple[int, ...]
    in_dims: int  # leading dims of our per-layer shape forming the Linear input; 0 = copy
    stacked: int = 0  # number of layers when our array has a leading layer axis, else 0

    def hf_keys(self) -> list[str]:
        if self.stacked:
            return [self.hf.format(i=i) for i in range(self.stacked)]
        return [self.hf]

    def to_ours(self, w: np.ndarray, ours_shape: tuple[int, ...], key: str | None = None
                ) -> np.ndarray:
        """One HF tensor (named `key`, for errors) -> our (per-layer) array."""
        if tuple(w.shape) != self.hf_shape:
            raise ValueError(f"{key or self.hf}: shape {tuple(w.shape)} in the checkpoint, "
                             f"config.json needs {self.hf_shape}")
        if self.in_dims:
            w = w.reshape(w.shape[0], -1).T
        return np.ascontiguousarray(w.reshape(ours_shape))

    def to_hf(self, a: np.ndarray) -> np.ndarray:
        """Our (per-layer) array -> one HF tensor."""
        if self.in_dims:
            a = a.reshape(math.prod(a.shape[:self.in_dims]), -1).T
        return np.ascontiguousarray(a.reshape(self.hf_shape))


def key_maps(c: Qwen25VLConfig) -> list[KeyMap]:
    v, t = c.vision, c.text
    d, f, nv = v.hidden_size, v.intermediate_size, v.depth
    md = d * v.merge_unit
    e, ft, nt = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    qd, kvd = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    vb, tl = "visual.blocks.{i}.", "model.layers.{i}."
    maps = [
        KeyMap("visual.patch_embed.kernel", "visual.patch_embed.proj.weight",
               (d, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size), 1),
        KeyMap("visual.blocks.norm1", vb + "norm1.weight", (d,), 0, nv),
        KeyMap("visual.blocks.norm2", vb + "norm2.weight", (d,), 0, nv),
        KeyMap("visual.blocks.qkv", vb + "attn.qkv.weight", (3 * d, d), 1, nv),
        KeyMap("visual.blocks.qkv_bias", vb + "attn.qkv.bias", (3 * d,), 0, nv),
        KeyMap("visual.blocks.proj", vb + "attn.proj.weight", (d, d), 2, nv),
        KeyMap("visual.blocks.proj_bias", vb + "attn.proj.bias", (d,), 0, nv),
        KeyMap("visual.blocks.gate", vb + "mlp.gate_proj.weight", (f, d), 1, nv),
        KeyMap("visual.blocks.gate_bias", vb + "mlp.gate_proj.bias", (f,), 0, nv),
        KeyMap("visual.blocks.up", vb + "mlp.up_proj.weight", (f, d), 1, nv),
        KeyMap("visual.blocks.up_bias", vb + "mlp.up_proj.bias", (f,), 0, nv),
        KeyMap("visual.blocks.down", vb + "mlp.down_proj.weight", (d, f), 1, nv),
        KeyMap("visual.blocks.down_bias", vb + "mlp.down_proj.bias", (d,), 0, nv),
        KeyMap("visual.merger.ln_q", "visual.merger.ln_q.weight", (d,), 0),
        KeyMap("visual.merger.fc1", "visual.merger.mlp.0.weight", (md, md), 1),
        KeyMap("visual.merger.fc1_bias", "visual.merger.mlp.0.bias", (md,), 0),
        KeyMap("visual.merger.fc2", "visual.merger.mlp.2.weight", (v.out_hidden_size, md), 1),
        KeyMap("visual.merger.fc2_bias", "visual.merger.mlp.2.bias", (v.out_hidden_size,), 0),
        KeyMap("text.embed", "model.embed_tokens.weight", (t.vocab_size, e), 0),
        KeyMap("text.norm", "model.norm.weight", (e,), 0),
        KeyMap("text.layers.input_norm", tl + "input_layernorm.weight", (e,), 0, nt),
        KeyMap("text.layers.post_norm", tl + "post_attention_layernorm.weight", (e,), 0, nt),
        KeyMap("text.layers.q", tl + "self_attn.q_proj.weight", (qd, e), 1, nt),
        KeyMap("text.layers.q_bias", tl + "self_attn.q_proj.bias", (qd,), 0, nt),
        KeyMap("text.layers.k", tl + "self_attn.k_proj.weight", (kvd, e), 1, nt),
        KeyMap("text.layers.k_bias", tl + "self_attn.k_proj.bias", (kvd,), 0, nt),
        KeyMap("text.layers.v", tl + "self_attn.v_proj.weight", (kvd, e), 1, nt),
        KeyMap("text.layers.v_bias", tl + "self_attn.v_proj.bias", (kvd,), 0, nt),
        KeyMap("text.layers.o", tl + "self_attn.o_proj.weight", (e, qd), 2, nt),
        KeyMap("text.layers.gate", tl + "mlp.gate_proj.weight", (ft, e), 1, nt),
        KeyMap("text.layers.up", tl + "mlp.up_proj.weight", (ft, e), 1, nt),
        KeyMap("text.layers.down", tl + "mlp.down_proj.weight", (e, ft), 1, nt),
    ]
    if not c.tie_word_embeddings:
        maps.append(KeyMap("text.lm_head", "lm_head.weight", (t.vocab_size, e), 1))
    return maps


# The stacked parts: the hub key prefix before the layer index, the config.json field that
# counts the layers, and that count in our config.
LAYER_COUNTS = (
    ("model.layers.", "num_hidden_layers", lambda c: c.text.num_hidden_layers),
    ("visual.blocks.", "vision_config.depth", lambda c: c.vision.depth),
)
_LAYER_KEY = re.compile(
    "^(" + "|".join(re.escape(prefix) for prefix, _, _ in LAYER_COUNTS) + r")(\d+)\.")


def check_layer_counts(c: Qwen25VLConfig, keys, where: str) -> None:
    """Refuses a config that claims more layers than the weights hold, before anything is
    enumerated or allocated from it (a hostile num_hidden_layers would otherwise build one key
    name per claimed layer). `keys`: the hub-layout tensor names; `where`: config.json's path.
    Fewer claimed layers than held is left to the key check, which names the extra tensors."""
    held: dict[str, set[int]] = {prefix: set() for prefix, _, _ in LAYER_COUNTS}
    for key in keys:
        m = _LAYER_KEY.match(key)
        if m:
            held[m.group(1)].add(int(m.group(2)))
    for prefix, field, count in LAYER_COUNTS:
        n, have = count(c), sorted(held[prefix])
        if n > len(have):
            shown = (f"{prefix}0..{have[-1]}" if have == list(range(len(have))) else
                     f"{prefix}N for N in {have[:8]}{' ...' if len(have) > 8 else ''}")
            raise InputError(f"{where}: {field}={n}, but the weights hold {len(have)} such "
                             f"layers" + (f" ({shown})" if have else ""))


# transformers 5 in-memory names -> hub names (the loader accepts both layouts)
_RENAMES = (
    (re.compile(r"^model\.language_model\."), "model."),
    (re.compile(r"^model\.visual\."), "visual."),
)


def normalize_key(key: str) -> str:
    for pat, rep in _RENAMES:
        key = pat.sub(rep, key)
    return key


# Non-persistent buffers some writers still save; they carry no learned state.
IGNORED_KEYS = re.compile(r"rotary_(pos_)?emb\.(original_)?inv_freq$")
