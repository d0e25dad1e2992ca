"""A synthetic policy-conditioned guard task, drawn with pillow, for the demo and tests.

Each sample is one image (a coloured shape on a light background) and a policy rating every
colour safe or unsafe ("Colour rules: red is unsafe. blue is safe. ..."); the image is unsafe
exactly when the policy rates its shape's colour unsafe, so the same image is safe under one
policy and unsafe under another, and the answer needs both the image and the
policy text (LlavaGuard / SafeGuard-VL style). Samples carry a short reasoning
target in the SafeGuard-VL grammar (`<think>...</think><answer>yes|no</answer>`, yes = safe)
and render with the `safeguard_vl` recipe.

`write_split` writes a JSON Lines file plus PNG images that the `generic_jsonl` converter reads
(see DEMO_CONVERTER_OPTIONS); `train_tokenizer` fits a small byte-level BPE tokenizer with the
Qwen2.5-VL special tokens and chat template on the task's text.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (215, 40, 40), "green": (40, 160, 60), "blue": (45, 75, 215),
          "yellow": (225, 200, 30)}
SHAPES = ("circle", "square", "triangle")
# The Qwen2.5-VL special tokens, in Qwen's id order (the trained tokenizer puts them first).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>")
DEMO_CONVERTER_OPTIONS = {"user_text_field": "question", "allow_empty_text": True,
                          "prompt_label_field": "label", "images_field": "images",
                          "id_field": "id", "policy_field": "policy", "target_field": "target",
                          "task": "policy_compliance"}


@dataclasses.dataclass(frozen=True)
class ShapeSample:
    id: str
    color: str
    shape: str
    unsafe_colors: tuple[str, ...]  # the colours this sample's policy rates unsafe
    order: tuple[str, ...] = tuple(COLORS)  # the order the policy lists the colours in

    @property
    def unsafe(self) -> bool:
        return self.color in self.unsafe_colors

    @property
    def policy(self) -> str:
        rules = " ".join(f"{c} is {'unsafe' if c in self.unsafe_colors else 'safe'}."
                         for c in self.order)
        return f"Colour rules: {rules}"

    @property
    def target(self) -> str:
        # Reasoning a tiny model learns in a few hundred steps: name the image's colour, then
        # repeat the policy's rule for that colour ("<colour> is" -> its verdict, a lookup that
        # attention does by matching the two tokens before it) and conclude. A target that must
        # COMPARE two colours ("the policy forbids X; the image shows Y: forbidden?") stays at
        # chance for this model size: the repeated colour always matches itself.
        verdict = "unsafe" if self.unsafe else "safe"
        return (f"<think>The image shows a {self.color} {self.shape}. The policy says "
                f"{self.color} is {verdict}, so it is {verdict}.</think>"
                f"<answer>{'no' if self.unsafe else 'yes'}</answer>")


def draw(sample: ShapeSample, rng: np.random.Generator, size: int) -> Image.Image:
    """The shape in its colour (slightly jittered), random size and place, on a light
    background with mild noise."""
    bg = tuple(int(v) for v in rng.integers(200, 250, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLORS[sample.color])
    box = (cx - r, cy - r, cx + r, cy + r)
    if sample.shape == "circle":
        d.ellipse(box, fill=fill)
    elif sample.shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    arr = np.asarray(img, np.int16) + rng.integers(-6, 7, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_samples(n: int, seed: int, *, prefix: str = "s") -> list[ShapeSample]:
    """n samples, about half unsafe: each policy rates every colour safe or unsafe (the image's
    colour unsafe with probability 1/2, the others independently at random) and lists them in
    a random order, so the same image is safe under one policy and unsafe under another."""
    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    out = []
    for i in range(n):
        color = str(rng.choice(colors))
        unsafe = {c for c in colors if c != color and rng.integers(0, 2)}
        if rng.integers(0, 2):
            unsafe.add(color)
        order = tuple(str(c) for c in rng.permutation(colors))
        out.append(ShapeSample(f"{prefix}{i:05d}", color, str(rng.choice(SHAPES)),
                               tuple(c for c in order if c in unsafe), order))
    return out


def write_split(out_dir, samples: list[ShapeSample], *, seed: int, image_size: int = 84,
                name: str = "data") -> Path:
    """`out_dir/name.jsonl` + `out_dir/images/<id>.png`; returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    path = out / f"{name}.jsonl"
    with open(path, "w") as f:
        for s in samples:
            rel = f"images/{s.id}.png"
            draw(s, rng, image_size).save(out / rel)
            f.write(json.dumps({"id": s.id, "question": "", "images": [rel],
                                "label": "unsafe" if s.unsafe else "safe", "policy": s.policy,
                                "target": s.target, "color": s.color, "shape": s.shape}) + "\n")
    return path


def train_tokenizer(texts, out_dir, *, vocab_size: int = 1024) -> Path:
    """A byte-level BPE tokenizer fitted on `texts`, saved as a transformers tokenizer
    directory with the Qwen2.5-VL special tokens and chat template (eos `<|im_end|>`, pad
    `<|endoftext|>`). Any text still encodes (byte fallback through the byte alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from data_pipeline.chat_template import CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None,
                                   additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    fast.chat_template = CHAT_TEMPLATE
    out = Path(out_dir)
    os.makedirs(out, exist_ok=True)
    fast.save_pretrained(out)
    return out


def tokenizer_corpus(samples: list[ShapeSample]) -> list[str]:
    """The task's text as the safeguard_vl recipe renders it (system prompt, question with the
    policy, target), for fitting the tokenizer."""
    from data_pipeline.prompts import safeguard_vl
    from data_pipeline.schema import ImageRef, Label, Sample, Task

    texts = []
    for s in samples:
        sample = Sample(id=s.id, source="synthetic", task=Task.POLICY_COMPLIANCE, user_text="",
                        images=(ImageRef(path="x.png"),), policy=s.policy, target=s.target,
                        prompt_label=Label.HARMFUL if s.unsafe else Label.UNHARMFUL)
        rendered = safeguard_vl.render(sample)
        for m in rendered.messages:
            parts = m["content"] if isinstance(m["content"], list) else [
                {"type": "text", "text": m["content"]}]
            texts += [p["text"] for p in parts if p.get("type") == "text"]
        texts.append(rendered.target)
    return texts


__all__ = ["COLORS", "SHAPES", "SPECIAL_TOKENS", "DEMO_CONVERTER_OPTIONS", "ShapeSample", "draw",
           "make_samples", "write_split", "train_tokenizer", "tokenizer_corpus"]
