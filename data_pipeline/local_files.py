"""Local-only tokenizer loading: a folder on this machine, never the hub.

transformers treats any string that is not an existing folder as a hub repository name and goes
to the network for it (and `trust_remote_code` would run code shipped with it). Every tokenizer
load in guard_jax goes through here: the path must be an existing local directory,
files are read with `local_files_only=True`, and remote code is refused. See docs/data.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_pipeline.schema import DataInputError


class NoLocalDirectory(DataInputError, FileNotFoundError):
    """A tokenizer path that is not an existing local folder."""


def local_dir(path: str | os.PathLike | None, *, what: str = "tokenizer",
              key: str | None = None) -> Path:
    """`path` as a `Path` if it is an existing local directory; else `NoLocalDirectory` naming
    the path and, when it came from a config, the config `key`."""
    source = f" (config key {key})" if key else ""
    if path is None or not str(path).strip():
        raise NoLocalDirectory(f"{what}: no local directory given{source}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NoLocalDirectory(f"{what}: no such local directory {str(path)!r}{source}; "
                               "tokenizers are read from a folder on this machine only, never "
                               "downloaded")
    return p


def load_tokenizer(path: str | os.PathLike | None, *, key: str | None = None):
    """`AutoTokenizer` from a local folder, without network access or remote code."""
    folder = local_dir(path, what="tokenizer", key=key)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                         trust_remote_code=False)

