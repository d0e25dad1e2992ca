"""Load and save Hugging Face Qwen2.5-VL directories without torch.

Loading streams one tensor at a time from safetensors (single file or sharded index, hub or
transformers-5 key layout) into preallocated arrays, so host memory peaks near one tensor beyond
the model's own arrays. Saving streams one tensor at a time into size-capped safetensors shards
written by a small writer of our own (the safetensors library needs a whole shard in memory),
into a temporary directory that is renamed into place only when everything is written. What an
export may replace, and what it refuses, is described in docs/export-import.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import struct
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from tqdm.auto import tqdm

from guard_jax.errors import InputError
from guard_jax.models.qwen2_5_vl.config import MissingLocalFile, Qwen25VLConfig
from guard_jax.models.qwen2_5_vl.hf_keys import (
    IGNORED_KEYS, KeyMap, check_layer_counts, key_maps, normalize_key)
from guard_jax.models.qwen2_5_vl.model import Qwen25VL, abstract_model
from guard_jax.models.qwen2_5_vl.processor_files import write_processor_files

ASSET_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja",
    "preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
)
DEFAULT_SHARD_BYTES = 5 * 1000**3
# Written last into every export: marks the directory as one a later export may replace.
EXPORT_MARKER = "guard_jax_export.json"
# The other names an export writes (besides ASSET_FILES).
_EXPORT_NAMES = re.compile(r"config\.json|generation_config\.json|model\.safetensors"
                           r"|model-\d{5}-of-\d{5}\.safetensors|model\.safetensors\.index\.json")

log = logging.getLogger(__name__)

_ST_DTYPES = {
    np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.float64): "F64",
}


# Where each loaded model came from (for copying tokenizer files on export). Kept outside the
# module: a plain attribute would be static graph data and part of every nnx.jit cache key.
_SOURCES: "weakref.WeakKeyDictionary[Qwen25VL, str]" = weakref.WeakKeyDictionary()


def hf_source(model: Qwen25VL) -> str | None:
    """The HF directory `model` was loaded from, if any."""
    return _SOURCES.get(model)


def _np_dtype(name) -> np.dtype:
    return np.dtype(jnp.dtype(name))


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
    """Our parameter paths ('text.layers.q', ...) -> the nnx.Param holding them."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        out[".".join(str(p) for p in path)] = var
    return out


# ------------------------------------------------------------------------------ reading
class _TensorIndex:
    """Key -> file for a directory holding model.safetensors or a sharded index."""

    def __init__(self, path: Path):
        self.path = path
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        self.where: dict[str, str] = {}
        self.warned: set[str] = set()
        if index.exists():
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f).get("weight_map")
            except (ValueError, AttributeError) as e:
                raise InputError(f"{index}: not a JSON object ({e})") from e
            if not isinstance(weight_map, dict) or not all(
                    isinstance(v, str) and "/" not in v and v not in ("", ".", "..")
                    for v in weight_map.values()):
                raise InputError(f"{index}: no 'weight_map' object of file names")
            files = sorted(set(weight_map.values()))
        elif single.exists():
            files = ["model.safetensors"]
        else:
            if list(path.glob("*.bin")) or list(path.glob("*.pt")):
                raise InputError(f"{path}: holds only pickle weights (.bin/.pt); guard_jax reads "
                                 "safetensors only. Convert them with transformers first.")
            raise MissingLocalFile(f"{path}: no model.safetensors or "
                                   "model.safetensors.index.json")
        self.handles = {}
        for fname in files:
            fpath = path / fname
            if not fpath.is_file():
                raise MissingLocalFile(f"{fpath}: listed in the index but missing")
            try:  # a truncated or corrupt file fails here; its own error names no file
                h = safe_open(str(fpath), framework="numpy")
            except Exception as e:
                raise InputError(f"{fpath}: not a readable safetensors file ({e})") from e
            self.handles[fname] = h
            for k in h.keys():
                nk = normalize_key(k)
                if nk in self.where:
                    raise InputError(f"{path}: tensor {nk!r} appears twice "
                                     f"({self.where[nk][0]} and {fname})")
                self.where[nk] = (fname, k)

    def shape(self, key: str) -> tuple[int, ...]:
        fname, raw = self.where[key]
        return tuple(self.handles[fname].get_slice(raw).get_shape())

    def get(self, key: str) -> np.ndarray:
        """The whole tensor; warns once per tensor if it holds NaN or inf."""
        fname, raw = self.where[key]
        try:
            x = self.handles[fname].get_tensor(raw)
        except Exception as e:
            raise InputError(f"{self.path / fname}: cannot read tensor {raw!r} ({e})") from e
        if key not in self.warned and x.dtype in _ST_DTYPES:
            finite = int(np.count_nonzero(np.isfinite(x)))
            if finite < x.size:
                self.warned.add(key)
                log.warning("%s: tensor %s holds %d NaN/inf value(s) of %d; loading it as it is",
                            self.path / fname, raw, x.size - finite, x.size)
        return x


