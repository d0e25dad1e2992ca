"""Chat messages + assistant target -> token ids, attention mask, loss mask, mm_token_type_ids.

The ids are exactly what transformers' `Qwen2_5_VLProcessor` gives for the same messages
(docs/data.md#converters-prompts-and-augmentations): the chat template renders the text, the k-th
`<|image_pad|>` becomes prod(grid_k)/merge² copies (the k-th `<|video_pad|>` likewise with the
video grids), and the expanded string is tokenized in one piece (no BOS; Qwen has none and the template writes every special token itself).

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
    kind = "video" if pad == VIDEO_PAD else "image"
    pieces = text.split(pad)
    if len(pieces) - 1 != len(counts):
        raise ValueError(f"the rendered prompt has {len(pieces) - 1} {kind} placeholders but "
                         f"{len(counts)} {kind} grids were given")
    out = [pieces[0]]
    for n, piece in zip(counts, pieces[1:]):
        out += [pad * n, piece]
    return "".join(out)


def _count_parts(messages) -> tuple[int, int]:
    """(image parts, video parts), as the chat template tells them apart (images first)."""
    images = videos = 0
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            continue
        for part in content:
            if part.get("type") == "image" or "image" in part or "image_url" in part:
                images += 1
            elif part.get("type") == "video" or "video" in part:
                videos += 1
    return images, videos


def _check_text(messages):
    for i, m in enumerate(messages):
        content = m["content"]
        texts = [content] if isinstance(content, str) else [
            p.get("text", "") for p in content if p.get("type") == "text"]
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

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    if target is None:
        prefix, rest = render(messages, add_generation_prompt), ""
    else:
        if add_generation_prompt:
            raise ValueError("add_generation_prompt must be False when a target is given (the "
                             "assistant turn is rendered)")
        if IMAGE_PAD in target or VIDEO_PAD in target:
            raise TokenizeError(f"the target contains {IMAGE_PAD} or {VIDEO_PAD}", "target")
        full = render(messages + [{"role": "assistant", "content": target}], False)
        prefix = render(messages, True)
        rest = full[len(prefix):]
        if not full.startswith(prefix) or not rest.startswith(target + IM_END):
            raise TokenizeError("the chat template does not render the assistant turn as the "
                                "generation prompt followed by the target and <|im_end|>",
                                "target")
    prefix = expand_image_pads(expand_image_pads(prefix, counts), video_counts, VIDEO_PAD)
    text = prefix + rest

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    loss = np.zeros(len(ids), np.int32)
    if target is not None:
        start, end = len(prefix), len(prefix) + len(target) + len(IM_END)
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
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
