"""Raw-dataset converters: one module per source format, each `iter_samples(source_path, *,
root=None, images=None, **options)` yielding `Sample`s, and `SampleError`s for bad records
(a file that cannot be read at all raises instead).

`source_path` is a file or a folder (every matching file under it, in sorted order); `root` is
the folder image paths are relative to (default: the source folder, or the file's folder);
`images` is an `ImagePolicy` (embed bytes or keep paths, decompression-bomb cap).
`data_pipeline.build.build_dataset` turns the stream into an ArrayRecord dataset.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from data_pipeline.converters import (generic_jsonl, guardreasoner_text, guardreasoner_vl_rl,
                                      guardreasoner_vl_sft, llavaguard, proguard, safeeditbench,
                                      sharegpt, unsafebench)

CONVERTERS: dict[str, Callable] = {m.NAME: m.iter_samples for m in (
    guardreasoner_vl_sft, guardreasoner_vl_rl, guardreasoner_text, proguard, llavaguard,
    safeeditbench, unsafebench, generic_jsonl, sharegpt)}

_COMMON = ("source_path", "root", "images")


def get_converter(name: str) -> Callable:
    try:
        return CONVERTERS[name]
    except KeyError:
        raise KeyError(f"unknown converter {name!r}; known: {', '.join(sorted(CONVERTERS))}") \
            from None


def converter_options(name: str) -> dict[str, object]:
    """The converter's own options (beyond source_path, root and images) and their defaults."""
    sig = inspect.signature(get_converter(name))
    return {k: p.default for k, p in sig.parameters.items() if k not in _COMMON}


def describe(name: str) -> str:
    """First paragraph of the converter module's docstring."""
    doc = inspect.getmodule(get_converter(name)).__doc__ or ""
    return " ".join(doc.strip().split("\n\n")[0].split())
