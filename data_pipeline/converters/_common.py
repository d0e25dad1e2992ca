"""What every converter shares: reading raw files record by record, and field accessors that turn
any problem into a `SampleError` naming the file, the record and the field.

Text is decoded with `surrogateescape`, so one bad byte spoils only the field that holds it: the
accessor reading that field reports `non_utf8` instead of the whole file failing to load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.image_validation import ImagePolicy, ImageProblem, load_image_ref
from data_pipeline.schema import ImageRef, Label, SampleError, VideoRef, parse_label
from data_pipeline.video_validation import load_video_ref

# Reason words for record problems found here (images add theirs in image_validation).
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
EMPTY_TEXT = "empty_text"
NON_UTF8 = "non_utf8"
BAD_VALUE = "bad_value"
MISSING_LABEL = "missing_label"
DUPLICATE_ID = "duplicate_id"

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"  # LLaMA-Factory's video placeholder
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Env:
    """Where a conversion reads from: the source (file or folder), the image root, image policy."""
    source: Path
    root: Path
    images: ImagePolicy

    @classmethod
    def make(cls, source_path, root=None, images: ImagePolicy | None = None) -> "Env":
        source = Path(source_path)
        if not source.exists():
            raise SampleError("missing_source", f"source {source} does not exist", file=str(source))
        if root is None:
            root = source if source.is_dir() else source.parent
        if not Path(root).is_dir():
            raise SampleError("missing_root", f"dataset root {root} is not a directory",
                              file=str(root))
        return cls(source=source, root=Path(os.path.abspath(root)), images=images or ImagePolicy())

    def files(self, suffixes: Sequence[str]) -> list[Path]:
        """The source file, or every file under the source folder with one of `suffixes`."""
        if self.source.is_file():
            return [self.source]
        found = sorted(p for p in self.source.rglob("*") if p.is_file()
                       and any(p.name.endswith(s) for s in suffixes))
        if not found:
            raise SampleError("missing_source", f"no {'/'.join(suffixes)} files under "
                              f"{self.source}", file=str(self.source))
        return found


class Record:
    """One raw record (a JSON object or a parquet row) and where it came from."""

    def __init__(self, env: Env, file: Path, ref: int | str, data: Any):
        self.env, self.file, self.ref, self.data = env, file, ref, data

    def error(self, reason: str, message: str, field: str | None = None) -> SampleError:
        return SampleError(reason, message, file=str(self.file), record=self.ref, field=field)

    def get(self, field: str, default: Any = _MISSING) -> Any:
        """`data[field]`, dotted names looking into nested objects (`extra_info.category`)."""
        value = self.data
        for part in field.split("."):
            if not isinstance(value, dict) or part not in value:
                if default is _MISSING:
                    raise self.error(MISSING_FIELD, "required field is missing", field)
                return default
            value = value[part]
        return value

    def first(self, *fields: str, default: Any = _MISSING) -> tuple[str, Any]:
        """(name, value) of the first present field among `fields`."""
        for f in fields:
            v = self.get(f, None)
            if v is not None:
                return f, v
        if default is _MISSING:
            raise self.error(MISSING_FIELD, "required field is missing "
                             f"(looked for {', '.join(fields)})", fields[0])
        return fields[0], default

    def text(self, field: str, value: Any = _MISSING, *, required: bool = True) -> str | None:
        """A text value: a string, valid UTF-8, and non-blank when required."""
        if value is _MISSING:
            value = self.get(field, None if not required else _MISSING)
        if value is None:
            if required:
                raise self.error(EMPTY_TEXT, "text is null", field)
            return None
        if not isinstance(value, str):
            raise self.error(BAD_VALUE, f"expected text, got {type(value).__name__}", field)
        check_utf8(value, self, field)
        if required and not value.strip():
            raise self.error(EMPTY_TEXT, "text is empty", field)
        return value

    def label(self, field: str, value: Any = _MISSING, *,
              extra: dict[str, Label] | None = None) -> Label:
        if value is _MISSING:
            value = self.get(field)
        if isinstance(value, str):
            check_utf8(value, self, field)
        return parse_label(value, field=field, file=str(self.file), record=self.ref, extra=extra)

    def image(self, field: str, value: Any) -> ImageRef:
        return self._media(field, value, load_image_ref)

    def images(self, field: str, value: Any) -> tuple[ImageRef, ...]:
        """A list (or a single value) of images; null or missing means none."""
        return self._many(field, value, self.image)

    def video(self, field: str, value: Any) -> VideoRef:
        return self._media(field, value, load_video_ref)

    def videos(self, field: str, value: Any) -> tuple[VideoRef, ...]:
        """A list (or a single value) of videos; null or missing means none."""
        return self._many(field, value, self.video)

    def _media(self, field: str, value: Any, load):
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, str):
            check_utf8(path, self, field)
        try:
            return load(value, self.env.root, self.env.images)
        except ImageProblem as e:
            raise self.error(e.reason, str(e), field) from None

    @staticmethod
    def _many(field: str, value: Any, one) -> tuple:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            return (one(field, value),)
        return tuple(one(f"{field}[{i}]", v) for i, v in enumerate(value))

    def sample_id(self, *fields: str) -> str:
        for f in fields or ("id",):
            v = self.get(f, None)
            if v is not None and str(v).strip():
                return self.text(f, str(v))
        prefix = (self.file.relative_to(self.env.source).with_suffix("").as_posix()
                  if self.env.source.is_dir() else self.file.stem)
        return f"{prefix}-{self.ref}".replace("line ", "L")


def check_utf8(value: str, record: Record, field: str) -> None:
    # Lone surrogates come from undecodable bytes (surrogateescape) or from `\udcxx` escapes in
    # JSON; neither can be written as UTF-8, so neither is text.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = value[e.start:e.end]
        raw = bad.encode("utf-8", "surrogateescape") if all(
            0xDC80 <= ord(c) <= 0xDCFF for c in bad) else bad.encode("unicode_escape")
        raise record.error(NON_UTF8, f"text is not valid UTF-8 (bytes {raw!r} at character "
                                     f"{e.start})", field) from None


def plain(value: Any, record: Record, field: str) -> Any:
    """A JSON-native copy of a value for `Sample.extras` (tuples become lists; text checked)."""
    if isinstance(value, str):
        check_utf8(value, record, field)
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v, record, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): plain(v, record, f"{field}.{k}") for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars from parquet
        return plain(value.item(), record, field)
    raise record.error(BAD_VALUE, f"value of type {type(value).__name__} is not JSON", field)


# ---- reading files ----------------------------------------------------------------------------

def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="surrogateescape")
    return text[1:] if text.startswith("\ufeff") else text


def iter_json_records(env: Env, file: Path) -> Iterator[Record | SampleError]:
    """Records of a JSON array file or a JSON Lines file (decided by content, not extension).

    A JSONL line that does not parse is a record error (`invalid_json`); a JSON array file that
    does not parse fails as a whole, since its records cannot be told apart.
    """
    text = _decode(file.read_bytes())
    stripped = text.lstrip()
    if file.suffix != ".jsonl" and stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if not stripped.startswith("{"):  # an array with a syntax error
                raise SampleError(INVALID_JSON, f"not valid JSON: {e}", file=str(file)) from None
            data = None  # maybe JSON Lines with a .json name
        if isinstance(data, list):
            for i, item in enumerate(data):
                yield _as_record(env, file, i, item)
            return
        if isinstance(data, dict):
            yield _as_record(env, file, 0, data)
            return
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        ref = f"line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            yield SampleError(INVALID_JSON, f"line is not valid JSON: {e}", file=str(file),
                              record=ref)
            continue
        yield _as_record(env, file, ref, item)


def _as_record(env, file, ref, item) -> Record | SampleError:
    if not isinstance(item, dict):
        return SampleError(BAD_VALUE, f"expected a JSON object, got {type(item).__name__}",
                           file=str(file), record=ref)
    return Record(env, file, ref, item)


def iter_parquet_records(env: Env, file: Path, batch_size: int = 256) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover
        raise SampleError("missing_dependency", "reading parquet needs pyarrow "
                          "(pip install pyarrow)", file=str(file)) from e
    try:
        pf = pq.ParquetFile(file)
    except Exception as e:
        raise SampleError("invalid_parquet", f"not a readable parquet file: {e}",
                          file=str(file)) from None
    i = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            yield Record(env, file, i, row)
            i += 1


def iter_records(env: Env, suffixes=(".json", ".jsonl", ".parquet"),
                 ) -> Iterator[Record | SampleError]:
    for file in env.files(suffixes):
        if file.suffix == ".parquet":
            yield from iter_parquet_records(env, file)
        else:
            yield from iter_json_records(env, file)


def convert_each(records, fn) -> Iterator:
    """Applies `fn(record) -> Sample` to each record; record problems become yielded errors.

    Also refuses what would break later: a sample id seen before (`duplicate_id`), and a sample
    that does not serialise (`Sample.to_record`).
    """
    seen: dict[str, tuple[str, Any]] = {}
    for rec in records:
        if isinstance(rec, SampleError):
            yield rec
            continue
        try:
            sample = fn(rec)
            if sample.id in seen:
                f, r = seen[sample.id]
                raise rec.error(DUPLICATE_ID, f"sample id {sample.id!r} was already used by "
                                f"file {f}, record {r}", "id")
            try:
                sample.to_record()
            except (TypeError, ValueError, UnicodeError) as e:
                raise rec.error(BAD_VALUE, f"sample does not serialise: {e}") from None
            seen[sample.id] = (str(rec.file), rec.ref)
            yield sample
        except SampleError as e:
            yield e


# ---- chat turns -------------------------------------------------------------------------------

_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
          "assistant": "assistant", "bot": "assistant", "model": "assistant"}


def chat_turns(record: Record, field: str) -> list[tuple[str, str, str]]:
    """[(role, text, field path)] of a ShareGPT (`from`/`value`) or OpenAI (`role`/`content`)
    message list; content given as parts keeps its text parts and writes images as `<image>`
    and videos as `<video>`."""
    turns = record.get(field)
    if not isinstance(turns, list) or not turns:
        raise record.error(BAD_VALUE, "expected a non-empty list of messages", field)
    out = []
    for i, t in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(t, dict):
            raise record.error(BAD_VALUE, "message is not an object", where)
        role_key = "role" if "role" in t else "from"
        text_key = "content" if "content" in t else "value"
        role = _ROLES.get(str(t.get(role_key, "")).lower())
        if role is None:
            raise record.error(BAD_VALUE, f"unknown role {t.get(role_key)!r}",
                               f"{where}.{role_key}")
        content = t.get(text_key)
        if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image"}, ...]
            parts = []
            for p in content:
                if isinstance(p, dict) and p.get("type") == "text":
                    parts.append(p.get("text") or "")
                elif isinstance(p, dict) and p.get("type") in ("image", "image_url"):
                    parts.append(IMAGE_TOKEN)
                elif isinstance(p, dict) and p.get("type") in ("video", "video_url"):
                    parts.append(VIDEO_TOKEN)
            content = "".join(parts)
        out.append((role, record.text(f"{where}.{text_key}", content, required=False) or "",
                    f"{where}.{text_key}"))
    return out


def strip_image_tokens(text: str, token: str = IMAGE_TOKEN) -> tuple[str, int]:
    return text.replace(token, "").strip(), text.count(token)


def check_image_count(record: Record, field: str, tokens: int, images: int,
                      token: str = IMAGE_TOKEN) -> None:
    # LLaMA-Factory refuses a sample whose <image> (<video>) count differs from its image
    # (video) list; so do we (text without any token is fine: the renderer places them).
    if tokens and tokens != images:
        kind = "video" if token == VIDEO_TOKEN else "image"
        raise record.error(BAD_VALUE, f"{tokens} {token} token(s) but {images} {kind}(s)",
                           field)


# ---- GuardReasoner transcript and answers ------------------------------------------------------

_HUMAN = "Human user:"
_AI = "AI assistant:"


def split_transcript(text: str) -> tuple[str | None, str, str | None]:
    """(instruction before the transcript, request, response or None) of a GuardReasoner input
    `[instruction\\n\\n]Human user:\\n{request}\\n\\nAI assistant:\\n{response}\\n`.

    The *last* `AI assistant:` marker splits request from response: jailbreak requests sometimes
    quote fake transcripts, responses practically never do. A response written `None` means none.
    Text without the `Human user:` marker is all request.
    """
    start = text.find(_HUMAN)
    if start < 0:
        return None, text.strip(), None
    instruction = text[:start].strip() or None
    body = text[start + len(_HUMAN):]
    request, sep, response = body.rpartition(_AI)
    if not sep:
        return instruction, body.strip(), None
    response = response.strip()
    return instruction, request.strip(), None if response in ("", "None") else response


_RESULT = re.compile(r"<result>(.*?)</result>", re.I | re.S)


def answer_word(text: str, key: str) -> str | None:
    """The word after `key:` (e.g. `Request:`) in the first `<result>` block, or anywhere when
    there is no such block (the benchmark files write a bare `Answers:` section)."""
    m = _RESULT.search(text)
    scope = m.group(1) if m else text
    w = re.search(rf"{key}:\s*([^\s<]+)", scope, re.I)
    return w.group(1).strip(".,;") if w else None
