"""`guard-jax bench model`: Qwen2.5-VL training-step performance, side by side.

(a) forward+backward step time of ours (jit of value_and_grad over the NNX state) against
    transformers+torch on the same config and inputs (pixel_values, image_grid_thw,
    mm_token_type_ids), steady state: compile/warm up once, then the median of --steps runs;
(b) lowering and compile time of a full train step (forward + backward + optax AdamW) of the real
    7B config from abstract shapes only (nothing allocated);
(c) with --mfu on a GPU/TPU: the 3B config at 4096 tokens in bf16, step time, tokens/s and MFU.

Heavy imports (jax, flax, optax, torch, transformers) happen inside the functions, so importing
this module to build the CLI parser is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np

from guard_jax.bench import flops as flops_lib
from guard_jax.errors import InputError
from guard_jax.models.qwen2_5_vl.config import PRESETS, Qwen25VLConfig, REMAT_POLICIES

CONFIG_SIZES = ("small", "3b", "7b", "tiny")


# ---------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config-size", choices=CONFIG_SIZES, default="small",
      help="model for (a): 'small' (text 512 x 4 layers, vision 256 x 4 blocks, full vocab; "
           "the default), the real 3b/7b, or the tiny parity config")
    a("--seq-len", type=int, default=512, help="tokens per sequence, image tokens included (512)")
    a("--image-size", type=int, default=448,
      help="side in pixels of the one square image per sequence; a multiple of 28 "
           "(448 -> grid 1x32x32 = 1024 patches = 256 tokens); 0 for text only")
    a("--batch", type=int, default=1, help="sequences per step (1)")
    a("--steps", type=int, default=5, help="timed steps after one warm-up step; the median "
                                            "is reported (5)")
    a("--dtype", choices=("float32", "bfloat16"), default="float32",
      help="param and compute dtype for (a), both sides (float32)")
    a("--remat", choices=REMAT_POLICIES, default="none", help="our remat policy for (a) (none)")
    a("--threads", type=int, default=0,
      help="torch intra-op threads (default: the CPU cores this process may use)")
    a("--interleave", action="store_true",
      help="alternate our steps and torch's instead of timing one side after the other; "
           "also reports the median of the per-round ratios")
    a("--skip-torch", action="store_true", help="do not run the transformers+torch side of (a)")
    a("--skip-ours", action="store_true", help="do not run our side of (a)")
    a("--breakdown", action="store_true",
      help="also time the pieces of the step on both sides (vision tower, decoder, lm head + "
           "loss), each forward+backward with respect to its own parameters only")
    a("--skip-compile", action="store_true", help="skip (b), the 7B abstract compile")
    a("--compile-config", choices=("7b", "3b", "small", "tiny"), default="7b",
      help="config for (b) (7b)")
    a("--compile-seq-len", type=int, default=4096, help="tokens per sequence for (b) (4096)")
    a("--compile-image-size", type=int, default=448,
      help="image side for (b) (448 -> 1024 patches)")
    a("--compile-remat", choices=REMAT_POLICIES, default="full", help="remat for (b) (full)")
    a("--mfu", action="store_true",
      help="on a GPU/TPU: run the 3B config in bf16 on one device and print MFU and tokens/s")
    a("--mfu-seq-len", type=int, default=4096, help="tokens per sequence for --mfu (4096)")
    a("--mfu-steps", type=int, default=10, help="timed steps for --mfu (10)")
    a("--mfu-remat", choices=REMAT_POLICIES, default="dots_no_batch",
      help="remat for --mfu (dots_no_batch: 'none' ran out of memory for the 3B at 4096 "
           "tokens with AdamW state on an 80 GB H100 before the fused LM head + loss; not "
           "re-measured since)")
    a("--mfu-scan-unroll", type=int, default=1,
      help="decoder layers per scan iteration for --mfu (Qwen25VLConfig.scan_unroll)")
    a("--mfu-config", choices=("3b", "7b", "small", "tiny"), default="3b",
      help="config for --mfu (3b)")
    a("--mfu-attention", choices=("auto", "xla", "cudnn"), default="auto",
      help="attention kernel for --mfu (auto: cuDNN on a GPU in bf16)")
    a("--mfu-profile", metavar="DIR", default=None,
      help="also trace 3 steps with jax.profiler into DIR (Perfetto trace)")
    a("--mfu-padding-mask", action="store_true",
      help="feed the (all-ones) padding mask to the --mfu step instead of none")
    a("--xla-flags", default="",
      help="extra XLA_FLAGS for this run (e.g. '--xla_cpu_use_xnnpack=true'); only effective "
           "before jax starts its backend")
    a("--json", metavar="PATH", help="also write every number to this JSON file")


# ---------------------------------------------------------------------------- configs / inputs
def small_config(**overrides) -> Qwen25VLConfig:
    """The side-by-side config: a real vocabulary and the real layer types, few and narrow."""
    from guard_jax.models.qwen2_5_vl.config import small
    return small(**overrides)


def make_config(size: str, dtype: str = "float32", remat: str = "none",
                attention_impl: str = "auto") -> Qwen25VLConfig:
    kw = dict(param_dtype=dtype, dtype=dtype, remat=remat, attention_impl=attention_impl)
    if size == "small":
        return small_config(**kw)
    return PRESETS[size](**kw)


def describe(c: Qwen25VLConfig) -> str:
    t, v = c.text, c.vision
    return (f"text {t.hidden_size}x{t.num_hidden_layers}L {t.num_attention_heads}/"
            f"{t.num_key_value_heads}h mlp {t.intermediate_size} vocab {t.vocab_size}; vision "
            f"{v.hidden_size}x{v.depth}L {v.num_heads}h mlp {v.intermediate_size}")


def image_grid(c: Qwen25VLConfig, image_size: int) -> list[int] | None:
    if not image_size:
        return None
    unit = c.vision.patch_size * c.vision.spatial_merge_size
    if image_size % unit:
        raise InputError(f"--image-size {image_size} must be a multiple of {unit}")
    g = image_size // c.vision.patch_size
    return [1, g, g]


def make_inputs(c: Qwen25VLConfig, seq_len: int, image_size: int, batch: int = 1,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids with one image per sequence: text, <vision_start>, image tokens,
    <vision_end>, text. Returns input_ids [B, L], attention_mask, and pixel_values
    [N, patch_dim] + image_grid_thw [B, 3] when image_size > 0."""
    rng = np.random.default_rng(seed)
    specials = (c.image_token_id, c.video_token_id, c.vision_start_token_id,
                c.vision_end_token_id, c.vision_token_id)
    high = min(min(specials), c.text.vocab_size)
    ids = rng.integers(0, high, (batch, seq_len)).astype(np.int64)
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    grid = image_grid(c, image_size)
    if grid is not None:
        n_tok = grid[0] * grid[1] * grid[2] // c.vision.merge_unit
        if seq_len < n_tok + 4:
            raise InputError(f"--seq-len {seq_len} is too short for a {image_size}px image "
                             f"({n_tok} image tokens + 4)")
        ids[:, 1] = c.vision_start_token_id
        ids[:, 2:2 + n_tok] = c.image_token_id
        ids[:, 2 + n_tok] = c.vision_end_token_id
        n_patch = batch * grid[0] * grid[1] * grid[2]
        out["pixel_values"] = rng.standard_normal((n_patch, c.vision.patch_dim)).astype(np.float32)
        out["image_grid_thw"] = np.asarray([grid] * batch, np.int64)
    return out


