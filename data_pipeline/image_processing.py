"""Qwen2-VL image preprocessing with transformers' semantics (PIL backend), in numpy.

RGB conversion (transparency composited on white), `smart_resize` to multiples of 28 within
[min_pixels, max_pixels], bicubic resize, rescale by 1/255, CLIP normalisation in float32, and
the merge-block-major patch layout with the frame repeated over the temporal patch axis.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # transformers' class default; the hub files say 12845056


def smart_resize(height: int, width: int, factor: int = PATCH_SIZE * MERGE_SIZE,
                 min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Target (height, width): multiples of `factor`, pixel count within the limits, aspect kept.

    Python's `round` (half to even) is intended: it is what the reference uses.
    """
    if min(height, width) <= 0:
        raise ValueError(f"image has an empty side: {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got "
                         f"{max(height, width) / min(height, width)} ({height}x{width})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL mode; transparency (alpha band or palette transparency) goes onto white."""
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def patchify(pixels: np.ndarray, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE,
             temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> tuple[np.ndarray, int, int]:
    """(C, H, W) float32 -> ((gh*gw), C*T*P*P) rows in merge-block-major order, and gh, gw."""
    c, h, w = pixels.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixels.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size,
                       patch_size)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, mh, mw, c, ph, pw)
    x = np.broadcast_to(x[:, :, :, :, :, None], x.shape[:5] + (temporal_patch_size,) + x.shape[5:])
    return x.reshape(gh * gw, c * temporal_patch_size * patch_size * patch_size), gh, gw


@functools.lru_cache(maxsize=8)
def _normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: every uint8 value rescaled and normalised with exactly transformers'
    operations (x * (1/255) in float64, cast to float32, then (x - mean) / std in float32), so a
    table lookup is bit-identical to computing it."""
    v = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    return np.stack([(v - np.float32(m)) / np.float32(s) for m, s in zip(mean, std)])


def preprocess_image(image: Image.Image, *, min_pixels: int = DEFAULT_MIN_PIXELS,
                     max_pixels: int = DEFAULT_MAX_PIXELS,
                     mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """One PIL image -> (patches [gh*gw, 1176] float32, grid [1, gh, gw])."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    rgb = to_rgb(image)
    w, h = rgb.size
    nh, nw = smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
    if (nh, nw) != (h, w):
        rgb = rgb.resize((nw, nh), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(rgb)  # (H, W, 3) uint8
    # Patch layout first, on one byte per value; then one table lookup per channel writes the
    # float32 output (both temporal halves) directly.
    p, m = PATCH_SIZE, MERGE_SIZE
    gh, gw = nh // p, nw // p
    u8 = arr.reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
    u8 = u8.reshape(gh * gw, 3, p, p)
    lut = _normalise_lut(tuple(mean), tuple(std))
    out = np.empty((gh * gw, 3, TEMPORAL_PATCH_SIZE, p, p), np.float32)
    for c in range(3):
        vals = lut[c][u8[:, c]]
        for t in range(TEMPORAL_PATCH_SIZE):
            out[:, c, t] = vals
    return out.reshape(gh * gw, -1), (1, gh, gw)


def preprocess_images(images, *, min_pixels: int = DEFAULT_MIN_PIXELS,
                      max_pixels: int = DEFAULT_MAX_PIXELS):
    """PIL images -> (pixel_values [sum patches, 1176] float32, image_grid_thw int64 [n, 3]).

    Same outputs as transformers' Qwen2-VL image processor (PIL backend) called with
    size={"shortest_edge": min_pixels, "longest_edge": max_pixels}.
    """
    if isinstance(images, Image.Image):
        images = [images]
    images = list(images)

    def one(item):
        i, image = item
        try:
            return preprocess_image(image, min_pixels=min_pixels, max_pixels=max_pixels)
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from e

    if len(images) > 1 and (os.cpu_count() or 1) > 1:
        # PIL's resize and numpy's table lookups release the GIL: images run in parallel.
        with concurrent.futures.ThreadPoolExecutor(min(len(images), os.cpu_count())) as pool:
            results = list(pool.map(one, enumerate(images)))
    else:
        results = [one(item) for item in enumerate(images)]
    if not results:
        return np.zeros((0, 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE**2), np.float32), np.zeros(
            (0, 3), np.int64)
    return (np.concatenate([p for p, _ in results], axis=0),
            np.asarray([g for _, g in results], np.int64))
