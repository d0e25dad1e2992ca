"""`guard-jax bench rollout`: generation throughput of `guard_jax.generate`, side by side.

(a) Ours (jitted prefill + one `lax.while_loop` decode over a static KV cache) against
    transformers' `generate` (torch, its dynamic cache) on the same weights, prompts and
    lengths in one run. Both sides generate exactly --max-new-tokens tokens per row (the
    end-of-sequence id is one outside the vocabulary, so no row stops early) and the same
    greedy tokens are expected; the agreement is printed. Throughput = rows x new tokens /
    wall time of a whole generate call (host preparation, prefill, decode, copy back), after
    one warm-up call each, the two sides' calls interleaved; ours also reports its prefill and
    decode separately.
(b) With --roofline: our decode step against the memory-bandwidth roofline. Each step reads
    the decoder weights, the LM head and the whole static cache; fraction = those bytes /
    step time / peak bandwidth (HBM peak by device kind, or --peak-bandwidth).

Heavy imports happen inside the functions, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

import numpy as np

from guard_jax.bench.model_bench import (
    cpu_cores, describe, make_config, make_inputs, progress, summarize)
from guard_jax.errors import InputError

# Peak memory bandwidth per chip, bytes/s (vendor figures). Matched against jax's device_kind,
# lower-cased, in this order.
PEAK_BANDWIDTH = (
    ("h200", 4.8e12),
    ("h100 pcie", 2.0e12),
    ("h100", 3.35e12),   # SXM, HBM3
    ("a100-sxm4-80gb", 2.039e12),
    ("a100", 1.555e12),
    ("v5p", 2.765e12),
    ("tpu v5 lite", 0.819e12), ("v5e", 0.819e12),
    ("tpu v5", 2.765e12),
    ("v6 lite", 1.64e12), ("v6e", 1.64e12),
)


def peak_bandwidth(device_kind: str) -> float | None:
    k = device_kind.lower()
    return next((bw for name, bw in PEAK_BANDWIDTH if name in k), None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config-size", choices=("small", "tiny", "3b", "7b"), default="small",
      help="model: 'small' (text 512 x 4 layers, full 151,936 vocabulary; default), the "
           "tiny parity config, or the real 3b/7b")
    a("--batch", type=int, default=8, help="prompts per call (8)")
    a("--num-samples", type=int, default=1,
      help="rows per prompt (G); > 1 needs --temperature > 0 on the torch side (1)")
    a("--prompt-len", type=int, default=64, help="tokens per prompt, image tokens included (64)")
    a("--max-new-tokens", type=int, default=64, help="new tokens per row (64)")
    a("--image-size", type=int, default=0,
      help="side in pixels of one square image per prompt (a multiple of 28; 0 = text only)")
    a("--temperature", type=float, default=0.0, help="0 = greedy on both sides (0)")
    a("--dtype", choices=("float32", "bfloat16"), default="float32",
      help="parameter and compute dtype, both sides (float32)")
    a("--repeats", type=int, default=3, help="timed calls per side after one warm-up (3)")
    a("--threads", type=int, default=0, help="torch intra-op threads (default: all cores)")
    a("--skip-torch", action="store_true",
      help="ours only (weights drawn on the device; for the 3b/7b roofline on a GPU)")
    a("--roofline", "--gpu-roofline", dest="roofline", action="store_true",
      help="also report the decode step against the memory-bandwidth roofline")
    a("--peak-bandwidth", type=float, default=None, metavar="GB/s",
      help="peak memory bandwidth for --roofline (default: by device kind; none for CPUs)")
    a("--json", metavar="PATH", help="also write every number to this JSON file")


# ---------------------------------------------------------------------------- the two sides
def _ours_from_torch(hf, dtype: str):
    """Our model holding the torch model's weights (through an HF directory on disk)."""
    import guard_jax
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        return guard_jax.load_hf(d, dtype=dtype, progress=False)


def _ours_on_device(c):
    from flax import nnx
    from guard_jax.bench.model_bench import device_init
    graphdef, params = device_init(c)
    return nnx.merge(graphdef, params)


def ours_call(model, inputs, args, no_eos: int):
    """() -> new token ids [rows, max_new_tokens]: one `guard_jax.generate` call, host
    preparation and the copy back included."""
    import guard_jax
    kw = dict(attention_mask=inputs["attention_mask"], pixel_values=inputs.get("pixel_values"),
              image_grid_thw=inputs.get("image_grid_thw"), max_new_tokens=args.max_new_tokens,
              temperature=args.temperature, eos_token_ids=[no_eos], rng=0,
              num_samples=args.num_samples)
    return lambda: guard_jax.generate(model, inputs["input_ids"], **kw)


