"""`guard-jax train --config configs/X.py [--config.a.b=v ...] --workdir DIR
[--allow-config-change KEY ...]`.

A workdir that holds a checkpoint is resumed; docs/checkpoints.md says which config changes a
resume refuses (exit 2) and which it takes with a warning."""

from __future__ import annotations

import argparse
import os
import sys

from guard_jax.errors import EXIT_NONFINITE, InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a run config file (configs/*.py)")
    p.add_argument("--workdir", required=True,
                   help="checkpoints, metrics and logs; a run resumes when it holds a checkpoint")
    p.add_argument("--allow-config-change", action="append", default=[], metavar="KEY",
                   help="resume although config key KEY (e.g. data.path) differs from the "
                        "checkpoint's, where a resume would refuse it; repeat for more keys")
    p.set_defaults(overrides=[])  # --config.a.b=value arguments land here (see cli.py)


def check_inputs(run, workdir: str) -> None:
    """What the trainers need of the config, refused before a new run makes its workdir. A
    workdir that holds checkpoints is left to the resume check first (docs/checkpoints.md)."""
    if os.path.isdir(workdir) and any(name.isdigit() for name in os.listdir(workdir)):
        return
    if not run.data.path:
        raise InputError("config key data.path is empty: point it at a dataset built by "
                         "`guard-jax data build` (--config.data.path=DIR)")
    if not (run.data.tokenizer_dir or run.model.hf_dir):
        raise InputError("no tokenizer: set config key data.tokenizer_dir (or model.hf_dir)")
    for key in ("data.path", "data.tokenizer_dir", "model.hf_dir"):
        section, name = key.split(".")
        path = run[section][name]
        if path and "://" not in path and not os.path.isdir(path):
            raise InputError(f"config key {key}={path!r}: no such local directory")


def main(args) -> int:
    import json
    import logging

    import jax

    from guard_jax.run_config import check_mesh, load_config
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run = load_config(args.config, args.overrides)  # validated before any device work
    check_inputs(run, args.workdir)
    check_mesh(run, jax.device_count(), f"this job ({args.config})")  # before anything is built
    from guard_jax.training.metrics import NonFiniteLossError
    if run.trainer == "grpo":
        from guard_jax.training.grpo import train
    else:
        from guard_jax.training.sft import train
    try:
        result = train(run, args.workdir, allow_config_change=args.allow_config_change)
    except NonFiniteLossError as e:
        print(f"guard-jax train: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    print(json.dumps(result))
    return 0
