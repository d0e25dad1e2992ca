"""`guard-jax export --checkpoint DIR --out HF_DIR [--step N] [--dtype bfloat16]`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a training workdir (orbax checkpoints)")
    p.add_argument("--out", required=True, help="the HF directory to write")
    p.add_argument("--step", type=int, default=None, help="default: the newest step")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights dtype in the export (default: the parameters' own)")


def main(args) -> int:
    from guard_jax.training.hf_convert import export_checkpoint
    out = export_checkpoint(args.checkpoint, args.out, step=args.step, dtype=args.dtype)
    print(f"wrote {out}")
    return 0
