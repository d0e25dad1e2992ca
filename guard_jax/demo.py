"""`guard-jax demo`: the main job on its tiny embedded default, end to end on the CPU.

Today's stages: build a tiny random Qwen2.5-VL, run it on a synthetic image and prompt, export
it as an HF directory, reload the export with transformers (when torch is installed) and with
guard_jax, and report the largest logit difference. Exit status 1 if the export does not load
cleanly or the logits disagree.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

PARITY_TOL = 1e-4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default=None,
                   help="where to write the export (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-torch", action="store_true",
                   help="do not reload the export with transformers")


def synthetic_image(seed: int, size=(84, 112)):
    """A small picture with a few coloured shapes."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    h, w = size
    img = Image.new("RGB", (w, h), tuple(int(x) for x in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = (x0, y0, x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(10, 40)))
        color = tuple(int(x) for x in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    return img


def _step(msg: str) -> float:
    print(f"[demo] {msg}", flush=True)
    return time.perf_counter()


def main(args) -> int:
    import numpy as np

    from data_pipeline import preprocess_images
    from guard_jax.models.qwen2_5_vl import config as cfg_lib
    from guard_jax.models.qwen2_5_vl import init_model, load_hf, save_hf

    t_start = time.perf_counter()
    config = cfg_lib.tiny()
    t0 = _step("building a tiny random Qwen2.5-VL (vision 2 blocks x 32, text 2 layers x 64)")
    model = init_model(config, seed=args.seed)
    image = synthetic_image(args.seed)
    pixel_values, grid = preprocess_images([image])
    n_img = int(np.prod(grid[0])) // config.vision.merge_unit
    rng = np.random.default_rng(args.seed)
    text = rng.integers(2, 240, size=12).tolist()
    ids = np.asarray([text[:5] + [config.vision_start_token_id] + [config.image_token_id] * n_img
                      + [config.vision_end_token_id] + text[5:]])
    logits = np.asarray(model(ids, pixel_values=pixel_values, image_grid_thw=grid))
    print(f"       image {image.size[0]}x{image.size[1]} -> grid {grid[0].tolist()}, "
          f"{n_img} image tokens; logits {logits.shape} ({time.perf_counter() - t0:.1f}s)")

    workdir = args.workdir or tempfile.mkdtemp(prefix="guard_jax_demo_")
    out = os.path.join(workdir, "hf_export")
    t0 = _step(f"exporting to {out}")
    save_hf(model, out, progress=False)
    print(f"       files: {sorted(os.listdir(out))} ({time.perf_counter() - t0:.1f}s)")

    t0 = _step("reloading the export with guard_jax.load_hf")
    again = load_hf(out, dtype="float32", progress=False)
    ours_diff = float(np.abs(np.asarray(
        again(ids, pixel_values=pixel_values, image_grid_thw=grid)) - logits).max())
    print(f"       max |logits diff| guard_jax reload: {ours_diff:.3g}")
    ok = ours_diff == 0.0

    if not args.skip_torch:
        try:
            import torch
            from transformers import Qwen2_5_VLForConditionalGeneration
        except ImportError:
            print("       torch/transformers not installed: skipping the transformers reload "
                  "(pip install 'guard-jax[torch]')")
        else:
            t0 = _step("reloading the export with transformers' Qwen2_5_VLForConditionalGeneration")
            hf, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                out, dtype=torch.float32, output_loading_info=True)
            bad = {k: v for k, v in info.items() if k != "error_msgs" and v}
            with torch.no_grad():
                t_ids = torch.as_tensor(ids)
                ref = hf(input_ids=t_ids, pixel_values=torch.as_tensor(pixel_values),
                         image_grid_thw=torch.as_tensor(grid),
                         mm_token_type_ids=(t_ids == config.image_token_id).long()).logits
            diff = float(np.abs(ref.float().numpy() - logits).max())
            print(f"       loading info: {bad or 'no missing, unexpected or mismatched keys'}")
            print(f"       max |logits diff| vs transformers: {diff:.3g} "
                  f"(tolerance {PARITY_TOL:g}; logit absmax {np.abs(logits).max():.3g}) "
                  f"({time.perf_counter() - t0:.1f}s)")
            ok = ok and not bad and diff <= PARITY_TOL
    print(f"[demo] {'OK' if ok else 'FAILED'} in {time.perf_counter() - t_start:.1f}s")
    return 0 if ok else 1
