"""The one exception for bad user input, and the exit codes of `guard-jax`.

Anything a user can fix by changing an argument, a file or a config (a missing local directory,
a non-empty output folder, a hostile config.json, an over-long prompt, an incompatible resume)
raises `InputError` with one line that names the file, record and field where they apply.
`guard_jax.cli` prints that line and exits with `EXIT_INPUT`. See docs/errors.md.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the job ran and failed its own check (demo gates, data build with no records)
EXIT_INPUT = 2  # bad input: arguments, files, configs; nothing was written or changed
EXIT_NONFINITE = 3  # training stopped on a non-finite loss; the last good checkpoint is kept


class InputError(ValueError):
    """Bad user input; the message is one line saying which file, record and field."""
