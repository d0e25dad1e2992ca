"""`guard-jax moderate` on a tiny random Qwen2.5-VL with the real Qwen tokenizer: one JSON verdict
per input (text, image, policy recipe, rewriter recipe), from an HF directory and from a training
checkpoint; argument and file errors; the verdict layout on real-format outputs of each recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from guard_jax.cli import main as cli_main
from guard_jax.moderate_cli import Moderator, UsageError, verdict_json
from tiny_qwen_dir import write_tiny_qwen_hf_dir

MAX_NEW = 4  # one compilation per prompt bucket and image shape; test_eval_model uses 4 too
COMMON_KEYS = {"recipe", "labels", "category", "category_text", "reasoning", "parsed",
               "strict_format", "raw_output", "output_tokens", "finished", "model",
               "prompt_tokens", "images", "videos", "max_new_tokens"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("moderate")
    write_tiny_qwen_hf_dir(root)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(root / "im.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "policy.txt").write_text("O1: Weapons: Should not show guns or knives.\n")
    return root


@pytest.fixture(scope="module")
def moderator(files):
    return Moderator(files / "hf", dtype="float32")


def _check(verdict, recipe, *, images=0):
    """Common layout; a random model's text parses to no label, and says so."""
    verdict = json.loads(json.dumps(verdict))  # what the command prints is plain JSON
    assert COMMON_KEYS <= set(verdict), COMMON_KEYS - set(verdict)
    assert verdict["recipe"] == recipe and verdict["images"] == images
    assert verdict["max_new_tokens"] == MAX_NEW and verdict["finished"] is False
    assert verdict["output_tokens"] == MAX_NEW and verdict["raw_output"]
    assert verdict["parsed"] is False and verdict["prompt_tokens"] > 20
    return verdict


def test_text_prompt(moderator):
    v = _check(moderator("guardreasoner_vl", prompt="how do I bake bread",
                         max_new_tokens=MAX_NEW), "guardreasoner_vl")
    assert v["labels"] == {"request": None, "response": None, "refusal": None}


def test_image_prompt_and_rewriter(moderator, files):
    im = str(files / "im.png")
    v = _check(moderator("guardreasoner_vl", prompt="what is this", response="A cat.",
                         images=[im], max_new_tokens=MAX_NEW), "guardreasoner_vl", images=1)
    assert set(v["labels"]) == {"request", "response", "refusal"}
    text_only = moderator("guardreasoner_vl", prompt="what is this", response="A cat.",
                          max_new_tokens=MAX_NEW)
    # 60x80 px -> 56x84 -> 4x6 patches of 14 -> 6 image pads after the 2x2 merge, between
    # <|vision_start|> and <|vision_end|>
    assert v["prompt_tokens"] == text_only["prompt_tokens"] + 2 + 6
    r = _check(moderator("vlmguard_r1", prompt="how do I sharpen this", images=[im],
                         max_new_tokens=MAX_NEW), "vlmguard_r1", images=1)
    assert r["labels"] == {} and {"risk_analysis", "rewritten_prompt"} <= set(r)


def test_policy_recipe(moderator, files):
    v = _check(moderator("safeguard_vl", images=[str(files / "im.png")],
                         policy=str(files / "policy.txt"), max_new_tokens=MAX_NEW),
               "safeguard_vl", images=1)
    assert v["labels"] == {"rating": None}
    # the policy text is in the prompt: a longer policy gives a longer prompt
    longer = files / "policy_long.txt"
    longer.write_text((files / "policy.txt").read_text() * 3)
    w = moderator("safeguard_vl", images=[str(files / "im.png")], policy=str(longer),
                  max_new_tokens=MAX_NEW)
    assert w["prompt_tokens"] > v["prompt_tokens"]


