"""Qwen2.5-VL (vision tower + language model) in Flax NNX, with HF import/export."""

from guard_jax.models.qwen2_5_vl.config import (  # noqa: F401
    PRESETS, Qwen25VLConfig, TextConfig, VisionConfig, qwen2_5_vl_3b, qwen2_5_vl_7b, tiny)
from guard_jax.models.qwen2_5_vl.hf_io import load_hf, save_hf  # noqa: F401
from guard_jax.models.qwen2_5_vl.model import Qwen25VL, abstract_model, init_model  # noqa: F401
from guard_jax.models.qwen2_5_vl.params import count_params  # noqa: F401
