"""The `guard-jax` command line: one subcommand per job, each in its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

from guard_jax.errors import DEBUG_ENV, EXIT_INPUT, InputError, report_input_error, set_debug

# name -> (module, help). Each module defines `add_arguments(parser)` and `main(args) -> int`.
COMMANDS = {
    "demo": ("guard_jax.demo", "the main job on its tiny embedded default, end to end on the CPU"),
    "train": ("guard_jax.train_cli", "train (SFT or GRPO) from a config; resumes from the workdir"),
    "export": ("guard_jax.export_cli", "write a training checkpoint as an HF directory"),
    "import": ("guard_jax.import_cli", "write an HF directory as a training checkpoint (step 0)"),
    "bench": ("guard_jax.bench", "side-by-side performance ratios against a named peer"),
    "data": ("guard_jax.data_cli", "convert raw guard datasets to ArrayRecord (data build/list)"),
    "plan": ("guard_jax.plan", "per-device memory of a config on a target chip, and whether it fits"),
    "eval": ("guard_jax.eval_cli", "score raw outputs (--predictions) or a model (--config): F1 tables, plots"),
    "moderate": ("guard_jax.moderate_cli", "one input through a guard model -> a JSON verdict"),
}


# Commands that never touch accelerators (or, like plan --compiled, set up fake devices first).
HOST_ONLY = {"data", "plan"}


def _setup_runtime() -> None:
    # google/grain#1355: grain's worker processes read absl flags, which nothing parses here.
    try:
        from absl import flags
        flags.FLAGS.mark_as_parsed()
    except ImportError:  # pragma: no cover
        pass
    from guard_jax.aot import quiet_libtpu
    quiet_libtpu()  # a CPU or GPU host with the TPU compiler installed (docs/tpu.md)


class Parser(argparse.ArgumentParser):
    """argparse with the house format for a bad flag: one line, `guard-jax COMMAND: message`,
    exit 2 (docs/errors.md). Subcommand parsers are made of this class too."""

    def error(self, message: str):
        self.exit(EXIT_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


DEBUG_HELP = (f"on a user error (exit 2) also print the traceback; {DEBUG_ENV}=1 does the same")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="guard-jax",
        description="JAX training stack for multimodal safety guard models (Qwen2.5-VL). "
                    "Exit codes: docs/errors.md.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        # also accepted after the command; SUPPRESS keeps a `guard-jax --debug CMD` in place
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=DEBUG_HELP)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    _setup_runtime()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:
        # `--config.a.b=v` overrides go to commands that take a config (they set `overrides`)
        bad = [r for r in rest if not r.startswith("--config.")]
        if bad or not hasattr(args, "overrides"):
            prog = f"guard-jax {args.command}" if getattr(args, "command", None) else "guard-jax"
            parser.exit(EXIT_INPUT, f"{prog}: unrecognized arguments: {' '.join(bad or rest)} "
                                    f"(see {prog} --help)\n")
        args.overrides = list(args.overrides) + rest
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    set_debug(args.debug)
    from data_pipeline.schema import DataInputError
    try:
        if args.command not in HOST_ONLY:
            # Before any device work: a Pathways job (one controller, docs/pathways.md) sets up
            # its proxy backend; multi-host jobs (explicit variables, SLURM, TPU pods) join;
            # a single process is left alone.
            from guard_jax import distributed, pathways
            if not pathways.initialize():
                distributed.initialize()
        code = int(importlib.import_module(args._module).main(args) or 0)
    except (InputError, DataInputError) as e:  # one line, no traceback (docs/errors.md)
        code = report_input_error(args.command, e)
    if args.command not in HOST_ONLY:  # a multi-process job's peers learn it (docs/errors.md)
        distributed.exiting(code)
    return code
    # Anything else is a bug: not caught, so Python prints the traceback and exits 1 (and a
    # multi-process job's watchdog sees the uncaught error, docs/grpo-multihost.md).


if __name__ == "__main__":
    sys.exit(main())