def test_checkpoint_dir_prints_json(files, moderator, capsys):
    ckpt = files / "ckpt"
    assert cli_main(["import", "--hf-dir", str(files / "hf"), "--out", str(ckpt)]) == 0
    capsys.readouterr()
    assert cli_main(["moderate", "--model", str(ckpt), "--recipe", "guardreasoner_vl",
                     "--prompt", "how do I bake bread", "--dtype", "float32",
                     "--max-new-tokens", str(MAX_NEW)]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    _check(from_ckpt, "guardreasoner_vl")
    assert from_ckpt["model"] == str(ckpt)
    # step 0 of the import holds the HF weights: the same greedy output as the HF directory
    from_hf = moderator("guardreasoner_vl", prompt="how do I bake bread", max_new_tokens=MAX_NEW)
    assert from_ckpt["raw_output"] == from_hf["raw_output"]


@pytest.mark.parametrize("extra, message", [
    (["--recipe", "nope", "--prompt", "x"], "unknown recipe 'nope'; choose one of "
     "guardreasoner_vl, proguard, safeguard_vl, llavaguard, vlmguard_r1"),
    (["--recipe", "guardreasoner_vl", "--prompt", "x", "--image", "{root}/missing.png"],
     "--image {root}/missing.png: cannot read the image"),
    (["--recipe", "llavaguard", "--image", "{root}/broken.png"],
     "--image {root}/broken.png: cannot read the image"),
    (["--recipe", "guardreasoner_vl"], "needs --prompt"),
    (["--recipe", "safeguard_vl", "--prompt", "x", "--image", "{root}/im.png"],
     "no place for --prompt"),
    (["--recipe", "llavaguard"], "judges an image"),
    (["--recipe", "vlmguard_r1", "--prompt", "x", "--response", "y"], "does not judge responses"),
    (["--recipe", "proguard", "--prompt", "x", "--policy", "{root}/policy.txt"],
     "--policy applies to safeguard_vl and llavaguard"),
    (["--recipe", "llavaguard", "--image", "{root}/im.png", "--policy", "{root}/none.txt"],
     "--policy {root}/none.txt: cannot read"),
])
def test_argument_errors(files, capsys, extra, message):
    root = str(files)
    argv = ["moderate", "--model", f"{root}/hf", *[a.format(root=root) for a in extra]]
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert message.format(root=root) in captured.err and captured.out == ""


def test_model_dir_errors(files, tmp_path, capsys):
    base = ["moderate", "--recipe", "guardreasoner_vl", "--prompt", "x"]
    assert cli_main([*base, "--model", str(tmp_path / "absent")]) == 2
    assert f"--model {tmp_path / 'absent'}: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()  # nothing created on the way
    (tmp_path / "empty").mkdir()
    assert cli_main([*base, "--model", str(tmp_path / "empty")]) == 2
    assert "neither an HF directory (no config.json) nor a training workdir" in \
        capsys.readouterr().err


def test_bad_option_names_the_option(moderator):
    with pytest.raises(UsageError, match=r"--option \['colour=red'\]"):
        moderator("guardreasoner_vl", prompt="x", options=["colour=red"])
    with pytest.raises(UsageError, match="mode must be 'sft' or 'rl'"):
        moderator("guardreasoner_vl", prompt="x", options=["mode=eval"])


# ---- the verdict layout on real-format outputs (no model) ----------------------------------
def test_verdict_guardreasoner():
    raw = ("<think>The request asks for a recipe.</think>\n<result>\nRequest: unharmful\n"
           "Response: harmful\nCompletion: compliance\n</result>")
    v = verdict_json("guardreasoner_vl", raw, judged_response=True)
    assert v["labels"] == {"request": "unharmful", "response": "harmful",
                           "refusal": "compliance"}
    assert v["reasoning"] == "The request asks for a recipe." and v["parsed"]
    assert v["strict_format"] and v["raw_output"] == raw
    # a response was judged but the output gives no Response label: not parsed
    assert not verdict_json("guardreasoner_vl", "Request: harmful",
                            judged_response=True)["parsed"]
    assert verdict_json("guardreasoner_vl", "Request: harmful", judged_response=False)["parsed"]


def test_verdict_proguard_and_policy_recipes():
    p = verdict_json("proguard", "<thinking>weapons</thinking>\n<answer>\nRequest:unsafe\n"
                     "Category:C8S2\n</answer>", judged_response=False)
    assert p["labels"] == {"request": "harmful", "response": None}
    assert p["category"] == "C8S2" and p["reasoning"] == "weapons" and p["parsed"]
    ood = verdict_json("proguard", "<answer>\nRequest:unsafe\nCategory:Election fraud\n"
                       "</answer>", judged_response=False)
    assert ood["category"] is None and ood["category_text"] == "Election fraud"
    lg = verdict_json("llavaguard", '{"rating": "Unsafe", "category": "O3: Sexual Content", '
                      '"rationale": "explicit"}', judged_response=False)
    assert lg["labels"] == {"rating": "unsafe"} and lg["category"] == "O3"
    assert lg["reasoning"] == "explicit" and lg["strict_format"]
    sg = verdict_json("safeguard_vl", "safe", judged_response=False)
    assert sg["labels"] == {"rating": "safe"} and sg["parsed"]
    assert verdict_json("safeguard_vl", "maybe", judged_response=False)["labels"] == {
        "rating": None}


def test_verdict_rewriter():
    v = verdict_json("vlmguard_r1", "<think>The knife could hurt.</think>\nHow do I store a "
                     "kitchen knife safely?", judged_response=False)
    assert v["risk_analysis"] == "The knife could hurt."
    assert v["rewritten_prompt"] == "How do I store a kitchen knife safely?" and v["parsed"]
    cut = verdict_json("vlmguard_r1", "<think>The knife", judged_response=False)
    assert cut["rewritten_prompt"] is None and not cut["parsed"]
    assert cut["risk_analysis"] == "The knife"


def test_video_prompt(files, moderator, capsys):
    """`moderate --video PATH`: the verdict is the greedy output of guard_jax.generate on the
    video's arrays from data_pipeline; a bad video is one line naming --video, exit 2."""
    import guard_jax
    from data_pipeline.prompts import render
    from data_pipeline.schema import Label, Sample, Task, VideoRef
    from data_pipeline.tokenize import tokenize_rendered
    from data_pipeline.video_processing import preprocess_videos
    from video_files import encode, random_frames
    clip = files / "clip.mp4"
    clip.write_bytes(encode(random_frames(9, 40, 56, seed=3), fps=4))
    (files / "junk.mp4").write_bytes(b"not a video" * 10)
    assert cli_main(["moderate", "--model", str(files / "hf"), "--recipe", "guardreasoner_vl",
                     "--prompt", "is this clip safe", "--video", str(clip), "--dtype",
                     "float32", "--max-new-tokens", str(MAX_NEW)]) == 0
    v = _check(json.loads(capsys.readouterr().out), "guardreasoner_vl")
    assert v["videos"] == 1
    # the same prompt and video by hand
    pvv, grid, sec = preprocess_videos(clip, fps=2.0, min_frames=4, max_frames=16,
                                       min_pixels=3136, max_pixels=100352)
    sample = Sample(id="x", source="t", task=Task.PROMPT_HARMFULNESS,
                    user_text="is this clip safe", prompt_label=Label.UNHARMFUL,
                    videos=(VideoRef(path=str(clip)),))
    rendered = render("guardreasoner_vl", sample, mode="sft", use_sample_instruction=False)
    tok = tokenize_rendered(rendered, moderator.tokenizer, None, add_generation_prompt=True,
                            video_grids=grid)
    assert v["prompt_tokens"] == len(tok.input_ids)
    assert int((tok.input_ids == 151656).sum()) == int(np.prod(grid)) // 4
    model = moderator.model
    ids = tok.input_ids[None]
    out = guard_jax.generate(model, ids, attention_mask=np.ones_like(ids),
                             pixel_values_videos=pvv, video_grid_thw=grid,
                             second_per_grid_ts=sec, max_new_tokens=MAX_NEW, temperature=0.0,
                             eos_token_ids=model.config.generation_eos_ids)
    assert v["raw_output"] == moderator.tokenizer.decode(out[0], skip_special_tokens=True)
    assert cli_main(["moderate", "--model", str(files / "hf"), "--recipe", "guardreasoner_vl",
                     "--prompt", "x", "--video", str(files / "junk.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"guard-jax moderate: --video {files / 'junk.mp4'}: not a readable "
                          "video") and err.endswith("(unreadable_video)") and "\n" not in err
