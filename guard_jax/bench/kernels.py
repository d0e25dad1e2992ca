"""`guard-jax bench kernels`: attention kernels side by side on one device.

cuDNN flash attention vs the XLA path on the same bf16 model and inputs: the largest logit
difference (relative to the logits' absmax) and the forward+backward time of each. Meant for
a GPU; on a CPU only the XLA path exists. (Training MFU: `guard-jax bench model --mfu`.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=448, help="one square image per sequence "
                   "(0 = text only)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per kernel (10)")
    p.add_argument("--compare-preset", default="small", help="model (tiny|small|3b|7b)")
    p.add_argument("--compare-seq-len", type=int, default=2048,
                   help="tokens per sequence of the compared train step (2048)")
    p.add_argument("--json", default=None, help="write the numbers to this file")


def _inputs(config, seq_len, image_size, batch, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    rows, pv, grids = [], [], []
    v = config.vision
    for _ in range(batch):
        row = []
        if image_size:
            side = image_size // v.patch_size
            grid = [1, side, side]
            n_tok = side * side // v.merge_unit
            row = [config.vision_start_token_id] + [config.image_token_id] * n_tok + [
                config.vision_end_token_id]
            pv.append(rng.standard_normal((side * side, v.patch_dim)).astype(np.float32))
            grids.append(grid)
        row += rng.integers(0, min(config.text.vocab_size, 150000), seq_len - len(row)).tolist()
        rows.append(row)
    ids = np.asarray(rows)
    kw = {}
    if pv:
        kw = dict(pixel_values=np.concatenate(pv), image_grid_thw=np.asarray(grids))
    return ids, kw, grids


def _time(fn, steps):
    import jax
    out = fn()
    jax.block_until_ready(out)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def compare_kernels(preset, seq_len, image_size, steps):
    import jax
    import numpy as np

    from guard_jax.models.qwen2_5_vl import PRESETS, init_model
    from guard_jax.sharding import make_mesh
    from guard_jax.training.train_step import next_token_loss
    from flax import nnx

    res = {}
    outs = {}
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    for impl in ("xla", "cudnn"):
        c = PRESETS[preset](param_dtype="bfloat16", dtype="bfloat16", attention_impl=impl)
        model = init_model(c, seed=0, mesh=mesh)
        ids, kw, _ = _inputs(c, seq_len, image_size, 1)
        batch = model.prepare_inputs(ids, **kw)
        graphdef, params = nnx.split(model)
        fwd = jax.jit(lambda p, b: nnx.merge(graphdef, p).forward(**b))
        grad = jax.jit(jax.grad(lambda p, b: next_token_loss(nnx.merge(graphdef, p), b)[0]))
        try:
            logits = np.asarray(fwd(params, batch), np.float32)
            t, _ = _time(lambda: grad(params, batch), steps)
        except Exception as e:  # noqa: BLE001 - report the kernel that is unavailable
            res[impl] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        outs[impl] = logits
        res[impl] = {"fwd_bwd_s": t}
    if len(outs) == 2:
        diff = float(np.abs(outs["xla"] - outs["cudnn"]).max())
        res["max_abs_logit_diff"] = diff
        res["logit_absmax"] = float(np.abs(outs["xla"]).max())
        res["relative_diff"] = diff / res["logit_absmax"]
        res["cudnn_speedup"] = res["xla"]["fwd_bwd_s"] / res["cudnn"]["fwd_bwd_s"]
    return res


def main(args) -> int:
    import jax
    out = {"jax": jax.__version__, "backend": jax.default_backend(),
           "device": jax.devices()[0].device_kind}
    print(f"[kernels] jax {jax.__version__} on {out['device']}", flush=True)
    print("[kernels] cuDNN vs XLA attention ...", flush=True)
    out["compare"] = compare_kernels(args.compare_preset, args.compare_seq_len,
                                     args.image_size, args.steps)
    print(json.dumps(out["compare"], indent=2), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
