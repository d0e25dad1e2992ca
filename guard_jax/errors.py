"""The one exception for bad user input, the exit codes of `guard-jax`, and how a user error is
reported.

Anything a user can fix by changing an argument, a file or a config (a missing local directory,
a non-empty output folder, a hostile config.json, an over-long prompt, an incompatible resume,
an unknown config key) raises `InputError` with one line that names the argument, file, record
and field where they apply. `guard_jax.cli` prints that line and exits with `EXIT_INPUT`; with
`guard-jax --debug` (or GUARD_JAX_DEBUG=1) the traceback comes first. Any other exception is a
bug: it is not caught, so Python prints its traceback and exits 1. See docs/errors.md.
"""

from __future__ import annotations

import os
import sys
import traceback

EXIT_OK = 0
EXIT_FAILED = 1  # the job failed its own check (demo gates, data build with no records), or a bug
EXIT_INPUT = 2  # bad input: arguments, files, configs; nothing was written or changed
EXIT_NONFINITE = 3  # training stopped on a non-finite loss; the last good checkpoint is kept

DEBUG_ENV = "GUARD_JAX_DEBUG"
_debug = False


class InputError(ValueError):
    """Bad user input; the message is one line saying which argument, file, record and field."""


def set_debug(on: bool) -> None:
    """`guard-jax --debug`: user errors also print their traceback."""
    global _debug
    _debug = bool(on)


def debug_enabled() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def report_input_error(command: str, error: BaseException, *, hint: str = "") -> int:
    """Prints `guard-jax COMMAND: message` (one line; the traceback before it in debug mode) on
    stderr and returns EXIT_INPUT."""
    if debug_enabled():
        traceback.print_exception(error, file=sys.stderr)
    message = " ".join(str(error).split("\n"))  # one line, whatever the message held
    print(f"guard-jax {command}: {message}{hint}", file=sys.stderr)
    return EXIT_INPUT