def ours_phases(model, inputs, args, no_eos: int) -> dict[str, Any]:
    """The two jitted halves of the same generate call, timed on device-resident inputs."""
    import jax
    from flax import nnx
    from guard_jax.sampling.generate import sampler_for
    from guard_jax.sampling.sampler import SamplingParams

    params = SamplingParams(max_new_tokens=args.max_new_tokens, eos_token_ids=(no_eos,),
                            pad_token_id=model.config.generation_pad_id,
                            temperature=args.temperature, num_samples=args.num_samples)
    graphdef, state = nnx.split(model)
    sampler = sampler_for(graphdef, params)  # the one generate() used: compiled already
    batch = jax.device_put(model.prepare_inputs(
        inputs["input_ids"], attention_mask=inputs["attention_mask"],
        pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw")))
    prefill_fn, decode_fn = sampler.functions(state, batch)
    pre, dec, steps = [], [], 0
    key = jax.random.key(0)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        cache, logits = jax.block_until_ready(prefill_fn(state, batch))
        t1 = time.perf_counter()
        res, cache = jax.block_until_ready(decode_fn(state, cache, logits, key))
        pre.append(t1 - t0)
        dec.append(time.perf_counter() - t1)
        steps = int(res.steps)
    return {"prefill": summarize(pre), "decode": summarize(dec), "decode_steps": steps,
            "cache_bytes": int(cache.k.nbytes + cache.v.nbytes),
            "cache_slots": int(cache.k.shape[2])}


def torch_call(hf, inputs, args, no_eos: int, pad_id: int):
    """() -> new token ids [rows, max_new_tokens]: one transformers `generate` call."""
    import torch
    ids = torch.as_tensor(inputs["input_ids"], dtype=torch.long)
    kw = dict(input_ids=ids, attention_mask=torch.as_tensor(inputs["attention_mask"]),
              max_new_tokens=args.max_new_tokens, eos_token_id=no_eos, pad_token_id=pad_id,
              top_k=None, top_p=None)
    if args.temperature > 0:
        kw.update(do_sample=True, temperature=args.temperature,
                  num_return_sequences=args.num_samples)
    else:
        kw.update(do_sample=False)
    if "pixel_values" in inputs:
        kw.update(pixel_values=torch.as_tensor(inputs["pixel_values"]).to(hf.dtype),
                  image_grid_thw=torch.as_tensor(inputs["image_grid_thw"]),
                  mm_token_type_ids=(ids == hf.config.image_token_id).long())

    def call():
        hf.model.rope_deltas = None
        with torch.no_grad():
            return hf.generate(**kw)[:, ids.shape[1]:].numpy()
    return call


def time_calls(calls: dict[str, Any], repeats: int) -> tuple[dict, dict]:
    """One warm-up call each (ours compiles there), then `repeats` rounds that run every
    side once in turn, so a load that comes and goes on a shared machine weighs on both.
    Returns ({side: warm-up output}, {side: [seconds]})."""
    first, times = {}, {k: [] for k in calls}
    for k, call in calls.items():
        with progress(f"{k}: warm-up call"):
            t0 = time.perf_counter()
            first[k] = call()
            times[k + "_first_call_s"] = time.perf_counter() - t0
    with progress(f"{' and '.join(calls)}: {repeats} timed generate calls each, interleaved"):
        for _ in range(repeats):
            for k, call in calls.items():
                t0 = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - t0)
    return first, times


# ---------------------------------------------------------------------------- roofline
def decode_bytes_per_step(c, cache_bytes: int) -> dict[str, int]:
    """Bytes one decode step must read: every decoder layer, the final norm, the LM head
    (the tied embedding when tied; the embedding lookup of a few rows is left out) and the
    whole static cache (our step attends over all slots, masked)."""
    from guard_jax.models.qwen2_5_vl.params import text_specs
    import jax.numpy as jnp
    item = jnp.dtype(c.param_dtype).itemsize
    specs = text_specs(c)
    layers = sum(s.size for s in specs["layers"].values())
    head = specs["top"]["lm_head" if "lm_head" in specs["top"] else "embed"].size
    weights = (layers + head + specs["top"]["norm"].size) * item
    return {"weights": int(weights), "cache": int(cache_bytes),
            "total": int(weights + cache_bytes)}


def roofline(c, ours: dict[str, Any], peak: float) -> dict[str, Any]:
    steps = max(ours["decode_steps"], 1)
    # the decode call = first-token choice + `steps` model steps; the choice is negligible
    step_s = ours["decode"]["median_s"] / steps
    b = decode_bytes_per_step(c, ours["cache_bytes"])
    achieved = b["total"] / step_s
    return {"step_s": step_s, "bytes_per_step": b, "achieved_bytes_per_s": achieved,
            "peak_bytes_per_s": peak, "fraction": achieved / peak}


# ---------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> int:
    import jax

    c = make_config(args.config_size, args.dtype)
    if args.num_samples > 1 and args.temperature == 0 and not args.skip_torch:
        raise InputError("--num-samples > 1 needs --temperature > 0 (transformers' greedy "
                         "generate returns one sequence per prompt)")
    inputs = make_inputs(c, args.prompt_len, args.image_size, args.batch)
    no_eos = c.text.vocab_size  # never generated: every row runs to max_new_tokens
    rows = args.batch * args.num_samples
    device = jax.devices()[0].device_kind
    res: dict[str, Any] = {
        "config": args.config_size, "model": describe(c), "dtype": args.dtype,
        "backend": jax.default_backend(), "device_kind": device, "batch": args.batch,
        "num_samples": args.num_samples, "rows": rows, "prompt_len": args.prompt_len,
        "max_new_tokens": args.max_new_tokens, "image_size": args.image_size,
        "temperature": args.temperature, "jax_version": jax.__version__}
    print(f"bench rollout: {args.config_size} ({describe(c)}), {args.dtype}, {rows} rows "
          f"({args.batch} prompts x {args.num_samples}), prompt {args.prompt_len} tokens"
          f"{f' with a {args.image_size}px image' if args.image_size else ''}, "
          f"{args.max_new_tokens} new tokens, backend {res['backend']} ({device})")

    hf = None
    if args.skip_torch:
        with progress("ours: initialising parameters on the device"):
            model = _ours_on_device(c)
    else:
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration
        torch.set_num_threads(args.threads or cpu_cores())
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        with progress("torch: building the transformers model; ours: loading its weights"):
            torch.manual_seed(0)
            hf = Qwen2_5_VLForConditionalGeneration(c.to_transformers()).to(tdtype).eval()
            model = _ours_from_torch(hf, args.dtype)

    calls = {"ours": ours_call(model, inputs, args, no_eos)}
    if hf is not None:
        calls["torch"] = torch_call(hf, inputs, args, no_eos, c.generation_pad_id)
    first, times = time_calls(calls, args.repeats)
    ours = ours_phases(model, inputs, args, no_eos)
    new_tokens = rows * args.max_new_tokens
    res["ours"] = dict(generate=summarize(times["ours"]),
                       first_call_s=times["ours_first_call_s"], **ours)
    res["ours"]["tokens_per_s"] = new_tokens / res["ours"]["generate"]["median_s"]
    print(f"  (a) ours (jax.jit):         {res['ours']['tokens_per_s']:10.1f} tokens/s  "
          f"(generate {res['ours']['generate']['median_s'] * 1e3:.1f} ms: prefill "
          f"{ours['prefill']['median_s'] * 1e3:.1f} ms, decode "
          f"{ours['decode']['median_s'] * 1e3:.1f} ms for {ours['decode_steps']} steps; "
          f"first call with compile {res['ours']['first_call_s']:.1f} s)")
    if hf is not None:
        import torch
        res["torch"] = {"generate": summarize(times["torch"]),
                        "first_call_s": times["torch_first_call_s"],
                        "threads": torch.get_num_threads(), "torch_version": torch.__version__}
        res["torch"]["tokens_per_s"] = new_tokens / res["torch"]["generate"]["median_s"]
        res["ratio"] = res["ours"]["tokens_per_s"] / res["torch"]["tokens_per_s"]
        theirs, mine = first["torch"], first["ours"]
        if theirs.shape != mine.shape:
            raise RuntimeError(f"transformers generated {theirs.shape} tokens, ours "
                               f"{mine.shape}: the two runs are not comparable")
        res["token_agreement"] = float(np.mean(theirs == mine))
        print(f"      transformers+torch:     {res['torch']['tokens_per_s']:10.1f} tokens/s  "
              f"(generate {res['torch']['generate']['median_s'] * 1e3:.1f} ms, "
              f"{res['torch']['threads']} threads)")
        agree = (f"  (greedy tokens equal: {res['token_agreement']:.1%})"
                 if args.temperature == 0 else "")
        print(f"      ratio ours/torch:       {res['ratio']:10.2f}x tokens/s{agree}")

    if args.roofline:
        peak = args.peak_bandwidth * 1e9 if args.peak_bandwidth else peak_bandwidth(device)
        if peak is None:
            res["roofline"] = {"skipped": f"no peak bandwidth known for {device!r}; pass "
                                          "--peak-bandwidth GB/s"}
            print(f"  (b) roofline: {res['roofline']['skipped']}")
        else:
            r = roofline(c, ours, peak)
            res["roofline"] = r
            b = r["bytes_per_step"]
            print(f"  (b) decode step {r['step_s'] * 1e3:.3f} ms reads {b['total'] / 1e6:.1f} MB "
                  f"(weights {b['weights'] / 1e6:.1f} MB + cache {b['cache'] / 1e6:.1f} MB): "
                  f"{r['achieved_bytes_per_s'] / 1e9:.1f} GB/s of {peak / 1e9:.0f} GB/s peak = "
                  f"{r['fraction']:.1%} of the bandwidth roofline")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


__all__ = ["add_arguments", "main", "peak_bandwidth", "decode_bytes_per_step"]
