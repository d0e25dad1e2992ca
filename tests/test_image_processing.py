"""preprocess_images equals transformers' Qwen2-VL image processor (PIL backend)."""

import warnings

import numpy as np
import pytest
from PIL import Image

from data_pipeline import preprocess_images, smart_resize

SIZES = [(56, 56), (28, 28), (10, 500), (500, 10), (100, 60), (1, 150), (224, 308), (84, 140),
         (333, 777), (777, 333), (1080, 1920), (4000, 30), (29, 57), (57, 29), (448, 448),
         (123, 456), (640, 480), (15, 15), (2000, 2000), (71, 3000), (5, 900), (300, 301)]
MODES = ["RGB", "RGBA", "L", "P", "CMYK", "I;16", "LA", "PA-transparency"]
MAX_PIXELS = 200_704  # 256 * 28 * 28: big images go down, small ones up


@pytest.fixture(scope="module")
def reference():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=MAX_PIXELS)


def make(mode, h, w, seed=0):
    rng = np.random.default_rng(seed + h * 7 + w)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if mode == "RGBA":
        return Image.fromarray(np.concatenate([rgb, rng.integers(0, 256, (h, w, 1), np.uint8)],
                                              -1), "RGBA")
    if mode == "I;16":
        return Image.frombytes("I;16", (w, h), rng.integers(0, 65535, (h, w), np.uint16).tobytes())
    if mode == "PA-transparency":
        im = Image.fromarray(rgb).convert("P")
        im.info["transparency"] = 0
        return im
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("h,w", SIZES)
def test_sizes_match_reference(reference, h, w):
    if max(h, w) / min(h, w) > 200:
        im = make("RGB", h, w)
        with pytest.raises(ValueError, match="aspect ratio"):
            reference(images=[im], return_tensors="np")
        with pytest.raises(ValueError, match=r"image 0: absolute aspect ratio"):
            preprocess_images([im], min_pixels=3136, max_pixels=MAX_PIXELS)
        return
    for mode in MODES:
        im = make(mode, h, w)
        ref = reference(images=[im], return_tensors="np")
        pv, grid = preprocess_images([im], min_pixels=3136, max_pixels=MAX_PIXELS)
        np.testing.assert_array_equal(grid, ref["image_grid_thw"])
        diff = float(np.abs(pv - ref["pixel_values"]).max())
        assert diff <= 1e-5, f"{mode} {h}x{w}: {diff}"


def test_several_images_concatenate(reference):
    ims = [make("RGB", 56, 84), make("RGBA", 100, 60), make("L", 333, 777)]
    ref = reference(images=ims, return_tensors="np")
    pv, grid = preprocess_images(ims, min_pixels=3136, max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    np.testing.assert_array_equal(pv, ref["pixel_values"])


def test_smart_resize_table():
    # reference table of transformers' smart_resize (docs/data.md)
    for (h, w), pub, cls in [((56, 56), (56, 56), (56, 56)), ((100, 60), (112, 56), (112, 56)),
                             ((28, 28), (56, 56), (56, 56)), ((10, 500), (28, 420), (28, 420)),
                             ((1080, 1920), (1092, 1932), (728, 1316)),
                             ((4000, 3000), (4004, 2996), (1148, 840))]:
        assert smart_resize(h, w, min_pixels=3136, max_pixels=12845056) == pub
        assert smart_resize(h, w, min_pixels=3136, max_pixels=1003520) == cls
