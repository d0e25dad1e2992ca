"""`guard-jax data`: convert raw guard datasets to ArrayRecord, and list the converters.

    guard-jax data build NAME --source PATH --out DIR [--on-error fail|skip] [--split train]
        [--root DIR] [--max-image-pixels N] [--embed-images] [--overwrite]
        [--option KEY=VALUE ...] [--max-text-chars N]
        [--check-config configs/X.py [--config.a.b=v ...]]
    guard-jax data list

Exit status: 0 on success; 2 on bad input (one line `guard-jax data: ...` naming the argument,
or the file, record and field); 1 when the build wrote no record. See docs/data.md and
docs/errors.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from data_pipeline.limits import DEFAULT_MAX_TEXT_CHARS
from guard_jax.errors import InputError, report_input_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    b = sub.add_parser("build", help="convert a raw dataset into an ArrayRecord dataset",
                       description="Convert a raw dataset into an ArrayRecord dataset "
                                   "(tfds layout, no TensorFlow) under --out.")
    b.add_argument("name", help="converter name (see `guard-jax data list`)")
    b.add_argument("--source", required=True, help="raw file, or a folder of them")
    b.add_argument("--out", required=True, help="output folder (one build per folder)")
    b.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="fail: stop at the first bad record; skip: count it by reason and "
                        "write it to DIR/quarantine.jsonl (default: fail)")
    b.add_argument("--split", default="train", help="split name to write (default: train)")
    b.add_argument("--root", help="folder image paths are relative to (default: the source's "
                                  "folder); paths leaving it are refused")
    b.add_argument("--max-image-pixels", type=int, default=None,
                   help="decompression-bomb cap in pixels (default: PIL's MAX_IMAGE_PIXELS)")
    b.add_argument("--embed-images", action="store_true",
                   help="store image bytes in the records instead of paths under --root")
    b.add_argument("--overwrite", action="store_true", help="replace an earlier build in --out")
    b.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="converter option (repeatable); VALUE is read as JSON when it parses, "
                        "else as a string")
    b.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_TEXT_CHARS,
                   help="refuse records with a longer text field (user text, response, policy, "
                        f"target); 0 = no limit (default: {DEFAULT_MAX_TEXT_CHARS})")
    b.add_argument("--check-config", metavar="CONFIG",
                   help="a training config (configs/*.py; --config.a.b=v overrides apply): "
                        "refuse records its loader would refuse (recipe, tokenizer, sequence "
                        "length, images and patch budget)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(overrides=[])  # --config.a.b=value arguments for --check-config (cli.py)
    sub.add_parser("list", help="list the converters and their options",
                   description="List the converters and their options.")


def _parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _loader_check(args) -> dict:
    """build_dataset's loader-check arguments for --check-config: the loader that config's
    trainer builds (guard_jax/training/sft.py, grpo.py), on one process."""
    overrides = list(getattr(args, "overrides", []))
    if not args.check_config:
        if overrides:
            raise InputError(f"{overrides[0]}: --config.* overrides need --check-config")
        return {}
    from guard_jax.run_config import load_config
    run = load_config(args.check_config, overrides)
    if run.trainer == "grpo":
        from guard_jax.training.grpo import loader_config
    else:
        from guard_jax.training.sft import loader_config
    from guard_jax.training.sft import tokenizer_key
    return {"check_loader": loader_config(run, pad_id=0),
            "tokenizer_dir": run.data.tokenizer_dir or run.model.hf_dir,
            "tokenizer_key": f"{tokenizer_key(run)} of {args.check_config}"}


def _list() -> int:
    from data_pipeline.converters import CONVERTERS, converter_options, describe
    for name in CONVERTERS:
        print(name)
        print(f"    {describe(name)}")
        opts = converter_options(name)
        if opts:
            print("    options: " + ", ".join(f"{k}={v!r}" for k, v in opts.items()))
    return 0


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "data_command", None)
    if command == "list":
        return _list()
    if command != "build":
        return report_input_error("data", InputError(
            "name an action: build or list (see guard-jax data --help)"))
    from data_pipeline.build import EmptyDatasetError, build_dataset
    from data_pipeline.converters import CONVERTERS
    from data_pipeline.limits import SampleLimits
    from data_pipeline.schema import DataInputError, SampleError

    # Called directly as well as through guard_jax.cli, so it reports its own bad input. A
    # converter refuses a bad --option value with a ValueError, hence the wide net here.
    try:
        if args.name not in CONVERTERS:
            raise InputError(f"unknown converter {args.name!r}; known: {', '.join(CONVERTERS)}")
        if args.max_text_chars < 0:
            raise InputError(f"--max-text-chars {args.max_text_chars} must be >= 0 (0 = no "
                             "limit)")
        if args.max_image_pixels is not None and args.max_image_pixels < 1:
            raise InputError(f"--max-image-pixels {args.max_image_pixels} must be >= 1")
        options = _parse_options(args.option)
        limits = SampleLimits(max_text_chars=args.max_text_chars or None)
        build_dataset(args.name, args.source, args.out, split=args.split, root=args.root,
                      on_error=args.on_error, max_image_pixels=args.max_image_pixels,
                      embed_images=args.embed_images, overwrite=args.overwrite,
                      progress=not args.no_progress, options=options, limits=limits,
                      **_loader_check(args))
    except (InputError, DataInputError, ValueError, FileExistsError, FileNotFoundError,
            NotADirectoryError, PermissionError) as e:
        hint = ""
        if isinstance(e, SampleError):
            hint = f" [{e.reason}]"
            if e.record is not None and args.on_error == "fail":
                hint += "; --on-error skip counts and quarantines bad records instead"
        return report_input_error("data", e, hint=hint)  # bad input: exit 2 (docs/errors.md)
    except EmptyDatasetError as e:
        print(f"guard-jax data: {e}", file=sys.stderr)
        return 1
    return 0
