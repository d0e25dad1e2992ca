"""What every recipe renderer returns, and the small helpers they share.

A renderer turns one `Sample` into chat messages in the transformers format (a list of
`{"role", "content"}` where content is a string or a list of parts `{"type": "image"}` /
`{"type": "video"}` / `{"type": "text", "text": ...}`), the assistant target (or None for RL/eval
prompts), the images and the videos in placeholder order, the output grammar id (docs/recipes.md#output-grammars) and the reward's ground
truth. Rendering to token ids is `data_pipeline.tokenize.render_and_tokenize`.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

from data_pipeline.schema import ImageRef, Sample, SampleError, VideoRef


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    messages: list[dict[str, Any]]  # system/user turns only; the target is the assistant turn
    target: str | None  # assistant text to learn (SFT); None for RL and eval prompts
    images: tuple[ImageRef, ...]  # one per image part of `messages`, in order
    grammar: str  # output grammar id, docs/recipes.md#output-grammars
    labels: dict[str, Any]  # ground truth the recipe's reward reads
    videos: tuple[VideoRef, ...] = ()  # one per video part of `messages`, in order

    def __post_init__(self):
        n = count_image_parts(self.messages)
        if n != len(self.images):
            raise ValueError(f"rendered prompt has {n} image parts but {len(self.images)} images")
        n = count_image_parts(self.messages, "video")
        if n != len(self.videos):
            raise ValueError(f"rendered prompt has {n} video parts but {len(self.videos)} videos")


def place_videos(rendered: RenderedPrompt, videos) -> RenderedPrompt:
    """The recipe's prompt with one video part per video in the last user turn: right before its
    first image part, else at the start of the turn (docs/data.md#videos). Recipes place images
    where their published prompts do; none of them has a video slot, so every recipe gets this."""
    if not videos:
        return rendered
    messages = [dict(m) for m in rendered.messages]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise ValueError("the rendered prompt has no user turn to hold the videos")
    turn = messages[users[-1]]
    parts = [text(turn["content"])] if isinstance(turn["content"], str) else list(turn["content"])
    at = next((i for i, p in enumerate(parts) if p.get("type") == "image"), 0)
    turn["content"] = parts[:at] + [video() for _ in videos] + parts[at:]
    return dataclasses.replace(rendered, messages=messages, videos=tuple(videos))


def text(s: str) -> dict[str, str]:
    return {"type": "text", "text": s}


def image() -> dict[str, str]:
    return {"type": "image"}


def video() -> dict[str, str]:
    return {"type": "video"}


def join_parts(*items) -> list[dict[str, str]]:
    """Flatten str / part / list-of-parts items into parts; merge adjacent text, drop empty text.

    Merging changes nothing in the rendered string (the template concatenates parts); it only keeps
    the messages short and readable.
    """
    out: list[dict[str, str]] = []
    stack = list(items)
    flat = []
    while stack:
        it = stack.pop(0)
        if isinstance(it, (list, tuple)):
            stack[:0] = list(it)
        else:
            flat.append(text(it) if isinstance(it, str) else it)
    for part in flat:
        if part["type"] == "text":
            if not part["text"]:
                continue
            if out and out[-1]["type"] == "text":
                out[-1] = text(out[-1]["text"] + part["text"])
                continue
        out.append(dict(part))
    return out


def count_image_parts(messages, kind: str = "image") -> int:
    """Parts of type `kind` (image | video) over all messages."""
    n = 0
    for m in messages:
        if not isinstance(m["content"], str):
            n += sum(1 for p in m["content"] if p.get("type") == kind)
    return n


def modality(sample: Sample) -> str:
    """ProGuard's three modalities: text, image (no user text), text-image."""
    has_text = bool(sample.user_text.strip())
    if not sample.images:
        return "text"
    return "text-image" if has_text else "image"


def require(cond: bool, sample: Sample, field: str, message: str):
    if not cond:
        raise SampleError("bad_sample", message, record=sample.id, field=field)


_BLANK_PNG: bytes | None = None


def blank_image_ref() -> ImageRef:
    """A 1x1 white PNG: GuardReasoner-VL's image for text-only RL samples
    (docs/recipes.md#guardreasoner-vl)."""
    global _BLANK_PNG
    if _BLANK_PNG is None:
        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (1, 1), (255, 255, 255)).save(buf, format="PNG")
        _BLANK_PNG = buf.getvalue()
    return ImageRef(data=_BLANK_PNG)
