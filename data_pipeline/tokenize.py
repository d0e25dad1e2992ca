"""Chat messages + assistant target -> token ids, attention mask, loss mask, mm_token_type_ids.

The ids are exactly what transformers' `Qwen2_5_VLProcessor` gives for the same messages
(docs/data.md#converters-prompts-and-augmentations): the chat template renders the text, the k-th
`<|image_pad|>` becomes prod(grid_k)/merge² copies (the k-th `<|video_pad|>` likewise with the
video grids), and the expanded string is tokenized (no BOS; Qwen has none and the template writes
every special token itself).

Message text is plain text (docs/data.md#message-text-is-plain-text): only the template's own
control tokens (`<|im_start|>`, `<|im_end|>`, `<|vision_start|>`, the pads, ...) are special
tokens. A literal `<|im_start|>` or `<|vision_start|>` in a user's text, a response, a policy or
a target tokenizes as the characters it is made of, so nobody can forge a turn or an image slot
with text. The template is rendered with a marker in place of each message text; the text
between the template's special tokens is tokenized with the tokenizer's special tokens
switched off. Special tokens split the text in the tokenizer anyway, so the ids of text without
such strings are exactly those of tokenizing the whole rendered string.

Loss mask: 1 on the assistant target's tokens and on the `<|im_end|>` that closes the turn, 0 on
everything else, including the "\\n" the template writes after `<|im_end|>`. This is what a
`{% generation %}`-tagged Qwen template gives through `return_assistant_tokens_mask` (content +
`<|im_end|>`); the model must learn to stop, and the newline after it is never generated.
Tokens are assigned by character span; a token that straddles the start of the target (possible
only when the target begins with whitespace that merges with the "\\n" after `assistant`) counts as
a target token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import re
import threading
import uuid
import weakref

import numpy as np

from data_pipeline.chat_template import ensure_chat_template

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
IM_END = "<|im_end|>"
IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656


class TokenizeError(ValueError):
    """The text of one sample cannot be tokenized as given; `field` says which text."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class Tokenized(NamedTuple):
    input_ids: np.ndarray  # int32 [L]
    attention_mask: np.ndarray  # int32 [L], all ones (padding happens when batching)
    loss_mask: np.ndarray  # int32 [L], 1 on the target and its <|im_end|>
    mm_token_type_ids: np.ndarray  # int32 [L], 1 image pad, 2 video pad, else 0


