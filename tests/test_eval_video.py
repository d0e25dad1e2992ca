"""`guard-jax eval --config` on a converted dataset with videos: the prompts carry the videos'
pads, the videos' arrays (preprocessed with the run's data.video_* settings) reach
`guard_jax.generate` next to a sample's image and with left padding, and the greedy output of
each video sample equals `guard-jax moderate --video` on the same prompt and file. Bad or
missing video files are named (docs/evaluation.md#video)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_pipeline.build import build_dataset
from guard_jax.cli import main as cli_main
from guard_jax.errors import InputError
from guard_jax.evaluation.generation import load_tokenizer
from guard_jax.evaluation.runner import evaluate_config
from guard_jax.moderate_cli import Moderator
from guard_jax.run_config import load_config
from tiny_qwen_dir import write_tiny_qwen_hf_dir
from video_files import encode, random_frames

MAX_NEW = 4
VIDEO_PAD = 151656
# (id, prompt, gold, [T, H, W] of its video or None, with an image)
SAMPLES = [("v0", "what happens in this clip", "harmful", (4, 56, 56), False),
           ("v1", "is this allowed", "unharmful", (6, 56, 84), False),
           ("v2", "describe the scene", "unharmful", (4, 56, 56), True),
           ("t0", "how do I bake bread", "unharmful", None, False)]

CONFIG = '''"""guard-jax eval --config THIS --hf-dir HF --out OUT --config.eval.data_root=DATA"""
from guard_jax.evaluation.runner import eval_base_config


def get_config():
    c = eval_base_config("guardreasoner_vl", preset="tiny_qwen")
    c.model.param_dtype = c.model.dtype = "float32"
    c.data.max_pixels = 56 * 56
    c.eval.recipe_options = "mode='sft',use_sample_instruction=False"
    c.eval.benchmarks = (dict(name="HarmVideo", path="HarmVideo"),)
    c.eval.batch_size = 8  # one row per test device
    c.eval.max_new_tokens = %d
    return c
''' % MAX_NEW


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalvideo")
    write_tiny_qwen_hf_dir(root)
    raw = root / "raw"
    raw.mkdir()
    with open(raw / "videos.jsonl", "w") as f:
        for i, (sid, prompt, gold, shape, with_image) in enumerate(SAMPLES):
            rec = {"id": sid, "prompt": prompt, "label": gold, "videos": [], "images": []}
            if shape:
                (raw / f"{sid}.mp4").write_bytes(encode(random_frames(*shape, seed=i), fps=2))
                rec["videos"] = [f"{sid}.mp4"]
            if with_image:
                Image.fromarray(random_frames(1, 40, 56, seed=9)[0]).save(raw / f"{sid}.png")
                rec["images"] = [f"{sid}.png"]
            f.write(json.dumps(rec) + "\n")
    build_dataset("generic_jsonl", raw / "videos.jsonl", root / "data" / "HarmVideo",
                  split="test", progress=False, echo=False)
    (root / "tiny_eval.py").write_text(CONFIG)
    return root


def test_video_benchmark_scores_end_to_end(task, monkeypatch):
    from guard_jax.evaluation import generation
    seen = []
    real = generation.generate_outputs

    def spy(model, batch, **kw):
        seen.append(batch)
        return real(model, batch, **kw)

    monkeypatch.setattr(generation, "generate_outputs", spy)
    out = task / "out"
    assert cli_main(["eval", "--config", str(task / "tiny_eval.py"), "--hf-dir",
                     str(task / "hf"), "--out", str(out), "--name", "tiny-random",
                     f"--config.eval.data_root={task / 'data'}"]) == 0
    (batch,) = seen  # 4 samples, padded to the batch of 8 with the last one
    # every video's arrays in row order; each row's pads match its grid (t*h*w/4 tokens)
    assert batch.video_grid_thw.tolist() == [[2, 4, 4], [3, 4, 6], [2, 4, 4]]
    assert batch.pixel_values_videos.shape == (32 + 72 + 32, 1176)
    assert batch.image_grid_thw.tolist() == [[1, 4, 6]]
    np.testing.assert_allclose(batch.second_per_grid_ts, [1.0, 1.0, 1.0])
    pads = (batch.input_ids == VIDEO_PAD).sum(1).tolist()
    assert pads == [8, 18, 8, 0, 0, 0, 0, 0]
    lines = [json.loads(x) for x in
             (out / "prompt/outputs/HarmVideo.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [s[0] for s in SAMPLES]
    assert [x["label"] for x in lines] == [s[2] for s in SAMPLES]
    report = json.loads((out / "prompt/report.json").read_text())
    assert report["benchmarks"][0]["n_records"] == 4
    moderator = Moderator(task / "hf", dtype="float32")
    for (sid, prompt, _, shape, with_image), line in zip(SAMPLES, lines):
        assert ("<|vision_start|><|video_pad|><|vision_end|>" in line["prompt"]) == bool(shape)
        # the same prompt and files alone through `guard-jax moderate`: the same greedy text
        alone = moderator("guardreasoner_vl", prompt=prompt, max_new_tokens=MAX_NEW,
                          videos=[task / "raw" / f"{sid}.mp4"] if shape else (),
                          images=[task / "raw" / f"{sid}.png"] if with_image else (),
                          max_pixels=56 * 56)
        assert alone["raw_output"] == line["predict"], sid


def test_bad_and_missing_videos_are_named(task, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ok.mp4").write_bytes(encode(random_frames(4, 56, 56), fps=2))
    (raw / "gone.mp4").write_bytes(encode(random_frames(4, 56, 56), fps=2))
    with open(raw / "v.jsonl", "w") as f:
        for sid, name in (("ok", "ok.mp4"), ("gone", "gone.mp4")):
            f.write(json.dumps({"id": sid, "prompt": "x", "label": "harmful",
                                "videos": [name]}) + "\n")
    build_dataset("generic_jsonl", raw / "v.jsonl", tmp_path / "V", split="test",
                  progress=False, echo=False)
    run = load_config(str(task / "tiny_eval.py"), [f"--config.eval.data_root={tmp_path}"])
    run.eval.benchmarks = (dict(name="V", path="V"),)
    tok = load_tokenizer(task / "tok")
    (raw / "gone.mp4").unlink()
    with pytest.raises(InputError, match=r"1 of 2 video files missing under .*first: gone\.mp4"):
        evaluate_config(run, generate_fn=lambda b: ["x"] * len(b.valid), tokenizer=tok,
                        progress=False)
    run.eval.on_error = "skip"
    out = tmp_path / "out"
    (report,) = evaluate_config(run, generate_fn=lambda b: ["Request: harmful"] * len(b.valid),
                                out_dir=out, tokenizer=tok, progress=False)
    assert report.skipped == {"unreadable_video": 1}
    # a benchmark the suites do not name, with videos: the report's video row (was "?")
    assert report.benchmarks[0].modality == "video"
    (line,) = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert (line["record"], line["field"], line["reason"]) == ("gone", "videos[0]",
                                                               "unreadable_video")
    assert "gone.mp4" in line["message"]
