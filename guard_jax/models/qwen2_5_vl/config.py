"""Qwen2.5-VL configuration: our dataclasses, HF config.json in both forms, and presets.

Every field of the published checkpoints is explicit here: transformers' class defaults differ
from the real models (rms_norm_eps, vision hidden size, tokens_per_second, ...), so nothing is
left to a default when we read or write an HF config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from guard_jax.errors import InputError

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "splash_interpret")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 2048
    tokens_per_second: int = 2
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2

    @property
    def window_merged(self) -> int:
        """Window side in merged tokens (vmw); 112 px / 2 / 14 = 4 in the real models."""
        return self.window_size // self.spatial_merge_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"
    attention_dropout: float = 0.0
    use_sliding_window: bool = False
    sliding_window: int = 32768
    max_window_layers: int = 70
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    tie_word_embeddings: bool = True
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int = 151654
    bos_token_id: int = 151643  # <|endoftext|>
    eos_token_id: int = 151645  # <|im_end|>
    # The published config.json has no pad_token_id (transformers would freeze that embedding
    # row through padding_idx); generation pads with <|endoftext|> = bos_token_id instead.
    pad_token_id: int | None = None
    # Not part of the HF config: how we run the model.
    param_dtype: str = "bfloat16"
    dtype: str = "bfloat16"
    remat: str = "none"
    attention_impl: str = "auto"
    scan_unroll: int = 1  # decoder layers per scan iteration (compile time grows with it)

    def __post_init__(self):
        _validate(self)

    def replace(self, **kw) -> "Qwen25VLConfig":
        return dataclasses.replace(self, **kw)

    @property
    def generation_eos_ids(self) -> tuple[int, ...]:
        """Qwen instruct models stop on <|im_end|> and on <|endoftext|> (the 'bos' id)."""
        return tuple(dict.fromkeys((self.eos_token_id, self.bos_token_id)))

    @property
    def generation_pad_id(self) -> int:
        return self.pad_token_id if self.pad_token_id is not None else self.bos_token_id

    # ------------------------------------------------------------------ HF conversion
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> "Qwen25VLConfig":
        """Reads a Qwen2.5-VL config.json dict, flat hub form or nested transformers-5 form."""
        model_type = d.get("model_type")
        if model_type not in (None, "qwen2_5_vl"):
            raise ValueError(
                f"config.json has model_type={model_type!r}; guard_jax reads Qwen2.5-VL "
                "checkpoints (model_type 'qwen2_5_vl')."
            )
        text_src = dict(d)
        if isinstance(d.get("text_config"), dict):
            # Nested form: text fields live in text_config; top-level values (flat form
            # leftovers) are only a fallback.
            text_src = {**{k: v for k, v in d.items() if k != "text_config"}, **d["text_config"]}
        text_kw = {}
        for f in dataclasses.fields(TextConfig):
            if f.name in ("mrope_section", "rope_theta"):
                continue
            if f.name in text_src and text_src[f.name] is not None:
                text_kw[f.name] = text_src[f.name]
        rope = text_src.get("rope_parameters") or text_src.get("rope_scaling") or {}
        theta = rope.get("rope_theta", text_src.get("rope_theta"))
        if theta is not None:
            text_kw["rope_theta"] = float(theta)
        if rope.get("mrope_section") is not None:
            text_kw["mrope_section"] = tuple(int(x) for x in rope["mrope_section"])
        if not text_kw.get("use_sliding_window", False):
            text_kw["sliding_window"] = int(text_src.get("sliding_window") or 32768)
        text = TextConfig(**text_kw)
        if text.use_sliding_window:
            raise NotImplementedError(
                "config.json sets use_sliding_window=true; guard_jax implements the published "
                "Qwen2.5-VL models, which use full attention in every text layer."
            )

        v = dict(d.get("vision_config") or {})
        vision_kw = {}
        for f in dataclasses.fields(VisionConfig):
            if f.name == "rope_theta":
                continue
            if f.name in v and v[f.name] is not None:
                val = v[f.name]
                vision_kw[f.name] = tuple(val) if f.name == "fullatt_block_indexes" else val
        vrope = v.get("rope_parameters") or {}
        if vrope.get("rope_theta") is not None:
            vision_kw["rope_theta"] = float(vrope["rope_theta"])
        vision = VisionConfig(**vision_kw)

        top = {}
        for name in ("image_token_id", "video_token_id", "vision_start_token_id",
                     "vision_end_token_id", "vision_token_id", "bos_token_id", "eos_token_id",
                     "pad_token_id"):
            val = d.get(name)
            if val is None and isinstance(d.get("text_config"), dict):
                val = d["text_config"].get(name)
            if isinstance(val, list):
                val = val[0]
            if val is not None:
                top[name] = int(val)
        tie = d.get("tie_word_embeddings")
        if tie is None and isinstance(d.get("text_config"), dict):
            tie = d["text_config"].get("tie_word_embeddings")
        if tie is not None:
            top["tie_word_embeddings"] = bool(tie)
        else:
            top["tie_word_embeddings"] = False  # transformers' class default
        return cls(text=text, vision=vision, **top, **overrides)

    def to_hf_dict(self, torch_dtype: str = "bfloat16") -> dict[str, Any]:
        """The flat hub form of config.json, as the official checkpoints write it.

        transformers 5 converts it to its nested classes on load; 4.5x reads it natively.
        """
        t, v = self.text, self.vision
        out = {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "attention_dropout": t.attention_dropout,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "vision_token_id": self.vision_token_id,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "hidden_act": t.hidden_act,
            "hidden_size": t.hidden_size,
            "initializer_range": t.initializer_range,
            "intermediate_size": t.intermediate_size,
            "max_position_embeddings": t.max_position_embeddings,
            "max_window_layers": t.max_window_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_hidden_layers": t.num_hidden_layers,
            "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "sliding_window": t.sliding_window,
            "use_sliding_window": t.use_sliding_window,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "use_cache": True,
            "vocab_size": t.vocab_size,
            "vision_config": {
                "model_type": "qwen2_5_vl",
                "depth": v.depth,
                "hidden_act": v.hidden_act,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_heads": v.num_heads,
                "in_chans": v.in_channels,
                "in_channels": v.in_channels,
                "out_hidden_size": v.out_hidden_size,
                "patch_size": v.patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "window_size": v.window_size,
                "fullatt_block_indexes": list(v.fullatt_block_indexes),
                "tokens_per_second": v.tokens_per_second,
                "initializer_range": v.initializer_range,
                "torch_dtype": torch_dtype,
            },
        }
        if self.pad_token_id is not None:
            out["pad_token_id"] = self.pad_token_id
        return out

    def to_transformers(self):
        """transformers' nested `Qwen2_5_VLConfig` with every field given explicitly (its class
        defaults differ from the real models). Needs transformers (not torch)."""
        from transformers import Qwen2_5_VLConfig
        d = self.to_hf_dict()
        t, v = self.text, self.vision
        text = {k: d[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                                  "max_position_embeddings", "hidden_act", "vocab_size",
                                  "attention_dropout", "use_sliding_window",
                                  "max_window_layers", "bos_token_id", "eos_token_id")}
        text["pad_token_id"] = d.get("pad_token_id")
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": t.rope_theta,
                                   "mrope_section": list(t.mrope_section)}
        vision = {"depth": v.depth, "hidden_size": v.hidden_size,
                  "intermediate_size": v.intermediate_size, "num_heads": v.num_heads,
                  "in_channels": v.in_channels, "patch_size": v.patch_size,
                  "temporal_patch_size": v.temporal_patch_size,
                  "spatial_merge_size": v.spatial_merge_size, "window_size": v.window_size,
                  "fullatt_block_indexes": list(v.fullatt_block_indexes),
                  "out_hidden_size": v.out_hidden_size,
                  "tokens_per_second": v.tokens_per_second, "hidden_act": v.hidden_act}
        return Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=self.tie_word_embeddings,
            image_token_id=self.image_token_id, video_token_id=self.video_token_id,
            vision_start_token_id=self.vision_start_token_id,
            vision_end_token_id=self.vision_end_token_id)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "Qwen25VLConfig":
        """Reads `path`/config.json. `path` must be an existing local directory: nothing is
        ever looked up on a model hub."""
        cfg_path = os.path.join(require_local_dir(path), "config.json")
        if not os.path.isfile(cfg_path):
            raise MissingLocalFile(f"{path}: no config.json (is this an HF model directory?)")
        with open(cfg_path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{cfg_path}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise InputError(f"{cfg_path}: holds a JSON {type(d).__name__}, not an object")
        check_sizes(d, cfg_path)
        return cls.from_hf_dict(d, **overrides)


class MissingLocalFile(InputError, FileNotFoundError):
    """A local directory or file the user named does not exist (bad input, exit 2)."""


def require_local_dir(path: str | os.PathLike, hint: str = "guard_jax reads models from local "
                      "directories only, never from a hub; download it first") -> str:
    """`path` as a string if it is an existing local directory; otherwise an InputError naming
    it (and `hint`). A hub id such as 'Qwen/Qwen2.5-VL-3B-Instruct' is refused, never looked up."""
    if not os.path.isdir(path):
        raise MissingLocalFile(f"{path}: no such local directory ({hint})")
    return os.fspath(path)


# Integer sizes of config.json, as (section, field); section None is the top level (or
# text_config in the nested form). Each must be a whole number in 1..MAX_SIZE before anything
# is built from it; hf_io then checks the layer counts against the weights themselves.
_SIZE_FIELDS = tuple((None, f) for f in (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "max_position_embeddings")) + tuple(
        ("vision_config", f) for f in (
            "depth", "hidden_size", "intermediate_size", "num_heads", "in_channels",
            "patch_size", "temporal_patch_size", "spatial_merge_size", "window_size",
            "out_hidden_size"))
MAX_SIZE = 2**31 - 1


def check_sizes(d: dict[str, Any], where: str = "config.json") -> None:
    """Raises an InputError naming `where` and the field for a size that is not an integer in
    1..MAX_SIZE (a float, a string, 0, a negative or an absurd number)."""
    nested = d.get("text_config") if isinstance(d.get("text_config"), dict) else {}
    for section, name in _SIZE_FIELDS:
        src = d.get(section) if section else {**d, **nested}
        if not isinstance(src, dict) or src.get(name) is None:
            continue
        val = src[name]
        if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= MAX_SIZE:
            field = f"{section}.{name}" if section else name
            raise InputError(f"{where}: {field}={val!r}; must be a whole number in "
                             f"1..{MAX_SIZE}")


def _validate(c: Qwen25VLConfig) -> None:
    t, v = c.text, c.vision
    errs = []
    if t.hidden_size % t.num_attention_heads:
        errs.append(f"text.hidden_size {t.hidden_size} is not divisible by num_attention_heads "
                    f"{t.num_attention_heads}")
    if t.num_attention_heads % t.num_key_value_heads:
        errs.append(f"text.num_attention_heads {t.num_attention_heads} is not a multiple of "
                    f"num_key_value_heads {t.num_key_value_heads}")
    if t.hidden_size % t.num_attention_heads == 0 and sum(t.mrope_section) * 2 != t.head_dim:
        errs.append(f"text.mrope_section {list(t.mrope_section)} must sum to head_dim/2 = "
                    f"{t.head_dim // 2}")
    if v.hidden_size % v.num_heads:
        errs.append(f"vision.hidden_size {v.hidden_size} is not divisible by num_heads {v.num_heads}")
    if v.out_hidden_size != t.hidden_size:
        errs.append(f"vision.out_hidden_size {v.out_hidden_size} must equal text.hidden_size "
                    f"{t.hidden_size} (merged image features replace token embeddings)")
    if v.window_size % (v.spatial_merge_size * v.patch_size):
        errs.append(f"vision.window_size {v.window_size} is not a multiple of patch_size*merge "
                    f"{v.spatial_merge_size * v.patch_size}")
    bad = [i for i in v.fullatt_block_indexes if not 0 <= i < v.depth]
    if bad:
        errs.append(f"vision.fullatt_block_indexes {bad} are outside 0..{v.depth - 1}")
    if c.scan_unroll < 1:
        errs.append(f"scan_unroll={c.scan_unroll}; must be >= 1")
    if c.remat not in REMAT_POLICIES:
        errs.append(f"remat={c.remat!r}; choose one of {REMAT_POLICIES}")
    if c.attention_impl not in ATTENTION_IMPLS:
        errs.append(f"attention_impl={c.attention_impl!r}; choose one of {ATTENTION_IMPLS}")
    for name in ("param_dtype", "dtype"):
        if getattr(c, name) not in ("float32", "bfloat16", "float16"):
            errs.append(f"{name}={getattr(c, name)!r}; choose float32, bfloat16 or float16")
    if errs:
        raise ValueError("invalid Qwen2.5-VL config: " + "; ".join(errs))


# ---------------------------------------------------------------------- presets
def qwen2_5_vl_3b(**overrides) -> Qwen25VLConfig:
    """Qwen2.5-VL-3B-Instruct (published config.json); keyword arguments override any field."""
    return Qwen25VLConfig(
        text=TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                        num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                        max_window_layers=70),
        vision=VisionConfig(out_hidden_size=2048),
        tie_word_embeddings=True,
    ).replace(**overrides)


def qwen2_5_vl_7b(**overrides) -> Qwen25VLConfig:
    """Qwen2.5-VL-7B-Instruct (published config.json); keyword arguments override any field."""
    return Qwen25VLConfig(
        text=TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        max_window_layers=28),
        vision=VisionConfig(out_hidden_size=3584),
        tie_word_embeddings=False,
    ).replace(**overrides)


def tiny(**overrides) -> Qwen25VLConfig:
    """The tiny parity configuration (vocab 256, hidden 64, 2 layers; vision 32 wide, 2 blocks),
    float32; keyword arguments override any field."""
    return Qwen25VLConfig(
        text=TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        mrope_section=(2, 3, 3), max_position_embeddings=4096),
        vision=VisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                            out_hidden_size=64, fullatt_block_indexes=(1,), window_size=56),
        tie_word_embeddings=False,
        image_token_id=251, video_token_id=252, vision_start_token_id=249,
        vision_end_token_id=250, vision_token_id=248, bos_token_id=0, eos_token_id=1,
        param_dtype="float32", dtype="float32",
    ).replace(**overrides)


def small(**overrides) -> Qwen25VLConfig:
    """Benchmark/planning size: the real vocabulary and layer types, few and narrow (text 512 x 4
    layers, vision 256 x 4 blocks with full attention at 1 and 3); keyword arguments override."""
    return Qwen25VLConfig(
        text=TextConfig(vocab_size=151936, hidden_size=512, intermediate_size=1536,
                        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                        mrope_section=(8, 12, 12)),
        vision=VisionConfig(depth=4, hidden_size=256, intermediate_size=512, num_heads=4,
                            fullatt_block_indexes=(1, 3), window_size=112, out_hidden_size=512),
        tie_word_embeddings=True,
    ).replace(**overrides)


def tiny_qwen(**overrides) -> Qwen25VLConfig:
    """`tiny` with the real Qwen2.5 vocabulary size and special-token ids, for CPU smoke runs
    and tests that tokenize with the real tokenizer."""
    t = tiny()
    return t.replace(
        text=dataclasses.replace(t.text, vocab_size=151936), image_token_id=151655,
        video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        vision_token_id=151654, bos_token_id=151643, eos_token_id=151645).replace(**overrides)


PRESETS = {"3b": qwen2_5_vl_3b, "7b": qwen2_5_vl_7b, "tiny": tiny, "tiny_qwen": tiny_qwen,
           "small": small}
