"""`guard-jax export --checkpoint DIR --out HF_DIR [--step N] [--dtype bfloat16] [--overwrite]`.

What --out may be, and what is refused: docs/export-import.md."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a training workdir (orbax checkpoints)")
    p.add_argument("--out", required=True, help="the HF directory to write")
    p.add_argument("--step", type=int, default=None, help="default: the newest step")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights dtype in the export (default: the parameters' own)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an HF model directory that guard-jax export did not write (a "
                        "previous export is replaced without it; other files are never deleted)")


def main(args) -> int:
    from guard_jax.training.hf_convert import export_checkpoint
    out = export_checkpoint(args.checkpoint, args.out, step=args.step, dtype=args.dtype,
                            overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