def _set_layer(buf, x, i):
    return jax.lax.dynamic_update_index_in_dim(buf, x, i, 0)


# Donated, so filling a stacked parameter layer by layer updates it in place.
_set_layer_donated = jax.jit(_set_layer, donate_argnums=0)


def load_hf(path, *, dtype: str = "bfloat16", mesh=None, rules=None,
            compute_dtype: str | None = None, progress: bool = True,
            **config_overrides) -> Qwen25VL:
    """Reads an HF Qwen2.5-VL directory into a guard_jax model (parameters in `dtype`).

    With a `mesh`, every tensor goes straight into its shards (`rules`: logical-axis rules,
    default guard_jax.sharding.TRAIN_RULES) and each process reads only the slices it owns.
    """
    path = Path(path)
    config = Qwen25VLConfig.from_pretrained(
        path, param_dtype=dtype, dtype=compute_dtype or dtype, **config_overrides)
    index = _TensorIndex(path)
    check_layer_counts(config, index.where, str(path / "config.json"))
    maps = key_maps(config)
    _check_keys(index, maps, config, path)
    if mesh is not None:
        from guard_jax.models.qwen2_5_vl.placement import load_sharded
        from guard_jax.sharding import TRAIN_RULES
        model = load_sharded(path, index, config, mesh, rules=rules or TRAIN_RULES,
                             progress=progress)
        _SOURCES[model] = str(path)
        return model
    model = abstract_model(config)
    variables = _variables(model)
    target = _np_dtype(dtype)
    for km in tqdm(maps, desc=f"loading {path.name}", disable=not progress, unit="param"):
        var = variables[km.ours]
        shape = tuple(var.get_value().shape)
        if km.stacked:
            buf = jnp.zeros(shape, target)
            for i, key in enumerate(km.hf_keys()):
                x = km.to_ours(index.get(key), shape[1:], key).astype(target)
                buf = _set_layer_donated(buf, x, i)
            var.set_value(buf)
        else:
            var.set_value(jnp.asarray(km.to_ours(index.get(km.hf), shape, km.hf).astype(target)))
    _SOURCES[model] = str(path)
    return model


def _check_keys(index: _TensorIndex, maps: list[KeyMap], config: Qwen25VLConfig, path: Path):
    wanted = {k for km in maps for k in km.hf_keys()}
    have = {k for k in index.where if not IGNORED_KEYS.search(k)}
    missing = sorted(wanted - have)
    extra = sorted(have - wanted)
    if config.tie_word_embeddings and "lm_head.weight" in extra:
        # A tied config with an lm_head in the file: fine only if it is an exact copy.
        if not np.array_equal(index.get("lm_head.weight"), index.get("model.embed_tokens.weight")):
            raise InputError(f"{path}: tie_word_embeddings is true but lm_head.weight differs from "
                             "model.embed_tokens.weight; set tie_word_embeddings=false in "
                             "config.json to use a separate head")
        extra.remove("lm_head.weight")
    if missing:
        more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
        hint = (" (tie_word_embeddings is false, so lm_head.weight is required)"
                if "lm_head.weight" in missing else "")
        raise InputError(f"{path}: checkpoint lacks {missing[:8]}{more}{hint}")
    if extra:
        more = f" (and {len(extra) - 8} more)" if len(extra) > 8 else ""
        raise InputError(f"{path}: unexpected tensors {extra[:8]}{more}: is this a Qwen2.5-VL "
                         "checkpoint matching its config.json?")
    for km in maps:  # shapes from the headers only, before anything is read
        for key in km.hf_keys():
            if index.shape(key) != km.hf_shape:
                raise InputError(f"{path}: {key}: shape {index.shape(key)} in "
                                 f"{index.where[key][0]}, config.json needs {km.hf_shape}")


# ------------------------------------------------------------------------------ writing
class _Entry:
    def __init__(self, key: str, shape: tuple[int, ...], dtype: np.dtype,
                 make: Callable[[], np.ndarray]):
        self.key, self.shape, self.dtype, self.make = key, shape, dtype, make
        self.nbytes = int(np.prod(shape)) * dtype.itemsize


