"""`guard-jax train --config configs/X.py [--config.a.b=v ...] --workdir DIR
[--allow-config-change KEY ...]`.

A workdir that holds a checkpoint is resumed; docs/checkpoints.md says which config changes a
resume refuses (exit 2) and which it takes with a warning."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a run config file (configs/*.py)")
    p.add_argument("--workdir", required=True,
                   help="checkpoints, metrics and logs; a run resumes when it holds a checkpoint")
    p.add_argument("--allow-config-change", action="append", default=[], metavar="KEY",
                   help="resume although config key KEY (e.g. data.path) differs from the "
                        "checkpoint's, where a resume would refuse it; repeat for more keys")
    p.set_defaults(overrides=[])  # --config.a.b=value arguments land here (see cli.py)


def main(args) -> int:
    import json
    import logging

    from guard_jax.run_config import load_config
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run = load_config(args.config, args.overrides)  # validated before any device work
    from guard_jax.training.metrics import NonFiniteLossError
    if run.trainer == "grpo":
        from guard_jax.training.grpo import train
    else:
        from guard_jax.training.sft import train
    try:
        result = train(run, args.workdir, allow_config_change=args.allow_config_change)
    except NonFiniteLossError as e:
        print(f"guard-jax train: {e}", file=sys.stderr)
        return 3
    print(json.dumps(result))
    return 0
