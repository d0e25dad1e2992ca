"""`guard-jax bench rollout`: generation throughput of our rollout engines, side by side.

(a) Each engine named by --engine (guard_jax/sampling/engines.py) against transformers'
    `generate` (torch, its dynamic cache) on the same weights, prompts and lengths in one run.
    The end-of-sequence id is one outside the vocabulary, so no row stops by itself; with
    --lengths guard each row has a target length (a log-normal with a long tail, capped at
    --max-new-tokens, docs/sampling.md#measuring-a-rollout) that every side generates:
    static-batching sides (the `static` engine, transformers) decode every row until the
    longest ends, which the longest target (= the cap) makes them do; an engine whose call
    takes `target_lengths=` stops each row at its target. Throughput = useful tokens / wall
    time of a whole call (host preparation, prefill, decode, copy back), after one warm-up
    call each, the sides' calls interleaved. Next to it: row-step utilisation (useful tokens
    / (rows x decode steps)), KV-cache bytes per useful token, cache bytes one decode step
    reads, and the KV cache for G = 8 and G = 16. The static engine also reports its prefill
    and decode separately; the greedy tokens of every side are compared with transformers'.
(b) With --roofline: our decode step against the memory-bandwidth roofline. Each step reads
    the decoder weights, the LM head and the whole static cache; fraction = those bytes /
    step time / peak bandwidth (HBM peak by device kind, or --peak-bandwidth).

Heavy imports happen inside the functions, so building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
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
    a("--engine", action="append", metavar="NAME[:SLOTS]",
      help="rollout engine(s) to measure, repeatable or comma-separated (default: static); "
           "continuous:32 runs a first decode pool of 32 slots")
    a("--lengths", choices=("fixed", "guard"), default="fixed",
      help="fixed: every row --max-new-tokens; guard: per-row targets from a log-normal "
           "with a long tail capped at --max-new-tokens (fixed)")
    a("--length-median", type=int, default=0,
      help="guard lengths: median target (default max-new-tokens / 4)")
    a("--length-sigma", type=float, default=1.0, help="guard lengths: log-normal sigma (1.0)")
    a("--json", metavar="PATH", help="also write every number to this JSON file")


def engine_names(args) -> list[str]:
    """The --engine specs in order (default: static), each NAME or NAME:SLOTS (a decode pool
    of SLOTS for an engine that has one), NAME checked against ENGINES."""
    from guard_jax.sampling.engines import ENGINES
    names = [n.strip() for a in (args.engine or ["static"]) for n in a.split(",") if n.strip()]
    unknown = [n for n in names if split_engine(n)[0] not in ENGINES]
    if unknown or not names:
        raise InputError(f"--engine {','.join(unknown) or '(empty)'}: unknown rollout engine; "
                         f"known: {', '.join(ENGINES)}")
    return list(dict.fromkeys(names))


def split_engine(spec: str) -> tuple[str, int]:
    """'continuous:32' -> ('continuous', 32); 'static' -> ('static', 0)."""
    name, _, slots = spec.partition(":")
    if slots and not (slots.isdigit() and int(slots) > 0):
        raise InputError(f"--engine {spec}: the decode slots after ':' must be a positive "
                         "integer")
    return name, int(slots or 0)


def target_lengths(rows: int, max_new: int, kind: str = "fixed", median: int = 0,
                   sigma: float = 1.0, seed: int = 0) -> np.ndarray:
    """Per-row target lengths [rows] int. guard: the log-normal's quantiles at (i + 0.5) /
    rows (median, sigma), rounded, in [1, max_new], shuffled over the rows; the longest is
    set to max_new, as a guard batch's longest analysis runs into the cap."""
    if kind == "fixed":
        return np.full(rows, max_new, np.int64)
    median = median or max(max_new // 4, 1)
    z = np.array([statistics.NormalDist().inv_cdf((i + 0.5) / rows) for i in range(rows)])
    t = np.clip(np.rint(median * np.exp(sigma * z)), 1, max_new).astype(np.int64)
    t[-1] = max_new
    return np.random.default_rng(seed).permutation(t)


def kv_cache_bytes(c, rows: int, slots: int, dtype: str) -> int:
    """Bytes of a dense keys + values cache of `rows` x `slots` (the static engine's:
    slots = prompt + max_new_tokens for every row, the prompt tiled G times)."""
    t = c.text
    return int(2 * t.num_hidden_layers * rows * slots * t.num_key_value_heads * t.head_dim
               * np.dtype(dtype).itemsize)


def takes_target_lengths(engine) -> bool:
    return "target_lengths" in inspect.signature(engine.__call__).parameters


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


def sampling_params(model, args, no_eos: int):
    from guard_jax.sampling.sampler import SamplingParams
    return SamplingParams(max_new_tokens=args.max_new_tokens, eos_token_ids=(no_eos,),
                          pad_token_id=model.config.generation_pad_id,
                          temperature=args.temperature, num_samples=args.num_samples)


def engine_call(name: str, model, inputs, args, no_eos: int, targets):
    """(engine, () -> SampleOutput as numpy): one call of engine `name`, host preparation
    (M-RoPE positions, vision segments, transfer) and the copy back included. `targets`
    [rows] are passed as `target_lengths` when the engine's call takes them."""
    import jax
    from flax import nnx
    from guard_jax.distributed import host_array
    from guard_jax.sampling.engines import make_engine
    from guard_jax.sampling.sampler import SampleOutput

    graphdef, state = nnx.split(model)
    base, slots = split_engine(name)
    try:
        engine = make_engine(base, graphdef, sampling_params(model, args, no_eos), slots=slots)
    except ValueError as e:
        raise InputError(f"--engine {name}: {e}") from e
    kw = {"target_lengths": targets} if takes_target_lengths(engine) else {}
    key = jax.random.key(0)

    def call():
        batch = jax.device_put(model.prepare_inputs(
            inputs["input_ids"], attention_mask=inputs["attention_mask"],
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw")))
        return SampleOutput(*(host_array(a) for a in engine(state, batch, key, **kw)))
    return engine, call


def engine_metrics(c, engine, out, args, targets, *, forced: bool, static: bool,
                   weights: int) -> dict:
    """Utilisation and cache figures of one engine's output (docs/sampling.md#measuring-a-
    rollout). Useful tokens: the targets' sum for a static-batching engine (which runs every
    row to the longest), else the rows' lengths. Row-steps = the decode rows summed over the
    decode steps (the engine's `row_steps()` where its pool shrinks, else rows x steps) + one
    prefill-chosen first token per row.
    The cache figures come from the engine's
    `kv_cache_bytes(prompts, prompt_len, num_samples=G)` and `kv_bytes_read_per_step(out)`
    where it has them; the static engine's are computed (a dense cache of rows x (prompt +
    max_new) slots, read whole every step); otherwise None (not reported)."""
    rows, n = targets.size, args.max_new_tokens
    useful = int(targets.sum()) if static else int(np.sum(out.lengths))
    pool = engine.pool_size(rows) if hasattr(engine, "pool_size") else rows
    slot_steps = engine.row_steps() if hasattr(engine, "row_steps") else pool * int(out.steps)
    row_steps = slot_steps + rows

    def kv(g):
        if hasattr(engine, "kv_cache_bytes"):
            return int(engine.kv_cache_bytes(args.batch, args.prompt_len, num_samples=g))
        return (kv_cache_bytes(c, args.batch * g, args.prompt_len + n, args.dtype)
                if static else None)

    cache = kv(args.num_samples)
    read = (int(engine.kv_bytes_read_per_step(out)) if hasattr(engine, "kv_bytes_read_per_step")
            else cache)
    return {"useful_tokens": useful, "row_steps": int(row_steps), "decode_rows": int(pool),
            "utilisation": useful / row_steps, "kv_cache_bytes": cache,
            "kv_bytes_per_useful_token": None if cache is None else cache / useful,
            "kv_bytes_read_per_step": read,
            "bytes_read_per_step": None if read is None else weights + read,
            "lengths_forced": forced, "kv_cache_bytes_g8": kv(8), "kv_cache_bytes_g16": kv(16)}


def ours_phases(sampler, model, inputs, args) -> dict[str, Any]:
    """The two jitted halves of the static engine's call (`sampler`, compiled already),
    timed on device-resident inputs."""
    import jax
    from flax import nnx

    _, state = nnx.split(model)
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
    names = engine_names(args)
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

    targets = target_lengths(rows, args.max_new_tokens, args.lengths, args.length_median,
                             args.length_sigma)
    res.update(engines={}, lengths=args.lengths, target_lengths=targets.tolist())
    if args.lengths == "guard":
        print(f"  lengths: log-normal, median {args.length_median or args.max_new_tokens // 4}, "
              f"sigma {args.length_sigma}, capped at {args.max_new_tokens}: mean "
              f"{targets.mean():.1f}, {int(targets.sum())} useful tokens of "
              f"{rows * args.max_new_tokens}")
    engines, calls = {}, {}
    for name in names:
        engines[name], calls[name] = engine_call(name, model, inputs, args, no_eos, targets)
    if hf is not None:
        calls["torch"] = torch_call(hf, inputs, args, no_eos, c.generation_pad_id)
    first, times = time_calls(calls, args.repeats)
    weights = decode_bytes_per_step(c, 0)["weights"]
    print(f"  {'(a) side':28s}{'tokens/s':>10s}{'util':>7s}{'KV MB':>9s}{'KV B/token':>12s}"
          f"{'read/step MB':>14s}{'KV MB G=8':>11s}{'G=16':>9s}")

    def row(label, r):
        def f(key, width, scale=1e-6, fmt=".1f"):
            v = r[key]
            return f"{'n/a':>{width}s}" if v is None else f"{v * scale:{width}{fmt}}"
        print(f"  {label:28s}{r['tokens_per_s']:10.1f}{r['utilisation']:7.1%}"
              f"{f('kv_cache_bytes', 9)}{f('kv_bytes_per_useful_token', 12, 1, '.0f')}"
              f"{f('bytes_read_per_step', 14)}{f('kv_cache_bytes_g8', 11)}"
              f"{f('kv_cache_bytes_g16', 9)}")

    for name, engine in engines.items():
        out = first[name]
        # static batching runs every row to the longest target, which is the cap
        forced = takes_target_lengths(engine) or name == "static" or args.lengths == "fixed"
        r = dict(generate=summarize(times[name]), first_call_s=times[name + "_first_call_s"],
                 decode_steps=int(out.steps),
                 **engine_metrics(c, engine, out, args, targets, forced=forced,
                                  static=name == "static", weights=weights))
        r["tokens_per_s"] = r["useful_tokens"] / r["generate"]["median_s"]
        res["engines"][name] = r
        row(f"ours: {name}" + ("" if forced else " (unforced)"), r)
    ours = None
    if "static" in engines:
        ours = ours_phases(engines["static"], model, inputs, args)
        res["engines"]["static"].update(ours)
        print(f"      static: prefill {ours['prefill']['median_s'] * 1e3:.1f} ms, decode "
              f"{ours['decode']['median_s'] * 1e3:.1f} ms for {ours['decode_steps']} steps; "
              f"first call with compile {res['engines']['static']['first_call_s']:.1f} s")
    res["ours"] = res["engines"][next(iter(engines))]
    if hf is not None:
        import torch
        n, length = args.max_new_tokens, args.prompt_len
        theirs = first["torch"]
        # transformers' dynamic cache ends with every row's prompt + N slots; a step reads
        # the filled part, on average prompt + (N - 1) / 2 slots
        t = {"generate": summarize(times["torch"]), "first_call_s": times["torch_first_call_s"],
             "threads": torch.get_num_threads(), "torch_version": torch.__version__,
             "useful_tokens": int(targets.sum()), "row_steps": rows * n,
             "kv_cache_bytes": kv_cache_bytes(c, rows, length + n, args.dtype),
             "kv_bytes_read_per_step": kv_cache_bytes(c, rows, length + (n - 1) / 2,
                                                      args.dtype),
             "kv_cache_bytes_g8": kv_cache_bytes(c, args.batch * 8, length + n, args.dtype),
             "kv_cache_bytes_g16": kv_cache_bytes(c, args.batch * 16, length + n, args.dtype)}
        t.update(utilisation=t["useful_tokens"] / t["row_steps"],
                 kv_bytes_per_useful_token=t["kv_cache_bytes"] / t["useful_tokens"],
                 bytes_read_per_step=weights + t["kv_bytes_read_per_step"],
                 tokens_per_s=t["useful_tokens"] / t["generate"]["median_s"])
        res["torch"] = t
        row(f"transformers ({t['threads']} threads)", t)
        for name in engines:
            mine = first[name].tokens
            if theirs.shape != mine.shape:
                raise RuntimeError(f"transformers generated {theirs.shape} tokens, engine "
                                   f"{name} {mine.shape}: the runs are not comparable")
            e = res["engines"][name]
            # compared over each row's target: static batching runs on past it
            keep = np.arange(theirs.shape[1])[None] < targets[:, None]
            e["token_agreement"] = float(np.mean((theirs == mine)[keep]))
            e["ratio"] = e["tokens_per_s"] / t["tokens_per_s"]
            agree = (f"  (greedy tokens equal: {e['token_agreement']:.1%})"
                     if args.temperature == 0 else "")
            print(f"      ratio {name}/torch: {e['ratio']:6.2f}x tokens/s{agree}")
        res["ratio"], res["token_agreement"] = res["ours"]["ratio"], res["ours"]["token_agreement"]
    if len(engines) > 1:
        base = res["engines"][next(iter(engines))]["tokens_per_s"]
        for name in list(engines)[1:]:
            print(f"      ratio {name}/{next(iter(engines))}: "
                  f"{res['engines'][name]['tokens_per_s'] / base:6.2f}x tokens/s")

    if args.roofline:
        peak = args.peak_bandwidth * 1e9 if args.peak_bandwidth else peak_bandwidth(device)
        if ours is None:
            res["roofline"] = {"skipped": "the roofline is of the static engine: add "
                                          "--engine static"}
            print(f"  (b) roofline: {res['roofline']['skipped']}")
        elif peak is None:
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


__all__ = ["add_arguments", "main", "peak_bandwidth", "decode_bytes_per_step", "engine_names",
           "target_lengths", "kv_cache_bytes"]
