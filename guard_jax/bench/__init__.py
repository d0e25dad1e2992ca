"""`guard-jax bench NAME`: side-by-side performance measurements, one sub-benchmark per module.

Each sub-benchmark module defines `add_arguments(parser)` and `main(args) -> int`, like the CLI's
commands, and imports its heavy dependencies (jax, torch, transformers) inside `main` only, so
building the CLI parser stays cheap.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module, help)
BENCHES = {
    "model": ("guard_jax.bench.model_bench",
              "Qwen2.5-VL train step: ours (JAX) vs transformers+torch, 7B compile time, MFU"),
    "data": ("guard_jax.bench.data_bench",
             "preprocess_images vs transformers' image processor; grain loader samples/s"),
    "kernels": ("guard_jax.bench.kernels",
                "cuDNN vs XLA attention (equality, speed) and train-step MFU on one device"),
    "sft": ("guard_jax.bench.sft_bench",
            "SFT train step tokens/s: ours vs transformers+torch (same weights, batch, loss); MFU"),
    "reward": ("guard_jax.bench.reward_bench",
               "recipe rewards inside jit vs host decode + Python references (sequences/s)"),
    "rollout": ("guard_jax.bench.rollout_bench",
                "generate tokens/s: ours (KV cache, while_loop) vs transformers; HBM roofline"),
    "grpo": ("guard_jax.bench.grpo_bench",
             "GRPO update micro-batch: fused head + log-softmax vs autodiff (time, memory)"),
    "grpo-step": ("guard_jax.bench.grpo_step_bench",
                  "one whole GRPO step, ours vs TRL's GRPOTrainer: per-phase time and RSS"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    for name, (module, help_text) in BENCHES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_bench_module=module)


def main(args: argparse.Namespace) -> int:
    module = getattr(args, "_bench_module", None)
    if module is None:  # reported here too: the bench tests call this main directly
        from guard_jax.errors import InputError, report_input_error
        return report_input_error("bench", InputError("name a benchmark: " + ", ".join(BENCHES)))
    return int(importlib.import_module(module).main(args) or 0)


__all__ = ["BENCHES", "add_arguments", "main"]
