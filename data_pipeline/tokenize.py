"""Chat messages + assistant target -> token ids, attention mask, loss mask, mm_token_type_ids.

The ids are exactly what transformers' `Qwen2_5_VLProcessor` gives for the same messages
(docs/data.md#converters-prompts-and-augmentations): the chat template renders the text, the k-th
`<|image_pad|>` becomes prod(grid_k)/merge² copies, and the expanded string is tokenized in one
piece (no BOS; Qwen has none and the template writes every special token itself).

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


def image_token_counts(image_grids, *, merge_size: int = 2) -> list[int]:
    """Number of `<|image_pad|>` tokens per image: t*h*w / merge_size**2."""
    if image_grids is None:
        return []
    grids = np.asarray(image_grids, dtype=np.int64).reshape(-1, 3)
    counts = []
    for k, (t, h, w) in enumerate(grids.tolist()):
        n = t * h * w
        if n <= 0 or n % (merge_size * merge_size):
            raise ValueError(f"image {k}: grid {(t, h, w)} does not give a whole number of image "
                             f"tokens (t*h*w must be a positive multiple of {merge_size ** 2})")
        counts.append(n // (merge_size * merge_size))
    return counts


def expand_image_pads(text: str, counts: Sequence[int]) -> str:
    """Replace the k-th `<|image_pad|>` with counts[k] copies (each occurrence expanded once)."""
    pieces = text.split(IMAGE_PAD)
    if len(pieces) - 1 != len(counts):
        raise ValueError(f"the rendered prompt has {len(pieces) - 1} image placeholders but "
                         f"{len(counts)} image grids were given")
    out = [pieces[0]]
    for n, piece in zip(counts, pieces[1:]):
        out += [IMAGE_PAD * n, piece]
    return "".join(out)


def _count_image_parts(messages) -> int:
    n = 0
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            continue
        for part in content:
            if part.get("type") == "video" or "video" in part:
                raise ValueError("video parts are not supported")
            if part.get("type") == "image" or "image" in part or "image_url" in part:
                n += 1
    return n


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
                        add_generation_prompt: bool, merge_size: int = 2) -> Tokenized:
    """Render `messages` (+ the assistant `target`, if any) with the chat template and tokenize.

    With a target, the assistant turn is appended and `add_generation_prompt` must be False; the
    loss mask covers the target and its `<|im_end|>`. Without one (RL/eval prompts), the loss mask
    is all zeros and `add_generation_prompt=True` ends the text with `<|im_start|>assistant\\n`.
    `image_grids` is `[n_images, 3]` (t, h, w) in patches, as `preprocess_images` returns, in the
    order the image parts appear.
    """
    ensure_chat_template(tokenizer)
    messages = list(messages)
    _check_text(messages)
    counts = image_token_counts(image_grids, merge_size=merge_size)
    n_parts = _count_image_parts(messages)
    if n_parts != len(counts):
        raise ValueError(f"the messages have {n_parts} image parts but {len(counts)} image grids "
                         f"were given")

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
    prefix = expand_image_pads(prefix, counts)
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
    n_img = int((ids == img_id).sum())
    if n_img != sum(counts):  # e.g. a tokenizer without <|image_pad|> as one added token
        raise ValueError(f"tokenized text has {n_img} image pad tokens, expected {sum(counts)} "
                         f"(is this a Qwen2-VL tokenizer?)")
    return Tokenized(ids, np.ones(len(ids), np.int32), loss, mm)


def _special_id(tokenizer, token: str, default: int) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    return default if tid is None or tid == getattr(tokenizer, "unk_token_id", None) else int(tid)


def tokenize_rendered(rendered, tokenizer, image_grids, *, add_generation_prompt=None,
                      merge_size: int = 2) -> Tokenized:
    """`render_and_tokenize` for a `RenderedPrompt`: SFT form with a target, else a generation
    prompt (override with `add_generation_prompt`)."""
    if add_generation_prompt is None:
        add_generation_prompt = rendered.target is None
    return render_and_tokenize(rendered.messages, rendered.target, tokenizer, image_grids,
                               add_generation_prompt=add_generation_prompt, merge_size=merge_size)
