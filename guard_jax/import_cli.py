"""`guard-jax import --hf-dir DIR --out CKPT_DIR [--config configs/X.py] [--config.a.b=v]`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf-dir", required=True, help="an HF Qwen2.5-VL directory")
    p.add_argument("--out", required=True, help="the checkpoint directory to write (step 0)")
    p.add_argument("--config", default=None,
                   help="the run config whose optimizer state to create (default: base)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="parameter dtype without --config (default: float32)")
    p.set_defaults(overrides=[])  # --config.a.b=value arguments land here (see cli.py)


def main(args) -> int:
    from guard_jax.training.hf_convert import import_hf
    out = import_hf(args.hf_dir, args.out, config_path=args.config, overrides=args.overrides,
                    dtype=args.dtype)
    print(f"wrote step 0 to {out}; resume it with guard-jax train --workdir {out}")
    return 0