def image_token_counts(image_grids, *, merge_size: int = 2, kind: str = "image") -> list[int]:
    """Number of `<|image_pad|>` (`<|video_pad|>`) tokens per image (video): t*h*w / merge²."""
    if image_grids is None:
        return []
    grids = np.asarray(image_grids, dtype=np.int64).reshape(-1, 3)
    counts = []
    for k, (t, h, w) in enumerate(grids.tolist()):
        n = t * h * w
        if n <= 0 or n % (merge_size * merge_size):
            raise ValueError(f"{kind} {k}: grid {(t, h, w)} does not give a whole number of "
                             f"{kind} tokens (t*h*w must be a positive multiple of "
                             f"{merge_size ** 2})")
        counts.append(n // (merge_size * merge_size))
    return counts


def expand_image_pads(text: str, counts: Sequence[int], pad: str = IMAGE_PAD) -> str:
    """Replace the k-th `pad` (`<|image_pad|>` or `<|video_pad|>`) with counts[k] copies (each
    occurrence expanded once)."""
    return _expand_segments([(text, False)], counts, pad)[0][0]


def _expand_segments(segments, counts: Sequence[int], pad: str):
    """`expand_image_pads` over (text, is_message_text) segments: the template's segments
    only (message text holds no pad, `_check_text`)."""
    kind = "video" if pad == VIDEO_PAD else "image"
    found = sum(text.count(pad) for text, plain in segments if not plain)
    if found != len(counts):
        raise ValueError(f"the rendered prompt has {found} {kind} placeholders but "
                         f"{len(counts)} {kind} grids were given")
    out, left = [], iter(counts)
    for text, plain in segments:
        if not plain and pad in text:
            pieces = text.split(pad)
            text = pieces[0] + "".join(pad * next(left) + piece for piece in pieces[1:])
        out.append((text, plain))
    return out


def _marked(messages, mark):
    """`messages` with each text (a string content, a text part) replaced by `mark(text)`."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = mark(content)
        else:
            content = [part if _part_kind(part) != "text" else {**part, "text": mark(part["text"])}
                       for part in content]
        out.append({**m, "content": content})
    return out


def _render_segments(tokenizer, messages, add_generation_prompt: bool):
    """The chat template's text of `messages` as (text, is_message_text) segments."""
    texts, nonce = [], uuid.uuid4().hex

    def mark(text):
        texts.append(text)
        return f"\ue000{nonce}:{len(texts) - 1}\ue001"

    marked = tokenizer.apply_chat_template(_marked(messages, mark), tokenize=False,
                                           add_generation_prompt=add_generation_prompt)
    pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", marked)
    segments = [(pieces[0], False)]
    for k, piece in zip(pieces[1::2], pieces[2::2]):
        segments += [(texts[int(k)], True), (piece, False)]
    plain = tokenizer.apply_chat_template(messages, tokenize=False,
                                          add_generation_prompt=add_generation_prompt)
    if "".join(t for t, _ in segments) != plain:
        raise ValueError("the chat template changes the text of the messages (it does not "
                         "insert each text as given), so their text cannot be kept apart from "
                         "the template's control tokens")
    return [(t, p) for t, p in segments if t]


_plain_backends: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_plain_lock = threading.Lock()


def _plain_backend(tokenizer):
    """(a copy of the tokenizer's backend, the `tokenizers` object, with its special tokens
    switched off; a pattern that splits text at the special tokens, or None), made once per
    tokenizer. A copy, not the shared object's switch (`split_special_tokens`), since the
    loader tokenizes on several threads at once."""
    with _plain_lock:
        made = _plain_backends.get(tokenizer)
        if made is None:
            from tokenizers import Tokenizer
            backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            backend.encode_special_tokens = True
            specials = sorted((t.content for t in tokenizer.added_tokens_decoder.values()
                               if t.special), key=len, reverse=True)
            split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials \
                else None
            made = _plain_backends[tokenizer] = (backend, split)
        return made


def _encode_segments(tokenizer, segments) -> tuple[np.ndarray, np.ndarray]:
    """(ids, character offsets [L, 2]) of the joined segments: the tokenizer's special tokens
    count in the template's segments only; every run of text between them (template and
    message text together, as one string) is tokenized with special tokens off."""
    backend, split = _plain_backend(tokenizer)
    ids, offsets, run, run_start, pos = [], [], [], 0, 0

    def flush():
        enc = backend.encode("".join(run), add_special_tokens=False)
        ids.extend(enc.ids)
        offsets.extend((a + run_start, b + run_start) for a, b in enc.offsets)
        run.clear()

    for text, plain in segments:
        pieces = [text] if plain or split is None else split.split(text)
        for k, piece in enumerate(pieces):
            if k % 2:  # a special token the template wrote
                flush()
                ids.append(tokenizer.convert_tokens_to_ids(piece))
                offsets.append((pos, pos + len(piece)))
                run_start = pos + len(piece)
            else:
                run.append(piece)
            pos += len(piece)
    flush()
    return np.asarray(ids, np.int32), np.asarray(offsets, np.int64).reshape(-1, 2)


def _part_kind(part) -> str | None:
    """"image", "video" or "text": what the chat template renders a content part as."""
    if part.get("type") == "image" or "image" in part or "image_url" in part:
        return "image"
    if part.get("type") == "video" or "video" in part:
        return "video"
    return "text" if "text" in part else None


def _count_parts(messages) -> tuple[int, int]:
    """(image parts, video parts), as the chat template tells them apart (images first)."""
    kinds = [_part_kind(part) for m in messages if not isinstance(m["content"], str)
             for part in m["content"]]
    return kinds.count("image"), kinds.count("video")


def _check_text(messages):
    for i, m in enumerate(messages):
        content = m["content"]
        texts = [content] if isinstance(content, str) else [
            p["text"] for p in content if _part_kind(p) == "text"]
        for t in texts:
            if IMAGE_PAD in t or VIDEO_PAD in t:
                raise TokenizeError(f"message {i} ({m['role']}) contains a literal {IMAGE_PAD} or "
                                 f"{VIDEO_PAD} in its text; images must be image parts", f"messages[{i}]")


def render_and_tokenize(messages, target: str | None, tokenizer, image_grids, *,
                        add_generation_prompt: bool, merge_size: int = 2,
                        video_grids=None) -> Tokenized:
    """Render `messages` (+ the assistant `target`, if any) with the chat template and tokenize.

    With a target, the assistant turn is appended and `add_generation_prompt` must be False; the
    loss mask covers the target and its `<|im_end|>`. Without one (RL/eval prompts), the loss mask
    is all zeros and `add_generation_prompt=True` ends the text with `<|im_start|>assistant\\n`.
    `image_grids` is `[n_images, 3]` (t, h, w) in patches, as `preprocess_images` returns, in the
    order the image parts appear; `video_grids` likewise for the video parts.
    """
    ensure_chat_template(tokenizer)
    messages = list(messages)
    _check_text(messages)
    counts = image_token_counts(image_grids, merge_size=merge_size)
    video_counts = image_token_counts(video_grids, merge_size=merge_size, kind="video")
    n_images, n_videos = _count_parts(messages)
    if n_images != len(counts):
        raise ValueError(f"the messages have {n_images} image parts but {len(counts)} image "
                         f"grids were given")
    if n_videos != len(video_counts):
        raise ValueError(f"the messages have {n_videos} video parts but {len(video_counts)} "
                         f"video grids were given")

    if target is None:
        segments, rest = _render_segments(tokenizer, messages, add_generation_prompt), ""
    else:
        if add_generation_prompt:
            raise ValueError("add_generation_prompt must be False when a target is given (the "
                             "assistant turn is rendered)")
        if IMAGE_PAD in target or VIDEO_PAD in target:
            raise TokenizeError(f"the target contains {IMAGE_PAD} or {VIDEO_PAD}", "target")
        segments = _render_segments(
            tokenizer, messages + [{"role": "assistant", "content": target}], False)
        full = "".join(t for t, _ in segments)
        prefix = tokenizer.apply_chat_template(messages, tokenize=False,
                                               add_generation_prompt=True)
        rest = full[len(prefix):]
        if not full.startswith(prefix) or not rest.startswith(target + IM_END):
            raise TokenizeError("the chat template does not render the assistant turn as the "
                                "generation prompt followed by the target and <|im_end|>",
                                "target")
    # the pads are all in the prompt, before `rest`
    segments = _expand_segments(_expand_segments(segments, counts, IMAGE_PAD), video_counts,
                                VIDEO_PAD)
    ids, offsets = _encode_segments(tokenizer, segments)
    loss = np.zeros(len(ids), np.int32)
    if target is not None:
        start = sum(len(t) for t, _ in segments) - len(rest)
        end = start + len(target) + len(IM_END)
        loss = ((offsets[:, 1] > start) & (offsets[:, 0] < end)).astype(np.int32)
    # the tokenizer's own ids (Qwen: 151655 / 151656; a tokenizer trained elsewhere differs)
    img_id, vid_id = (_special_id(tokenizer, t, d) for t, d in ((IMAGE_PAD, IMAGE_PAD_ID),
                                                              (VIDEO_PAD, VIDEO_PAD_ID)))
    mm = (ids == img_id).astype(np.int32) + 2 * (ids == vid_id).astype(np.int32)
    for kind, tid, want in (("image", img_id, sum(counts)), ("video", vid_id, sum(video_counts))):
        n = int((ids == tid).sum())
        if n != want:  # e.g. a tokenizer without <|image_pad|> as one added token
            raise ValueError(f"tokenized text has {n} {kind} pad tokens, expected {want} "
                             f"(is this a Qwen2-VL tokenizer?)")
    return Tokenized(ids, np.ones(len(ids), np.int32), loss, mm)


def _special_id(tokenizer, token: str, default: int) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    return default if tid is None or tid == getattr(tokenizer, "unk_token_id", None) else int(tid)


def tokenize_rendered(rendered, tokenizer, image_grids, *, add_generation_prompt=None,
                      merge_size: int = 2, video_grids=None) -> Tokenized:
    """`render_and_tokenize` for a `RenderedPrompt`: SFT form with a target, else a generation
    prompt (override with `add_generation_prompt`)."""
    if add_generation_prompt is None:
        add_generation_prompt = rendered.target is None
    return render_and_tokenize(rendered.messages, rendered.target, tokenizer, image_grids,
                               add_generation_prompt=add_generation_prompt, merge_size=merge_size,
                               video_grids=video_grids)
