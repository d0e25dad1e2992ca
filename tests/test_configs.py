"""Configuration: the published 3B / 7B config.json, both HF forms, presets, parameter counts
against transformers on the meta device, abstract shapes, and validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import jax
import pytest
import torch
from flax import nnx
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

import hf_reference as H
from guard_jax.models.qwen2_5_vl import abstract_model, count_params
from guard_jax.models.qwen2_5_vl.config import (
    Qwen25VLConfig, qwen2_5_vl_3b, qwen2_5_vl_7b, tiny)
from guard_jax.models.qwen2_5_vl.hf_keys import key_maps


def _published(**text):
    """Flat hub form of config.json as the official Qwen2.5-VL-*-Instruct checkpoints ship it
    (reference §2.2); `text` holds the fields that differ between sizes."""
    vision_out = text.pop("out_hidden_size")
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 128000,
        "model_type": "qwen2_5_vl",
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 32,
            "hidden_act": "silu",
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "in_chans": 3,
            "out_hidden_size": vision_out,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        **text,
    }


PUBLISHED = {
    "3b": _published(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, max_window_layers=70,
                     tie_word_embeddings=True, vocab_size=151936, out_hidden_size=2048),
    "7b": _published(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_window_layers=28,
                     tie_word_embeddings=False, vocab_size=152064, out_hidden_size=3584),
}
PRESETS = {"3b": qwen2_5_vl_3b, "7b": qwen2_5_vl_7b}
# reference §2.3: total / vision parameters and tensors written by save_pretrained
SIZES = {"3b": (3.755e9, 668.7e6, 824), "7b": (8.292e9, 676.6e6, 729)}

# Bookkeeping fields of transformers' to_dict that say nothing about the model.
_IGNORED = {"transformers_version", "_name_or_path", "dtype", "architectures"}


def _fields(cfg_dict):
    return {k: v for k, v in cfg_dict.items() if k not in _IGNORED}


def _hf(d) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(**copy.deepcopy(d))


# ---------------------------------------------------------------------------- published configs
@pytest.mark.parametrize("size", ["3b", "7b"])
def test_published_config_round_trip(size):
    d = PUBLISHED[size]
    ours = Qwen25VLConfig.from_hf_dict(copy.deepcopy(d))
    back = ours.to_hf_dict()
    orig, rt = _hf(d), _hf(back)
    # the reference really carries the published values, not transformers' class defaults
    assert orig.text_config.rms_norm_eps == 1e-6 and orig.vision_config.hidden_size == 1280
    assert orig.vision_config.tokens_per_second == 2
    assert orig.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    rt_text, orig_text = _fields(rt.text_config.to_dict()), _fields(orig.text_config.to_dict())
    assert orig_text["pad_token_id"] is None and rt_text["pad_token_id"] is None
    assert rt_text == orig_text
    assert _fields(rt.vision_config.to_dict()) == _fields(orig.vision_config.to_dict())
    top = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
           "tie_word_embeddings")
    assert {k: getattr(rt, k) for k in top} == {k: getattr(orig, k) for k in top}
    # our flat dict keeps every published key with the published value
    for k, v in d.items():
        if k in ("transformers_version",):
            continue
        if k == "vision_config":
            for vk, vv in v.items():
                assert back["vision_config"][vk] == vv, vk
        else:
            assert back[k] == v, k
    # and reads back to the same config
    assert Qwen25VLConfig.from_hf_dict(back) == ours


def test_export_does_not_invent_pad_token_id():
    # transformers would build embed_tokens with padding_idx=151643 and freeze that row
    back = Qwen25VLConfig.from_hf_dict(copy.deepcopy(PUBLISHED["7b"])).to_hf_dict()
    assert back.get("pad_token_id") is None
    assert _hf(back).text_config.pad_token_id is None


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_presets_match_published(size):
    ours = Qwen25VLConfig.from_hf_dict(copy.deepcopy(PUBLISHED[size]))
    assert PRESETS[size]() == ours
    assert ours.tie_word_embeddings == (size == "3b")
    assert ours.text.vocab_size == {"3b": 151936, "7b": 152064}[size]
    assert ours.text.head_dim == 128 and ours.vision.head_dim == 80
    assert ours.vision.window_merged == 4


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_nested_transformers5_form(size, tmp_path):
    flat = Qwen25VLConfig.from_hf_dict(copy.deepcopy(PUBLISHED[size]))
    hf = _hf(PUBLISHED[size])
    nested = hf.to_dict()
    assert "text_config" in nested and "rope_scaling" not in nested["text_config"]
    assert Qwen25VLConfig.from_hf_dict(nested) == flat
    hf.save_pretrained(tmp_path)  # the config.json transformers 5 writes
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "text_config" in saved and "hidden_size" not in saved
    assert Qwen25VLConfig.from_pretrained(tmp_path) == flat


def test_tiny_nested_form_from_reference_helper():
    c = tiny()
    nested = H.hf_config(c).to_dict()
    got = Qwen25VLConfig.from_hf_dict(nested, param_dtype="float32", dtype="float32")
    # transformers' config has no vision_token_id field unless one is given
    assert got == c.replace(vision_token_id=got.vision_token_id)


@pytest.mark.parametrize("make", [
    tiny,
    lambda: tiny().replace(tie_word_embeddings=True),
    lambda: qwen2_5_vl_3b(param_dtype="float32", dtype="float32"),
    lambda: qwen2_5_vl_7b(param_dtype="float32", dtype="float32"),
], ids=["tiny", "tiny_tied", "3b", "7b"])
def test_flat_form_round_trip(make):
    c = make()
    d = json.loads(json.dumps(c.to_hf_dict()))  # through JSON, as a file would be
    assert Qwen25VLConfig.from_hf_dict(d, param_dtype=c.param_dtype, dtype=c.dtype) == c
    hf = _hf(d)
    assert hf.text_config.hidden_size == c.text.hidden_size
    assert hf.text_config.rope_parameters["mrope_section"] == list(c.text.mrope_section)
    assert hf.vision_config.fullatt_block_indexes == list(c.vision.fullatt_block_indexes)
    assert hf.tie_word_embeddings == c.tie_word_embeddings


# ---------------------------------------------------------------------------- parameter counts
def _meta_model(d):
    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(_hf(d))


def _unique_params(module):
    seen, total = set(), 0
    for p in module.parameters():  # parameters() already skips tied duplicates; be explicit
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_param_counts_match_transformers(size):
    cfg = PRESETS[size]()
    ours = count_params(cfg)
    m = _meta_model(PUBLISHED[size])
    total, vision = _unique_params(m), _unique_params(m.model.visual)
    assert ours["total"] == total
    assert ours["vision"] == vision
    assert ours["text"] == total - vision
    exp_total, exp_vision, exp_tensors = SIZES[size]
    assert round(total / 1e9, 3) == exp_total / 1e9
    assert round(vision / 1e6, 1) == exp_vision / 1e6
    # one HF tensor per key map entry and layer, exactly the tensors save_pretrained writes
    hf_keys = [k for km in key_maps(cfg) for k in km.hf_keys()]
    assert len(hf_keys) == len(set(hf_keys)) == exp_tensors
    sd = m.state_dict()
    n_saved = len(sd) - (1 if cfg.tie_word_embeddings else 0)
    assert n_saved == exp_tensors
    assert ("lm_head.weight" in hf_keys) == (not cfg.tie_word_embeddings)


def test_tiny_param_count():
    c = tiny()
    assert count_params(c)["total"] == 187_552  # reference §3.2
    assert count_params(c)["total"] == _unique_params(
        Qwen2_5_VLForConditionalGeneration(H.hf_config(c)))
    tied = c.replace(tie_word_embeddings=True)
    assert count_params(tied)["total"] == 187_552 - 256 * 64


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_abstract_model_allocates_nothing(size):
    cfg = PRESETS[size]()
    before = {id(a) for a in jax.live_arrays()}
    model = abstract_model(cfg)
    new = [a for a in jax.live_arrays() if id(a) not in before]
    assert sum(a.nbytes for a in new) < 1 << 20, f"{len(new)} arrays allocated"
    leaves = [v.get_value() for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert {str(x.dtype) for x in leaves} == {"bfloat16"}
    assert sum(math.prod(x.shape) for x in leaves) == count_params(cfg)["total"]


# ---------------------------------------------------------------------------- validation
def _text(**kw):
    c = tiny()
    return lambda: c.replace(text=dataclasses.replace(c.text, **kw))


def _vision(**kw):
    c = tiny()
    return lambda: c.replace(vision=dataclasses.replace(c.vision, **kw))


@pytest.mark.parametrize("make,match", [
    (_text(mrope_section=(2, 3, 4)), r"mrope_section \[2, 3, 4\] must sum to head_dim/2 = 8"),
    (_text(mrope_section=(16, 24, 24)), r"must sum to head_dim/2 = 8"),
    (_text(num_attention_heads=5), r"hidden_size 64 is not divisible by num_attention_heads 5"),
    (_text(num_key_value_heads=3), r"num_attention_heads 4 is not a multiple of "
                                   r"num_key_value_heads 3"),
    (_vision(num_heads=3), r"vision.hidden_size 32 is not divisible by num_heads 3"),
    (_vision(window_size=50), r"window_size 50 is not a multiple"),
    (_vision(fullatt_block_indexes=(1, 2)), r"fullatt_block_indexes \[2\] are outside"),
    (lambda: tiny(remat="sometimes"), r"remat='sometimes'"),
    (lambda: tiny(dtype="int8"), r"dtype='int8'"),
], ids=["mrope_sum", "mrope_real_on_tiny", "heads", "kv_heads", "vision_heads", "window",
        "fullatt_range", "remat", "dtype"])
def test_invalid_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_invalid_hf_dicts_raise(tmp_path):
    d = copy.deepcopy(PUBLISHED["7b"])
    d["rope_scaling"]["mrope_section"] = [16, 24, 16]
    with pytest.raises(ValueError, match="mrope_section"):
        Qwen25VLConfig.from_hf_dict(d)
    with pytest.raises(ValueError, match="model_type='qwen2_vl'"):
        Qwen25VLConfig.from_hf_dict({**PUBLISHED["7b"], "model_type": "qwen2_vl"})
    with pytest.raises(NotImplementedError, match="use_sliding_window"):
        Qwen25VLConfig.from_hf_dict({**PUBLISHED["7b"], "use_sliding_window": True})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Qwen25VLConfig.from_pretrained(tmp_path)


def test_generation_eos_ids():
    c = qwen2_5_vl_7b()
    assert c.generation_eos_ids == (151645, 151643)
    assert Qwen25VLConfig.from_hf_dict({**PUBLISHED["7b"], "eos_token_id": [151645, 151643]}) \
        .eos_token_id == 151645


def test_preset_overrides_any_field():
    assert tiny(tie_word_embeddings=True).tie_word_embeddings
    assert not qwen2_5_vl_3b(tie_word_embeddings=False).tie_word_embeddings
