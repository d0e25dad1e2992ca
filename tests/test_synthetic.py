"""The demo's synthetic policy task: labels follow the policy, images show the colour, the
trained tokenizer carries the Qwen2.5-VL special tokens and drives the real tokenisation."""

import json

import numpy as np

from data_pipeline import preprocess_images, synthetic
from data_pipeline.build import build_dataset, open_source
from data_pipeline.prompts import render
from data_pipeline.tokenize import tokenize_rendered


def test_labels_follow_the_policy_and_are_balanced():
    samples = synthetic.make_samples(400, seed=3)
    assert all(s.unsafe == (f"{s.color} is unsafe." in s.policy) for s in samples)
    # every policy rates every colour once, in varying orders
    assert all(sum(f"{c} is " in s.policy for c in synthetic.COLORS) == 4 for s in samples)
    assert len({s.order for s in samples}) > 10
    frac = np.mean([s.unsafe for s in samples])
    assert 0.35 < frac < 0.65, frac
    # the same colour is safe under one policy and unsafe under another
    for color in synthetic.COLORS:
        verdicts = {s.unsafe for s in samples if s.color == color}
        assert verdicts == {True, False}, color
    s = samples[0]
    assert s.color in s.target and ("<answer>no</answer>" in s.target) == s.unsafe
    verdict = "unsafe" if s.unsafe else "safe"
    assert f"says {s.color} is {verdict}, so it is {verdict}." in s.target


def test_images_show_the_colour():
    rng = np.random.default_rng(0)
    for s in synthetic.make_samples(12, seed=1):
        img = np.asarray(synthetic.draw(s, rng, 84)).astype(int)
        ref = np.asarray(synthetic.COLORS[s.color])
        close = (np.abs(img - ref).max(axis=-1) < 40).mean()
        assert close > 0.05, (s, close)  # the shape covers a good part of the picture
        for other, rgb in synthetic.COLORS.items():
            if other != s.color:
                assert (np.abs(img - np.asarray(rgb)).max(axis=-1) < 25).mean() < 0.01


def test_trained_tokenizer_drives_the_pipeline(tmp_path):
    from transformers import AutoTokenizer
    samples = synthetic.make_samples(40, seed=2)
    tok_dir = synthetic.train_tokenizer(synthetic.tokenizer_corpus(samples), tmp_path / "tok",
                                        vocab_size=400)
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    ids = tok.convert_tokens_to_ids(list(synthetic.SPECIAL_TOKENS))
    assert ids == list(range(len(synthetic.SPECIAL_TOKENS)))  # Qwen's order, first
    text = samples[0].target + " ünïcode ok"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: anything encodes
    # raw split -> ArrayRecord -> safeguard_vl rendering -> tokens with one image's pads
    src = synthetic.write_split(tmp_path / "raw", samples[:4], seed=0, name="train")
    assert json.loads(src.read_text().splitlines()[0])["policy"] == samples[0].policy
    build_dataset("generic_jsonl", src, tmp_path / "built", progress=False, echo=False,
                  options=synthetic.DEMO_CONVERTER_OPTIONS)
    source = open_source(str(tmp_path / "built"), "train")
    sample = next(iter(source))
    assert sample.policy == samples[0].policy and sample.target == samples[0].target
    rendered = render("safeguard_vl", sample, mode="rl")
    from PIL import Image
    image = Image.open(tmp_path / "raw" / sample.images[0].path)
    _, grid = preprocess_images([image], min_pixels=84 * 84, max_pixels=84 * 84)
    out = tokenize_rendered(rendered, tok, grid)
    n_pad = int((out.input_ids == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_pad == int(np.prod(grid[0])) // 4 and out.loss_mask.sum() > 10
