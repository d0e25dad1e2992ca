"""`guard-jax bench grpo`: one GRPO update micro-batch (forward, the clipped policy loss with its
entropy, backward; what `guard-jax train` runs per micro-batch) with the fused output projection
+ log-softmax (`training/head_loss.head_token_logprobs`) against autodiff of the plain
logits + `grpo_loss.token_logprobs`, on the same model, weights and rollouts, in one process.

Prints each side's XLA temporary memory and median time, the ratio, and how far the two
sides' losses and gradients are apart (they must agree: the run fails otherwise).
"""

from __future__ import annotations

import argparse
import json
import time

SIDES = ("fused", "autodiff")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-size", choices=("small", "tiny", "3b", "7b"), default="small",
                   help="model preset (small: text 512 x 4 layers with the real 151,936-token "
                        "vocabulary; the default)")
    p.add_argument("--prompts", type=int, default=2, help="prompts in the micro-batch (2)")
    p.add_argument("--generations", type=int, default=4, help="G, samples per prompt (4)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens, text only (128)")
    p.add_argument("--new-tokens", type=int, default=256, help="completion tokens (256)")
    p.add_argument("--entropy-coeff", type=float, default=0.0,
                   help="grpo.entropy_coeff (0: the entropy is logged, not trained; ProGuard "
                        "uses 0.01)")
    p.add_argument("--temperature", type=float, default=1.0, help="grpo.temperature (1.0)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="parameter and compute dtype (float32)")
    p.add_argument("--rounds", type=int, default=5,
                   help="timed rounds after a warm-up; each round runs both sides (5)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")


def make_batch(c, prompts: int, generations: int, prompt_len: int, new_tokens: int,
               seed: int = 0):
    """The update's micro-batch: prompt inputs (text only) and random rollouts with their
    old log-probs, advantages and weights, as `GRPOTrainer` builds it."""
    import jax.numpy as jnp
    import numpy as np

    from guard_jax.bench.model_bench import device_batch, make_inputs

    inputs = make_inputs(c, prompt_len, 0, batch=prompts, seed=seed)
    prepared, _ = device_batch(c, inputs)
    rng = np.random.default_rng(seed)
    b = prompts * generations
    batch = {k: prepared[k] for k in ("input_ids", "attention_mask", "position_ids")}
    batch.update(
        completion=jnp.asarray(rng.integers(0, c.text.vocab_size, (b, new_tokens)), jnp.int32),
        completion_mask=jnp.ones((b, new_tokens), jnp.int32),
        old_logp=jnp.asarray(-5.0 * rng.random((b, new_tokens)), jnp.float32),
        advantages=jnp.asarray(rng.standard_normal(b), jnp.float32),
        weights=jnp.ones((b, new_tokens), jnp.float32),
        eps_low=jnp.float32(0.2), eps_high=jnp.float32(0.28),
        denom=jnp.float32(b * new_tokens))
    return batch


def main(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from guard_jax.bench.model_bench import make_config, progress, summarize
    from guard_jax.models.qwen2_5_vl.model import init_model
    from guard_jax.training import grpo

    c = make_config(args.config_size, dtype=args.dtype)
    batch = make_batch(c, args.prompts, args.generations, args.prompt_len, args.new_tokens)
    with progress("grpo: initialising parameters"):
        graphdef, params = nnx.split(init_model(c, 0), nnx.Param)
    g = grpo.L.LossSettings(temperature=args.temperature, clip_ratio_dual=3.0,
                            entropy_coeff=args.entropy_coeff)
    compiled, res = {}, {"sides": {}}
    for side in SIDES:
        def loss(params, batch, fused=side == "fused"):
            return grpo._loss(g, 1, nnx.merge(graphdef, params), batch, fused=fused)
        with progress(f"grpo: compiling the {side} update"):
            t0 = time.perf_counter()
            compiled[side] = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(
                params, batch).compile()
            compile_s = time.perf_counter() - t0
        mem = compiled[side].memory_analysis()
        res["sides"][side] = {"compile_s": compile_s,
                              "temp_mb": mem.temp_size_in_bytes / 1e6 if mem else None}
    outs = {side: compiled[side](params, batch) for side in SIDES}
    (loss_f, _), grads_f = outs["fused"]
    (loss_a, _), grads_a = outs["autodiff"]
    rel = max(float(jnp.max(jnp.abs(a - b))) / (float(jnp.max(jnp.abs(b))) + 1e-30)
              for a, b in zip(jax.tree.leaves(grads_f), jax.tree.leaves(grads_a)))
    res.update(loss_fused=float(loss_f), loss_autodiff=float(loss_a), max_rel_grad_diff=rel)
    del outs, grads_f, grads_a
    times = {side: [] for side in SIDES}
    with progress(f"grpo: 1 warm-up + {args.rounds} rounds of both sides"):
        for r in range(args.rounds + 1):
            for side in SIDES:
                t0 = time.perf_counter()
                jax.block_until_ready(compiled[side](params, batch))
                if r:
                    times[side].append(time.perf_counter() - t0)
    for side in SIDES:
        res["sides"][side].update(summarize(times[side]))
    ratio = float(np.median(np.array(times["fused"]) / np.array(times["autodiff"])))
    tokens = args.prompts * args.generations * args.new_tokens
    res.update(config=args.config_size, dtype=args.dtype, tokens=tokens,
               vocab=c.text.vocab_size, entropy_coeff=args.entropy_coeff,
               temperature=args.temperature, ratio=ratio, backend=jax.default_backend())
    fs, ad = res["sides"]["fused"], res["sides"]["autodiff"]
    print(f"GRPO update micro-batch, {args.config_size} config ({c.text.vocab_size} vocab), "
          f"{args.prompts} prompts x G {args.generations} x {args.new_tokens} new tokens "
          f"({tokens} scored tokens), {args.dtype}, entropy_coeff {args.entropy_coeff}, "
          f"{jax.default_backend()}")
    print(f"{'':22s}{'fused head':>14s}{'autodiff head':>16s}")
    print(f"{'median time':22s}{fs['median_s']:13.3f}s{ad['median_s']:15.3f}s")
    if fs["temp_mb"] is not None:
        print(f"{'XLA temp memory':22s}{fs['temp_mb']:11.0f} MB{ad['temp_mb']:13.0f} MB")
    print(f"loss {res['loss_fused']:.7f} vs {res['loss_autodiff']:.7f}; largest gradient "
          f"difference {rel:.1e} of the largest gradient")
    print(f"ratio fused/autodiff: {ratio:.2f}x (median of per-round ratios)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")
    tol = 1e-4 if args.dtype == "float32" else 5e-2
    if abs(res["loss_fused"] - res["loss_autodiff"]) > tol * max(1.0, abs(res["loss_autodiff"])) \
            or rel > tol:
        print(f"guard-jax bench grpo: the two sides disagree (tolerance {tol:g})")
        return 1
    return 0


__all__ = ["add_arguments", "main", "make_batch"]
