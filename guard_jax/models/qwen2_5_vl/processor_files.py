"""The processor files of an HF export: image and video processor configs and the chat template.

`AutoProcessor.from_pretrained` and serving engines need `preprocessor_config.json` (and, in
transformers 5, a video processor config) next to the tokenizer; a directory without them loads
as a model but cannot turn an image into `pixel_values`. An export copies these files from its
source when the source has them and writes the missing ones here: sizes from the model config,
resizing limits from the run (default: the training pipeline's), normalisation and chat template
exactly as `data_pipeline` uses them, so the processor reproduces the inputs guard_jax trains and
generates on. See docs/export-import.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.chat_template import CHAT_TEMPLATE
from data_pipeline.image_processing import (
    CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS)
from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"  # transformers 5: all sub-processors in one file
CHAT_TEMPLATE_FILE = "chat_template.jinja"
LEGACY_CHAT_TEMPLATE_FILE = "chat_template.json"
PROCESSOR_CLASS = "Qwen2_5_VLProcessor"


def _common(config: Qwen25VLConfig) -> dict:
    v = config.vision
    return {"patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
            "merge_size": v.spatial_merge_size, "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD), "do_convert_rgb": True, "do_resize": True,
            "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "processor_class": PROCESSOR_CLASS}


def image_processor_config(config: Qwen25VLConfig, *, min_pixels: int | None = None,
                           max_pixels: int | None = None) -> dict:
    """`preprocessor_config.json` of Qwen2-VL's image processor for `config` (resample 3 is
    PIL's bicubic). The pixel limits appear twice: `min_pixels`/`max_pixels` for transformers
    4.x and engines built on it, `size` for transformers 5."""
    lo = DEFAULT_MIN_PIXELS if min_pixels is None else int(min_pixels)
    hi = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    return {"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": lo,
            "max_pixels": hi, "size": {"shortest_edge": lo, "longest_edge": hi},
            **_common(config)}


VIDEO_SETTINGS = ("fps", "min_frames", "max_frames", "min_pixels", "max_pixels")


def video_processor_config(config: Qwen25VLConfig, video: dict | None = None) -> dict:
    """`video_preprocessor_config.json`: the model's patch sizes and the normalisation. Frame
    sampling and pixel limits are `video`'s (keys VIDEO_SETTINGS, as a run's data pipeline
    samples and resizes: fps with do_sample_frames, the pixel limits both as min/max_pixels
    and as transformers 5's `size`), else transformers' Qwen2-VL video defaults."""
    out = {"video_processor_type": "Qwen2VLVideoProcessor", **_common(config)}
    if video:
        unknown = sorted(set(video) - set(VIDEO_SETTINGS))
        if unknown:
            raise ValueError(f"unknown video processor settings {unknown}; known: "
                             f"{list(VIDEO_SETTINGS)}")
        out.update({k: video[k] for k in VIDEO_SETTINGS if video.get(k) is not None})
        if "fps" in out:
            out["fps"] = float(out["fps"])
            out["do_sample_frames"] = True
        if "min_pixels" in out and "max_pixels" in out:
            out["size"] = {"shortest_edge": int(out["min_pixels"]),
                           "longest_edge": int(out["max_pixels"])}
    return out


def _chat_template_of(folder: Path) -> str:
    """The template of `folder`'s tokenizer_config.json, else Qwen2.5-VL's."""
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            template = None
        if isinstance(template, str) and template:
            return template
    return CHAT_TEMPLATE


def _nested_keys(folder: Path) -> set[str]:
    """The sub-processor sections of a transformers-5 processor_config.json, if any."""
    p = folder / PROCESSOR_FILE
    if not p.is_file():
        return set()
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return set()
    return set(d) if isinstance(d, dict) else set()


def write_processor_files(out: Path, config: Qwen25VLConfig, *, min_pixels: int | None = None,
                          max_pixels: int | None = None, video: dict | None = None) -> list[str]:
    """Writes into `out` (which already holds the files copied from the source) each processor
    file no copied file provides; returns the names written. `video`: see
    video_processor_config."""
    nested = _nested_keys(out)
    written = []

    def write(name: str, obj) -> None:
        with open(out / name, "w", encoding="utf-8") as f:
            if isinstance(obj, str):
                f.write(obj)
            else:
                json.dump(obj, f, indent=2)
                f.write("\n")
        written.append(name)

    if not (out / IMAGE_PROCESSOR_FILE).is_file() and "image_processor" not in nested:
        write(IMAGE_PROCESSOR_FILE, image_processor_config(config, min_pixels=min_pixels,
                                                           max_pixels=max_pixels))
    if not (out / VIDEO_PROCESSOR_FILE).is_file() and "video_processor" not in nested:
        write(VIDEO_PROCESSOR_FILE, video_processor_config(config, video))
    if not any((out / n).is_file() for n in (CHAT_TEMPLATE_FILE, LEGACY_CHAT_TEMPLATE_FILE)) \
            and "chat_template" not in nested:
        write(CHAT_TEMPLATE_FILE, _chat_template_of(out))
    return written