def _plan_entries(model: Qwen25VL, dtype) -> list[_Entry]:
    variables = _variables(model)
    entries = []
    for km in key_maps(model.config):
        var = variables[km.ours]
        arr = var.get_value()
        out_dtype = _np_dtype(dtype) if dtype is not None else np.dtype(arr.dtype)
        if km.stacked:
            for i, key in enumerate(km.hf_keys()):
                entries.append(_Entry(key, km.hf_shape, out_dtype,
                                      lambda a=arr, i=i, km=km, dt=out_dtype:
                                      km.to_hf(np.asarray(a[i]).astype(dt))))
        else:
            entries.append(_Entry(km.hf, km.hf_shape, out_dtype,
                                  lambda a=arr, km=km, dt=out_dtype:
                                  km.to_hf(np.asarray(a).astype(dt))))
    entries.sort(key=lambda e: e.key)
    return entries


def _shard(entries: list[_Entry], max_bytes: int) -> list[list[_Entry]]:
    shards, cur, size = [], [], 0
    for e in entries:
        if cur and size + e.nbytes > max_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(e)
        size += e.nbytes
    if cur:
        shards.append(cur)
    return shards


def write_safetensors(path: Path, entries: Iterable[_Entry], metadata: dict[str, str],
                      on_tensor: Callable[[int], None] | None = None) -> None:
    """Writes a safetensors file one tensor at a time (header first, from shapes and dtypes)."""
    entries = list(entries)
    header: dict = {"__metadata__": metadata}
    off = 0
    for e in entries:
        if e.dtype not in _ST_DTYPES:
            raise ValueError(f"{e.key}: dtype {e.dtype} cannot be written to safetensors here")
        header[e.key] = {"dtype": _ST_DTYPES[e.dtype], "shape": list(e.shape),
                         "data_offsets": [off, off + e.nbytes]}
        off += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e in entries:
            a = e.make()
            if a.shape != e.shape or a.dtype != e.dtype:
                raise AssertionError(f"{e.key}: produced {a.shape} {a.dtype}, planned {e.shape} "
                                     f"{e.dtype}")
            f.write(a.tobytes(order="C"))
            if on_tensor:
                on_tensor(e.nbytes)


def _dtype_name(dt: np.dtype) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[dt.name]


# ------------------------------------------------------------------------------ the target
def _is_export_file(p: Path) -> bool:
    """A regular file with a name an export writes."""
    return (p.is_file() and not p.is_symlink() and
            (p.name in ASSET_FILES or p.name == EXPORT_MARKER or
             _EXPORT_NAMES.fullmatch(p.name) is not None))


def _foreign(d: Path) -> list[str]:
    """The entries of `d` an export does not write (folders and links included)."""
    return sorted(p.name for p in d.iterdir() if not _is_export_file(p))


def check_export_target(path, *, overwrite: bool = False) -> Path:
    """The absolute `path` if an export may be written there, else an InputError.

    Accepted: a missing path, an empty directory, a previous export (a directory holding
    EXPORT_MARKER and only files an export writes) and, with `overwrite`, any directory holding
    only files an export writes (e.g. one written by transformers' save_pretrained). Refused
    always: a file or link, and a directory holding anything else (named in the error), since
    replacing it would delete what the export did not write.
    """
    path = Path(os.path.abspath(path))
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise InputError(f"{path}: exists and is not a directory; give a directory to export to")
    if not path.exists():
        return path
    foreign = _foreign(path)
    if foreign:
        more = f" and {len(foreign) - 8} more" if len(foreign) > 8 else ""
        raise InputError(f"{path}: holds {', '.join(foreign[:8])}{more}, which an export does "
                         "not write; refusing to replace it (even with --overwrite). Export to "
                         "a new or empty directory")
    if any(path.iterdir()) and not (path / EXPORT_MARKER).is_file() and not overwrite:
        raise InputError(f"{path}: holds an HF model that guard-jax export did not write (no "
                         f"{EXPORT_MARKER}); pass --overwrite to replace it")
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _scratch(path: Path, kind: str) -> Path:
    """A hidden sibling of `path` for this process: `.NAME.KIND-HOST-PID-SECONDS`."""
    return path.parent / f".{path.name}.{kind}-{_HOST}-{os.getpid()}-{int(time.time())}"


def remove_stale_partials(path: Path) -> list[Path]:
    """Deletes the scratch folders an earlier export of `path` left when it was killed
    (`.NAME.partial-...`, `.NAME.old-...`), but only those written on this host by a process
    that is gone, holding only export files. Logs each one removed; returns them."""
    pat = re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-(?:(?P<host>.+)-)?"
                     r"(?P<pid>\d+)-\d+")
    removed = []
    for p in sorted(path.parent.iterdir()):
        m = pat.fullmatch(p.name)
        if (m is None or p.is_symlink() or not p.is_dir() or m["host"] not in (None, _HOST)
                or _pid_alive(int(m["pid"]))):
            continue
        if _foreign(p):
            log.warning("%s: left by an unfinished export but holds other files; kept", p)
            continue
        shutil.rmtree(p)
        log.warning("removed %s, left by an export (process %s) that did not finish", p, m["pid"])
        removed.append(p)
    return removed


