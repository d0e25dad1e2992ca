"""`guard-jax bench kernels`: attention kernels side by side, and training MFU, on one device.

1. cuDNN flash attention vs the XLA path on the same bf16 model and inputs: the largest logit
   difference (relative to the logits' absmax) and the forward+backward time of each.
2. MFU of a jitted train step (loss, grads, adamw update) of a preset at a sequence length,
   by guard_jax.bench.flops (model matmul FLOPs, forward+backward = 3x forward, causal
   attention counted half, windowed vision attention linear in the window).
Meant for a GPU; on a CPU only the XLA path exists and the numbers are for smoke tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="3b", help="model for the MFU step (tiny|small|3b|7b)")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--image-size", type=int, default=448, help="one square image per sequence "
                   "(0 = text only)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--remat", default="none")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--compare-preset", default="small",
                   help="model for the cuDNN-vs-XLA comparison")
    p.add_argument("--compare-seq-len", type=int, default=2048)
    p.add_argument("--skip-compare", action="store_true")
    p.add_argument("--skip-mfu", action="store_true")
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
        fwd = jax.jit(lambda p, b: nnx.merge(graphdef, p).forward(
            **{k: v for k, v in b.items()}))
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


def measure_mfu(preset, seq_len, image_size, batch, remat, steps):
    import jax
    import optax

    from guard_jax.bench.flops import mfu, peak_flops, train_step_flops
    from guard_jax.models.qwen2_5_vl import PRESETS, init_model
    from guard_jax.sharding import make_mesh
    from guard_jax.training.train_step import init_train_state, make_train_step

    c = PRESETS[preset](param_dtype="bfloat16", dtype="bfloat16", remat=remat)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    t0 = time.perf_counter()
    model = init_model(c, seed=0, mesh=mesh)
    ids, kw, grids = _inputs(c, seq_len, image_size, batch)
    batch_arrays = model.prepare_inputs(ids, **kw)
    tx = optax.adamw(1e-6)
    graphdef, state = init_train_state(model, tx, mesh)
    del model
    step = make_train_step(graphdef, tx, mesh=mesh, state=state)
    holder = {"state": state}

    def one():
        holder["state"], m = step(holder["state"], batch_arrays)
        return m["loss"]

    t_compile = time.perf_counter()
    jax.block_until_ready(one())
    compile_s = time.perf_counter() - t_compile
    sec, _ = _time(one, steps)
    flops = train_step_flops(c, seq_len, batch, grids)["train_step"]
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    # where the time goes: forward loss alone, forward+backward, and the whole step
    from flax import nnx
    from guard_jax.training.train_step import next_token_loss
    params = holder["state"]["params"]
    dev_batch = {k: jax.device_put(v) for k, v in batch_arrays.items()}
    fwd = jax.jit(lambda p, b: next_token_loss(nnx.merge(graphdef, p), b)[0])
    grad = jax.jit(jax.grad(lambda p, b: next_token_loss(nnx.merge(graphdef, p), b)[0]))
    fwd_s, _ = _time(lambda: fwd(params, dev_batch), steps)
    grad_s, _ = _time(lambda: grad(params, dev_batch), steps)
    return {"forward_loss_s": fwd_s, "forward_backward_s": grad_s,"preset": preset, "seq_len": seq_len, "batch": batch, "image_size": image_size,
            "remat": remat, "device": kind, "step_s": sec, "first_step_s": compile_s,
            "init_s": t_compile - t0, "model_tflops_per_step": flops / 1e12,
            "tokens_per_s": batch * seq_len / sec,
            "mfu": mfu(flops, sec, peak) if peak else None}


def main(args) -> int:
    import jax
    out = {"jax": jax.__version__, "backend": jax.default_backend(),
           "device": jax.devices()[0].device_kind}
    print(f"[kernels] jax {jax.__version__} on {out['device']}", flush=True)
    if not args.skip_compare:
        print("[kernels] cuDNN vs XLA attention ...", flush=True)
        out["compare"] = compare_kernels(args.compare_preset, args.compare_seq_len,
                                         args.image_size, args.steps)
        print(json.dumps(out["compare"], indent=2), flush=True)
    if not args.skip_mfu:
        print(f"[kernels] MFU of a {args.preset} train step at {args.seq_len} tokens ...",
              flush=True)
        out["mfu"] = measure_mfu(args.preset, args.seq_len, args.image_size, args.batch,
                                 args.remat, args.steps)
        print(json.dumps(out["mfu"], indent=2), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
