"""One sample type for every guard recipe, with validation that names the field at fault.

Images are kept as references (paths relative to the dataset root, or encoded bytes) until
preprocessing; labels use one small vocabulary (harmful | unharmful | none) whatever the source
dataset called them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any


class Task(str, enum.Enum):
    PROMPT_HARMFULNESS = "prompt_harmfulness"
    RESPONSE_HARMFULNESS = "response_harmfulness"
    IMAGE_SAFETY = "image_safety"
    POLICY_COMPLIANCE = "policy_compliance"
    PROMPT_REWRITING = "prompt_rewriting"
    CAPTIONING = "captioning"


class Label(str, enum.Enum):
    HARMFUL = "harmful"
    UNHARMFUL = "unharmful"
    NONE = "none"  # not applicable (e.g. no response to judge)


# Words the public datasets use for the two classes (lower-cased, stripped).
LABEL_SYNONYMS = {
    "harmful": Label.HARMFUL, "unsafe": Label.HARMFUL, "unharmful": Label.UNHARMFUL,
    "harmless": Label.UNHARMFUL, "safe": Label.UNHARMFUL, "benign": Label.UNHARMFUL,
    "none": Label.NONE, "": Label.NONE, "n/a": Label.NONE,
}
# Not here on purpose: yes/no and 1/0 mean opposite things in different sources (SafeGuard-VL's
# "yes" is *safe*); converters pass their own meaning through `parse_label(extra=...)`.


class DataInputError(ValueError):
    """Bad user input met in data_pipeline (a record, a file, a folder); the message is one line.

    The `guard-jax` command line prints it like guard_jax's own `InputError` and exits 2
    (docs/errors.md); data_pipeline never imports guard_jax, so this is its own base class.
    """


class SampleError(DataInputError):
    """Bad input: says which file, record and field."""

    def __init__(self, reason: str, message: str, *, file: str | None = None,
                 record: int | str | None = None, field: str | None = None):
        self.reason, self.file, self.record, self.field = reason, file, record, field
        self.message = message  # without the location prefix
        where = ", ".join(x for x in (f"file {file}" if file else "",
                                      f"record {record}" if record is not None else "",
                                      f"field {field!r}" if field else "") if x)
        super().__init__(f"{where}: {message}" if where else message)


def parse_label(value: Any, *, field: str = "label", file=None, record=None,
                extra: dict[str, Label] | None = None) -> Label:
    if isinstance(value, Label):
        return value
    if value is None:
        return Label.NONE
    if isinstance(value, bool):
        return Label.HARMFUL if value else Label.UNHARMFUL
    key = str(value).strip().lower()
    table = {**LABEL_SYNONYMS, **(extra or {})}
    if key not in table:
        raise SampleError("unknown_label", f"unknown label word {value!r}; expected one of "
                          f"{sorted(k for k in table if k)}", file=file, record=record, field=field)
    return table[key]


@dataclasses.dataclass(frozen=True)
class Category:
    id: str  # taxonomy id, e.g. "O3" or "S1.2"; "" when absent
    name: str = ""
    synonyms: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image by relative path under the dataset root, or by encoded bytes (PNG/JPEG/...)."""
    path: str | None = None
    data: bytes | None = None

    def __post_init__(self):
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageRef needs exactly one of path or data")


@dataclasses.dataclass(frozen=True)
class VideoRef(ImageRef):
    """A video by relative path under the dataset root, or by encoded bytes (MP4/WebM/...)."""


def _refs_json(refs, *, data: bool) -> list[dict[str, Any]]:
    if data:
        return [{"path": r.path, "data": r.data.hex() if r.data else None} for r in refs]
    return [{"path": r.path, "bytes": len(r.data) if r.data else 0} for r in refs]


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str
    source: str  # dataset name, e.g. "guardreasoner_vl_sft"
    task: Task
    user_text: str
    images: tuple[ImageRef, ...] = ()
    response: str | None = None  # the assistant response being judged, if any
    prompt_label: Label = Label.NONE
    response_label: Label = Label.NONE
    category: Category | None = None
    policy: str | None = None  # policy text for policy-conditioned recipes
    target: str | None = None  # SFT target text (the assistant turn to learn)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    videos: tuple[VideoRef, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (image and video bytes are not included; see `to_record`)."""
        d = dataclasses.asdict(self)
        d["task"] = self.task.value
        d["prompt_label"] = self.prompt_label.value
        d["response_label"] = self.response_label.value
        d["images"] = _refs_json(self.images, data=False)
        d["videos"] = _refs_json(self.videos, data=False)
        return d

    def to_record(self) -> bytes:
        """Serialised form stored in ArrayRecord files (images and videos as paths or raw
        bytes)."""
        d = self.to_json()
        d["images"] = _refs_json(self.images, data=True)
        d["videos"] = _refs_json(self.videos, data=True)
        return json.dumps(d, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_record(cls, raw: bytes) -> "Sample":
        d = json.loads(raw.decode("utf-8"))
        cat = d.get("category")
        return cls(
            id=d["id"], source=d["source"], task=Task(d["task"]), user_text=d["user_text"],
            images=tuple(ImageRef(path=i["path"], data=bytes.fromhex(i["data"]) if i.get("data")
                                  else None) for i in d.get("images", [])),
            response=d.get("response"), prompt_label=Label(d["prompt_label"]),
            response_label=Label(d["response_label"]),
            category=Category(cat["id"], cat.get("name", ""), tuple(cat.get("synonyms", ())))
            if cat else None,
            policy=d.get("policy"), target=d.get("target"), extras=d.get("extras") or {},
            videos=tuple(VideoRef(path=v["path"], data=bytes.fromhex(v["data"]) if v.get("data")
                                  else None) for v in d.get("videos", [])))