def grids_of(inputs) -> list[list[int]]:
    g = inputs.get("image_grid_thw")
    return [] if g is None else [list(map(int, row)) for row in g]


# ---------------------------------------------------------------------------- small helpers
def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


@contextlib.contextmanager
def progress(msg: str):
    """Prints `msg ...` to stderr; on a terminal, ticks the elapsed seconds while it runs."""
    start = time.perf_counter()
    tty = sys.stderr.isatty()
    stop = threading.Event()
    print(f"  {msg} ...", end="" if tty else "\n", file=sys.stderr, flush=True)

    def tick():
        while not stop.wait(1.0):
            print(f"\r  {msg} ... {time.perf_counter() - start:.0f} s", end="",
                  file=sys.stderr, flush=True)

    th = threading.Thread(target=tick, daemon=True) if tty else None
    if th:
        th.start()
    try:
        yield
    finally:
        stop.set()
        if th:
            th.join()
        el = time.perf_counter() - start
        print(f"\r  {msg} ... done in {el:.1f} s" if tty else f"  {msg}: done in {el:.1f} s",
              file=sys.stderr, flush=True)


def summarize(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": times}


def median_time(fn, steps: int) -> float:
    """Median wall time of `steps` calls of `fn` (which must block until its work is done),
    after one untimed warm-up call."""
    fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# ---------------------------------------------------------------------------- ours (JAX)
def head_loss(model, h, input_ids, attention_mask):
    """Mean next-token cross-entropy (float32) of the lm head on final hidden states h against
    input_ids shifted by one, as transformers' ForCausalLMLoss with labels=input_ids: the
    head-and-loss part of the train step's loss (train_step.lm_head_loss)."""
    import jax.numpy as jnp
    from guard_jax.training.train_step import lm_head_loss
    total, count = lm_head_loss(model, h, {"input_ids": input_ids,
                                           "attention_mask": attention_mask})
    return total / jnp.maximum(count, 1.0)


def make_loss_fn(graphdef):
    """(params, batch) -> loss: the project's training loss (next_token_loss) over the model."""
    from flax import nnx
    from guard_jax.training.train_step import next_token_loss

    def loss_fn(params, batch):
        return next_token_loss(nnx.merge(graphdef, params), batch)[0]
    return loss_fn


def device_batch(c: Qwen25VLConfig, inputs: dict[str, np.ndarray]):
    """Our host-side preparation (M-RoPE positions, vision segments) + transfer to device."""
    import jax
    from guard_jax.models.qwen2_5_vl.model import abstract_model
    t0 = time.perf_counter()
    batch = abstract_model(c).prepare_inputs(
        inputs["input_ids"], attention_mask=inputs["attention_mask"],
        pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"))
    prep = time.perf_counter() - t0
    return jax.device_put(batch), prep


class OursStep:
    """Our forward+backward (grads w.r.t. every parameter): jit(value_and_grad) over the NNX
    state, compiled once; `step()` runs one and blocks until loss and grads are ready."""

    def __init__(self, c: Qwen25VLConfig, inputs, seed: int = 0):
        import jax
        from flax import nnx
        from guard_jax.models.qwen2_5_vl.model import init_model

        with progress("ours: initialising parameters"):
            graphdef, self.params = nnx.split(init_model(c, seed), nnx.Param)
            jax.block_until_ready(self.params)
        self.batch, self.host_prepare_s = device_batch(c, inputs)
        fn = jax.jit(jax.value_and_grad(make_loss_fn(graphdef)))
        with progress("ours: compiling forward+backward"):
            t0 = time.perf_counter()
            self.compiled = fn.lower(self.params, self.batch).compile()
            self.compile_s = time.perf_counter() - t0
        self.loss = None

    def step(self) -> float:
        import jax
        loss, grads = self.compiled(self.params, self.batch)
        jax.block_until_ready((loss, grads))
        del grads
        self.loss = float(loss)
        return self.loss

    def info(self) -> dict[str, Any]:
        out = {"compile_s": self.compile_s, "host_prepare_s": self.host_prepare_s,
               "loss": self.loss}
        try:
            cost = self.compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            if cost and "flops" in cost:
                out["xla_flops"] = float(cost["flops"])
        except Exception:  # pragma: no cover - backend without cost analysis
            pass
        mem = self.compiled.memory_analysis()
        if mem is not None:  # XLA's per-execution temporary and output buffers
            out["temp_mb"] = mem.temp_size_in_bytes / 1e6
            out["output_mb"] = mem.output_size_in_bytes / 1e6
        return out


def run_ours_breakdown(c: Qwen25VLConfig, inputs, steps: int, seed: int = 0) -> dict[str, Any]:
    """Forward+backward time of the pieces of our step, each jitted on its own and
    differentiated with respect to its own parameters only (so no piece pays for zero gradients
    of the others): the vision tower (features . random), the decoder layers and final norm
    (hidden . random, on fixed embeddings) and the lm head + loss (on fixed hidden states)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from guard_jax.models.qwen2_5_vl.model import init_model

    model = init_model(c, seed)
    batch, _ = device_batch(c, inputs)
    dtype = jnp.dtype(c.dtype)
    key = jax.random.key(1)
    head = nnx.Any(nnx.PathContains("embed"), nnx.PathContains("lm_head"))
    pieces = {
        "vision": nnx.PathContains("visual"),
        "decoder": nnx.All(nnx.PathContains("text"), nnx.Not(head)),
        "head": head,
    }
    split = {name: nnx.split(model, nnx.All(nnx.Param, f), ...) for name, f in pieces.items()}
    res = {}

    def timed(name, piece, fn, *args):
        graphdef, own, rest = split[piece]
        g = jax.jit(jax.value_and_grad(lambda own, *a: fn(nnx.merge(graphdef, own, rest), *a)))
        res[name] = median_time(lambda: jax.block_until_ready(g(own, *args)), steps)

    with progress("ours: timing the pieces (vision, decoder, lm head + loss)"):
        from guard_jax.models.qwen2_5_vl.model import VISION_KEYS
        vis = {k: batch[k] for k in VISION_KEYS if k in batch}
        if "pixel_values" in vis:
            shape = jax.eval_shape(lambda: model.visual(**vis))
            r_v = jax.random.normal(key, shape.shape, dtype)
            timed("vision_fwd_bwd_s", "vision",
                  lambda m: jnp.sum(m.visual(**vis).astype(jnp.float32) * r_v))

        x = jax.jit(lambda m: m.embed(batch["input_ids"], **vis))(model)
        r_h = jax.random.normal(key, x.shape, dtype)

        def decoder(m, x):
            h = m.text.decoder(x, batch["position_ids"], batch["attention_mask"])
            return jnp.sum(h.astype(jnp.float32) * r_h)
        timed("decoder_fwd_bwd_s", "decoder", decoder, x)

        h = jax.jit(lambda m, x: m.text.decoder(
            x, batch["position_ids"], batch["attention_mask"]))(model, x)

        timed("lm_head_loss_fwd_bwd_s", "head",
              lambda m, h: head_loss(m, h, batch["input_ids"], batch["attention_mask"]), h)
    return res


# ---------------------------------------------------------------------------- transformers+torch
class TorchStep:
    """transformers' Qwen2_5_VLForConditionalGeneration in train mode: `step()` zeroes the
    grads, runs forward with labels=input_ids (its own shifted mean cross-entropy) and
    loss.backward()."""

    def __init__(self, c: Qwen25VLConfig, inputs, threads: int, seed: int = 0):
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        torch.set_num_threads(threads)
        self.threads = threads
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[c.param_dtype]
        with progress("torch: building the transformers model"):
            torch.manual_seed(seed)
            self.model = Qwen2_5_VLForConditionalGeneration(c.to_transformers()).to(tdtype).train()
        ids = torch.as_tensor(inputs["input_ids"], dtype=torch.long)
        kw = {"input_ids": ids, "labels": ids,
              "attention_mask": torch.as_tensor(inputs["attention_mask"], dtype=torch.long),
              "use_cache": False}
        if "pixel_values" in inputs:
            kw["pixel_values"] = torch.as_tensor(inputs["pixel_values"]).to(tdtype)
            kw["image_grid_thw"] = torch.as_tensor(inputs["image_grid_thw"], dtype=torch.long)
            kw["mm_token_type_ids"] = (ids == c.image_token_id).long()
        self.kw = kw
        self.loss = None

    def step(self) -> float:
        self.model.zero_grad(set_to_none=True)
        self.model.model.rope_deltas = None
        out = self.model(**self.kw)
        out.loss.backward()
        self.loss = float(out.loss.detach())
        return self.loss

    def info(self) -> dict[str, Any]:
        import torch
        return {"loss": self.loss, "threads": self.threads,
                "attn_implementation": str(self.model.config._attn_implementation),
                "torch_version": torch.__version__}


def run_torch_breakdown(c: Qwen25VLConfig, inputs, steps: int, threads: int,
                        seed: int = 0) -> dict[str, Any]:
    """The same three pieces on transformers' model, forward + backward each (loss.backward()
    from the piece's own output, grads zeroed first): the vision tower (features . random),
    the language model's layers and final norm on fixed input embeddings (hidden . random)
    and lm_head + transformers' causal-LM loss on fixed hidden states."""
    import torch
    step = TorchStep(c, inputs, threads, seed)
    model, kw = step.model, step.kw
    res = {}
    gen = torch.Generator().manual_seed(1)

    def features(out):
        return out.pooler_output if hasattr(out, "pooler_output") else out

    with progress("torch: timing the pieces (vision, decoder, lm head + loss)"):
        visual = model.model.visual
        if "pixel_values" in kw:
            pv, thw = kw["pixel_values"], kw["image_grid_thw"]
            with torch.no_grad():
                shape = features(visual(pv, grid_thw=thw)).shape
            r_v = torch.randn(shape, generator=gen, dtype=pv.dtype)

            def vision():
                model.zero_grad(set_to_none=True)
                (features(visual(pv, grid_thw=thw)) * r_v).sum().backward()
            res["vision_fwd_bwd_s"] = median_time(vision, steps)

        lm, ids = model.model.language_model, kw["input_ids"]
        with torch.no_grad():
            x = model.model.get_input_embeddings()(ids)
        model.model.rope_deltas = None
        pos, _ = model.model.get_rope_index(
            ids, kw.get("mm_token_type_ids", torch.zeros_like(ids)), kw.get("image_grid_thw"),
            attention_mask=kw["attention_mask"])
        r_h = torch.randn(x.shape, generator=gen, dtype=x.dtype)

        def hidden():
            return lm(inputs_embeds=x, position_ids=pos, attention_mask=kw["attention_mask"],
                      use_cache=False).last_hidden_state

        def decoder():
            model.zero_grad(set_to_none=True)
            (hidden() * r_h).sum().backward()
        res["decoder_fwd_bwd_s"] = median_time(decoder, steps)

        with torch.no_grad():
            h = hidden()

        def head_loss():
            model.zero_grad(set_to_none=True)
            model.loss_function(logits=model.lm_head(h), labels=ids,
                                vocab_size=c.text.vocab_size).backward()
        res["lm_head_loss_fwd_bwd_s"] = median_time(head_loss, steps)
    return res


def minor_faults() -> int:
    """Minor page faults of this process so far (each first touch of a freshly mapped page)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(runners: dict[str, Any], steps: int, interleave: bool = False,
               faults: dict[str, list[int]] | None = None) -> dict[str, list[float]]:
    """One warm-up step, then `steps` timed steps, for each runner.

    By default one runner after the other (each in its own steady state: the other framework's
    worker threads idle and its memory settled). With `interleave`, rounds that run every
    runner once in turn, so a load that comes and goes weighs on both sides alike (but each
    step then starts right after the other framework's). With `faults`, also records each
    timed step's minor page faults there."""
    times: dict[str, list[float]] = {k: [] for k in runners}

    def timed(k, r):
        f0 = minor_faults()
        t0 = time.perf_counter()
        r.step()
        times[k].append(time.perf_counter() - t0)
        if faults is not None:
            faults.setdefault(k, []).append(minor_faults() - f0)

    if interleave:
        with progress(f"{' and '.join(runners)}: 1 warm-up + {steps} timed steps each, "
                      "interleaved"):
            for r in runners.values():
                r.step()
            for _ in range(steps):
                for k, r in runners.items():
                    timed(k, r)
        return times
    for k, r in runners.items():
        with progress(f"{k}: 1 warm-up + {steps} timed steps"):
            r.step()
            for _ in range(steps):
                timed(k, r)
    return times


# ---------------------------------------------------------------------------- (b) abstract compile
def abstract_batch(c: Qwen25VLConfig, seq_len: int, image_size: int, batch: int = 1):
    import jax
    from guard_jax.models.qwen2_5_vl.model import abstract_model
    inputs = make_inputs(c, seq_len, image_size, batch)
    prepared = abstract_model(c).prepare_inputs(
        inputs["input_ids"], attention_mask=inputs["attention_mask"],
        pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"))
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), prepared)


def compile_train_step(c: Qwen25VLConfig, seq_len: int, image_size: int,
                       batch: int = 1) -> dict[str, Any]:
    """Lower and compile the project's train step (guard_jax.training.train_step: forward,
    backward, AdamW, state donated) from abstract shapes; nothing is allocated."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from guard_jax.models.qwen2_5_vl.model import abstract_model
    from guard_jax.models.qwen2_5_vl.params import count_params
    from guard_jax.training.train_step import make_train_step

    graphdef, params = nnx.split(abstract_model(c), nnx.Param)
    tx = optax.adamw(1e-5, weight_decay=0.0)
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    abatch = abstract_batch(c, seq_len, image_size, batch)
    step = make_train_step(graphdef, tx)
    # pixel_values is batch-major [B, P, patch_dim] (zeros past a sample's patches)
    n_patch = int(np.prod(abatch["pixel_values"].shape[:-1])) if "pixel_values" in abatch else 0
    with progress("compile: lowering the train step"):
        t0 = time.perf_counter()
        lowered = step.lower(state, abatch)
        lower_s = time.perf_counter() - t0
    with progress(f"compile: compiling the train step for {jax.default_backend()} "
                  "(target < 60 s)"):
        t0 = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
    out = {"lower_s": lower_s, "compile_s": compile_s, "total_s": lower_s + compile_s,
           "params": count_params(c)["total"], "seq_len": seq_len, "batch": batch,
           "patches": n_patch, "remat": c.remat, "param_dtype": c.param_dtype,
           "backend": jax.default_backend()}
    try:
        mem = compiled.memory_analysis()
        if mem is not None:
            out["argument_bytes"] = int(mem.argument_size_in_bytes)
            out["temp_bytes"] = int(mem.temp_size_in_bytes)
    except Exception:  # pragma: no cover
        pass
    return out


# ---------------------------------------------------------------------------- (c) MFU
def device_init(c: Qwen25VLConfig, seed: int = 0):
    """(graphdef, params) with random weights drawn by jax.random on the default device
    (no host-side draw of billions of numbers)."""
    import jax
    from flax import nnx
    from guard_jax.models.qwen2_5_vl.model import Qwen25VL, abstract_model

    graphdef, _ = nnx.split(abstract_model(c), nnx.Param)
    params = jax.jit(lambda: nnx.split(Qwen25VL(c, rngs=nnx.Rngs(seed)), nnx.Param)[1])()
    return graphdef, params


def run_mfu(c: Qwen25VLConfig, seq_len: int, image_size: int, steps: int,
            seed: int = 0, keep_padding_mask: bool = False,
            profile_dir: str | None = None) -> dict[str, Any]:
    """The project's full train step (forward + backward + AdamW) on one device; step time,
    tokens/s and MFU against the device's peak bf16 FLOP/s."""
    import jax
    import jax.numpy as jnp
    import optax
    from guard_jax.training.train_step import make_train_step

    kind = jax.devices()[0].device_kind
    peak = flops_lib.peak_flops(kind)
    inputs = make_inputs(c, seq_len, image_size, 1, seed)
    tx = optax.adamw(1e-5, weight_decay=0.0)
    with progress(f"mfu: initialising {c.param_dtype} parameters on {kind}"):
        graphdef, params = device_init(c, seed)
        state = jax.jit(lambda p: {"params": p, "opt_state": tx.init(p),
                                   "step": jnp.zeros((), jnp.int32)})(params)
        del params
        jax.block_until_ready(state)
    batch, _ = device_batch(c, inputs)
    padding_mask = keep_padding_mask
    if not keep_padding_mask:
        # The bench batch has no padding: pass no attention mask (the loss mask says the same),
        # so the decoder's attention is purely causal. With a [B, 1, 1, L] padding mask the
        # cuDNN path is refused ("Bias must have same seq length as QKV, got 1 and L").
        batch["loss_mask"] = jnp.concatenate(
            [batch["attention_mask"][:, 1:], jnp.zeros_like(batch["attention_mask"][:, :1])], 1)
        batch["attention_mask"] = None
    step = make_train_step(graphdef, tx)
    with progress("mfu: compiling the train step"):
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
    with progress(f"mfu: 2 warm-up + {steps} timed steps"):
        for _ in range(2):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
    if profile_dir:  # 3 more steps under the profiler (a Perfetto trace for ui.perfetto.dev)
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for _ in range(3):
                state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
    s = summarize(times)
    fl = flops_lib.train_step_flops(c, seq_len, 1, grids_of(inputs))
    out = {"device_kind": kind, "peak_flops": peak, "seq_len": seq_len,
           "image_tokens": int((inputs["input_ids"] == c.image_token_id).sum()),
           "remat": c.remat, "attention_impl": c.attention_impl, "compile_s": compile_s,
           "padding_mask": padding_mask,
           "loss": float(metrics["loss"]), "model_flops_per_step": fl["train_step"],
           "flops": fl, "tokens_per_s": seq_len / s["median_s"], **s}
    out["mfu"] = flops_lib.mfu(fl["train_step"], s["median_s"], peak) if peak else None
    return out


# ---------------------------------------------------------------------------- report
def _fmt_s(x):
    if x is None:
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    cols = list(zip(header, *rows))
    widths = [max(len(str(v)) for v in col) for col in cols]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def _fmt_faults(side: dict[str, Any] | None) -> str:
    """Minor faults per step: each is a first touch of a fresh page, ~1 us each here."""
    n = (side or {}).get("minor_faults_per_step")
    return "-" if n is None else f"{n / 1e3:.0f}k"


def report(res: dict[str, Any]) -> str:
    out = []
    a = res.get("step")
    if a is not None:
        out.append(f"(a) forward+backward step, {a['config_size']} config ({a['config']}), "
                   f"batch {a['batch']} x {a['seq_len']} tokens ({a['image_tokens']} image tokens,"
                   f" {a['patches']} patches), {a['dtype']}, {a['backend']}")
        ours, torch_ = a.get("ours"), a.get("torch")
        rows = [
            ("median step", _fmt_s(ours and ours["median_s"]),
             _fmt_s(torch_ and torch_["median_s"])),
            ("min / max", f"{_fmt_s(ours['min_s'])} / {_fmt_s(ours['max_s'])}" if ours else "-",
             f"{_fmt_s(torch_['min_s'])} / {_fmt_s(torch_['max_s'])}" if torch_ else "-"),
            ("compile (once)", _fmt_s(ours and ours["compile_s"]), "-"),
            ("page faults/step", _fmt_faults(ours), _fmt_faults(torch_)),
            ("XLA temp + out", f"{ours['temp_mb']:.0f} + {ours['output_mb']:.0f} MB"
             if ours and "temp_mb" in ours else "-", "-"),
            ("loss", f"{ours['loss']:.4f}" if ours else "-",
             f"{torch_['loss']:.4f}" if torch_ else "-"),
        ]
        out.append(_table(rows, ("", "ours (jax.jit)", "transformers+torch")))
        if ours and torch_:
            verdict = "meets" if a["ratio"] <= 0.8 else "MISSES"
            out.append(f"ratio ours/torch: {a['ratio']:.2f}x of medians ({verdict} the <= 0.80x "
                       f"target), {a['ratio_min']:.2f}x of minima"
                       + (f", {a['ratio_rounds']:.2f}x median of the per-round ratios"
                          if "ratio_rounds" in a else "") + "; "
                       f"torch {torch_['torch_version']} {torch_['threads']} threads, attention "
                       f"'{torch_['attn_implementation']}'; {len(ours['times_s'])} steps each, "
                       f"{'interleaved' if a.get('interleaved') else 'one side after the other'}")
        if ours:
            mf = a["model_flops"]
            line = (f"model FLOPs/step {mf / 1e9:.1f} G -> ours "
                    f"{mf / ours['median_s'] / 1e9:.1f} GFLOP/s")
            if torch_:
                line += f", torch {mf / torch_['median_s'] / 1e9:.1f} GFLOP/s"
            out.append(line)
        bd, bt = a.get("breakdown") or {}, a.get("breakdown_torch") or {}
        if bd or bt:
            rows = []
            for k in dict.fromkeys([*bd, *bt]):
                o, t = bd.get(k), bt.get(k)
                rows.append((k.replace("_fwd_bwd_s", "").replace("_", " "),
                             _fmt_s(o) if o else "-", _fmt_s(t) if t else "-",
                             f"{o / t:.2f}x" if o and t else "-"))
            out.append("pieces, forward+backward each (median):\n"
                       + _table(rows, ("piece", "ours", "torch", "ours/torch")))
        out.append("")
    b = res.get("compile")
    if b is not None:
        out.append(f"(b) train step (forward+backward+AdamW) compile from abstract shapes: "
                   f"{b['config_size']} ({b['params'] / 1e9:.2f} B params, {b['param_dtype']}, "
                   f"remat {b['remat']}), batch {b['batch']} x {b['seq_len']} tokens, "
                   f"{b['patches']} patches, backend {b['backend']}")
        rows = [("lower", _fmt_s(b["lower_s"])), ("compile", _fmt_s(b["compile_s"])),
                ("total", _fmt_s(b["total_s"]))]
        if "temp_bytes" in b:
            rows.append(("temp memory (XLA)", f"{b['temp_bytes'] / 2**30:.1f} GiB"))
        out.append(_table(rows, ("", "time")))
        verdict = "meets" if b["compile_s"] < 60 else "MISSES"
        out.append(f"compile {verdict} the < 60 s target")
        out.append("")
    c = res.get("mfu")
    if c is not None:
        if "skipped" in c:
            out.append(f"(c) MFU: skipped ({c['skipped']})")
        else:
            out.append(f"(c) MFU, {c['config_size']} config, bf16, 1 x {c['seq_len']} tokens "
                       f"({c['image_tokens']} image tokens), remat {c['remat']}, attention "
                       f"{c['attention_impl']}, padding mask "
                       f"{'yes' if c['padding_mask'] else 'none'}, "
                       f"on {c['device_kind']}")
            rows = [("median train step", _fmt_s(c["median_s"])),
                    ("tokens/s", f"{c['tokens_per_s']:.0f}"),
                    ("model FLOPs/step", f"{c['model_flops_per_step'] / 1e12:.2f} T"),
                    ("peak", f"{c['peak_flops'] / 1e12:.0f} T/s" if c["peak_flops"] else "unknown"),
                    ("MFU (recompute not counted)",
                     f"{100 * c['mfu']:.1f} %" if c["mfu"] is not None else "-"),
                    ("compile", _fmt_s(c["compile_s"]))]
            out.append(_table(rows, ("", "value")))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> int:
    if getattr(args, "xla_flags", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    import jax

    res: dict[str, Any] = {"jax_version": jax.__version__, "backend": jax.default_backend(),
                           "devices": [d.device_kind for d in jax.devices()][:1],
                           "cpu_cores": cpu_cores(), "python": platform.python_version(),
                           "xla_flags": os.environ.get("XLA_FLAGS", "")}
    threads = args.threads or cpu_cores()

    if not (args.skip_ours and args.skip_torch):
        c = make_config(args.config_size, args.dtype, args.remat)
        inputs = make_inputs(c, args.seq_len, args.image_size, args.batch)
        grids = grids_of(inputs)
        a: dict[str, Any] = {
            "config_size": args.config_size, "config": describe(c), "batch": args.batch,
            "seq_len": args.seq_len, "dtype": args.dtype, "remat": args.remat,
            "interleaved": bool(args.interleave),
            "backend": jax.default_backend(),
            "image_tokens": int((inputs["input_ids"] == c.image_token_id).sum()),
            "patches": int(sum(t * h * w for t, h, w in grids)),
            "model_flops": flops_lib.train_step_flops(c, args.seq_len, args.batch,
                                                      grids)["train_step"]}
        print(f"(a) {args.config_size} config: {a['config']}", file=sys.stderr)
        runners: dict[str, Any] = {}
        if not args.skip_ours:
            runners["ours"] = OursStep(c, inputs)
        if not args.skip_torch:
            runners["torch"] = TorchStep(c, inputs, threads)
        faults: dict[str, list[int]] = {}
        times = time_steps(runners, args.steps, interleave=args.interleave, faults=faults)
        for k, r in runners.items():
            a[k] = {**r.info(), **summarize(times[k]),
                    "minor_faults_per_step": int(statistics.median(faults[k]))}
        runners.clear()
        if args.breakdown and not args.skip_ours:
            a["breakdown"] = run_ours_breakdown(c, inputs, args.steps)
        if args.breakdown and not args.skip_torch:
            a["breakdown_torch"] = run_torch_breakdown(c, inputs, args.steps, threads)
        if a.get("ours") and a.get("torch"):
            a["ratio"] = a["ours"]["median_s"] / a["torch"]["median_s"]
            a["ratio_min"] = a["ours"]["min_s"] / a["torch"]["min_s"]
            if args.interleave:  # each round ran both sides back to back: a paired ratio
                a["ratio_rounds"] = statistics.median(
                    o / t for o, t in zip(a["ours"]["times_s"], a["torch"]["times_s"]))
        res["step"] = a

    if not args.skip_compile:
        c = make_config(args.compile_config, "bfloat16", args.compile_remat)
        print(f"(b) {args.compile_config} config: {describe(c)}", file=sys.stderr)
        res["compile"] = {"config_size": args.compile_config,
                          **compile_train_step(c, args.compile_seq_len,
                                               args.compile_image_size)}

    if args.mfu:
        if jax.default_backend() not in ("gpu", "tpu"):
            res["mfu"] = {"skipped": f"no GPU/TPU (backend {jax.default_backend()})"}
        else:
            c = make_config(args.mfu_config, "bfloat16", args.mfu_remat, args.mfu_attention)
            c = c.replace(scan_unroll=args.mfu_scan_unroll)
            print(f"(c) {args.mfu_config} config: {describe(c)}", file=sys.stderr)
            res["mfu"] = {"config_size": args.mfu_config,
                          **run_mfu(c, args.mfu_seq_len, args.image_size, args.mfu_steps,
                                    keep_padding_mask=args.mfu_padding_mask,
                                    profile_dir=args.mfu_profile)}

    print(report(res), end="")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    return 0