def _remove_replaced(old: Path) -> None:
    """Deletes a replaced export: its export files, then the folder if nothing else is left."""
    for p in old.iterdir():
        if _is_export_file(p):
            p.unlink()
    try:
        old.rmdir()
    except OSError:
        log.warning("%s: kept; it holds %s, which an export does not write", old, _foreign(old))


def save_hf(model: Qwen25VL, path, *, dtype: str | None = None, assets_from=None,
            max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True,
            overwrite: bool = False, min_pixels: int | None = None,
            max_pixels: int | None = None, video: dict | None = None) -> Path:
    """Writes an HF directory that `Qwen2_5_VLForConditionalGeneration.from_pretrained` loads.

    Weights go in the hub key layout, in `dtype` (default: the parameters' own dtype), sharded
    at `max_shard_bytes` with an index when more than one file is needed. Tokenizer,
    preprocessor and chat-template files are copied from `assets_from` (default: the directory
    the model was loaded from, if any); the image and video processor configs and the chat
    template it lacks are written from the model config (`min_pixels`/`max_pixels`: the image
    processor's resizing limits, default the training pipeline's; `video`: the video
    processor's frame sampling and limits, see processor_files.video_processor_config), so
    `AutoProcessor` loads every export. A crash never leaves a complete-looking directory.
    `path` may be new, empty or a previous export; `overwrite` also lets it replace another HF
    directory; anything else is refused (see `check_export_target`).
    """
    path = check_export_target(path, overwrite=overwrite)
    config: Qwen25VLConfig = model.config
    entries = _plan_entries(model, dtype)
    dtypes = {e.dtype for e in entries}
    torch_dtype = _dtype_name(max(dtypes, key=lambda d: d.itemsize) if len(dtypes) > 1
                              else next(iter(dtypes)))
    shards = _shard(entries, max_shard_bytes)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = _scratch(path, "partial")
    tmp.mkdir()
    old = None
    try:
        total = sum(e.nbytes for e in entries)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {path.name}",
                   disable=not progress)
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
        for name, shard in zip(names, shards):
            write_safetensors(tmp / name, shard, {"format": "pt"}, on_tensor=bar.update)
        bar.close()
        if len(shards) > 1:
            index = {"metadata": {"total_size": total,
                                  "total_parameters": sum(int(np.prod(e.shape)) for e in entries)},
                     "weight_map": {e.key: n for n, s in zip(names, shards) for e in s}}
            _write_json(tmp / "model.safetensors.index.json", index)
        _write_json(tmp / "config.json", config.to_hf_dict(torch_dtype=torch_dtype))
        src = assets_from if assets_from is not None else hf_source(model)
        _write_generation_config(tmp, config, Path(src) if src else None)
        if src:
            for fname in ASSET_FILES:
                if (Path(src) / fname).is_file():
                    shutil.copy2(Path(src) / fname, tmp / fname)
        write_processor_files(tmp, config, min_pixels=min_pixels, max_pixels=max_pixels,
                              video=video)
        _write_json(tmp / EXPORT_MARKER, {"written_by": "guard_jax save_hf",
                                          "files": sorted(p.name for p in tmp.iterdir())})
        check_export_target(path, overwrite=overwrite)  # again: files may have appeared since
        if path.exists():
            old = _scratch(path, "old")
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        if old is not None and not path.exists():
            old.rename(path)  # put the previous export back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        _remove_replaced(old)
    return path


def _write_json(p: Path, obj) -> None:
    with open(p, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def _write_generation_config(out: Path, config: Qwen25VLConfig, src: Path | None) -> None:
    gen = {}
    if src is not None and (src / "generation_config.json").is_file():
        with open(src / "generation_config.json", encoding="utf-8") as f:
            gen = json.load(f)
    eos = gen.get("eos_token_id", [])
    eos = [eos] if isinstance(eos, int) else list(eos)
    for i in config.generation_eos_ids:  # both <|im_end|> and <|endoftext|> stop generation
        if i not in eos:
            eos.append(i)
    gen.update({"bos_token_id": config.bos_token_id, "eos_token_id": eos,
                "pad_token_id": gen.get("pad_token_id", config.generation_pad_id)})
    gen.setdefault("use_cache", True)
    _write_json(out / "generation_config.json", gen)
