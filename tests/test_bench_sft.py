"""`guard-jax bench sft` on the tiny config: both sides run the same SFT computation (losses agree
step by step, through an optimizer update with accumulation, clipping and weight decay) and the
report carries every field; no timing assertions."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from guard_jax import cli
from guard_jax.bench import sft_bench
from guard_jax.models.qwen2_5_vl.config import tiny

TINY = ["--config.data.seq_len=48", "--config.train.micro_batch=2",
        "--config.data.max_pixels=3136"]
# Text only: the vision tower doubles the step's compile time (about 10 s more on the CI's
# CPU); the image path is held by test_synthetic_batch_is_assistant_only, and at run time by the
# bench's own first-step loss check.
TEXT_ONLY = "--config.data.images_per_sample=0"


def test_bench_sft_tiny(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "sft.json"
    # 2 micro-steps per update: the third step's loss comes after one AdamW update, so equal
    # losses there mean the optimizer, clipping, weight decay and accumulation are mirrored.
    rc = cli.main(["bench", "sft", "--steps", "2", "--mfu", "--json", str(out), *TINY, TEXT_ONLY,
                   "--config.train.global_batch=4", "--config.optim.weight_decay=0.1",
                   "--config.optim.lr=0.01"])
    assert rc == 0
    text = capsys.readouterr().out
    for needle in ("ours (guard-jax train step)", "transformers+torch", "tokens/s",
                   "loss tokens/s", "first-step loss", "MFU: skipped"):
        assert needle in text, needle
    m = re.fullmatch(r"sft tokens/s ours/torch = (\d+\.\d\d)x", text.strip().splitlines()[-1])
    assert m, text  # the headline is the last line
    res = json.loads(out.read_text())
    b = res["batch"]
    assert b["micro_batch"] == 2 and b["seq_len"] == 48 and b["padded_tokens"] == 96
    assert 0 < b["loss_tokens"] < b["tokens"] <= 96
    assert b["images"] == b["patches"] == b["image_tokens"] == 0
    for side in ("ours", "torch"):
        s = res[side]
        assert len(s["times_s"]) == 2 and len(s["losses"]) == 3 and s["median_s"] > 0
        assert s["tokens_per_s"] == pytest.approx(b["tokens"] / s["median_s"])
        assert s["loss_tokens_per_s"] == pytest.approx(b["loss_tokens"] / s["median_s"])
    assert res["ours"]["gradient_accumulation"] == 2
    assert res["ratio"] == pytest.approx(res["ours"]["tokens_per_s"] / res["torch"]["tokens_per_s"])
    assert res["ratio_min"] == pytest.approx(res["torch"]["min_s"] / res["ours"]["min_s"])
    assert float(m.group(1)) == pytest.approx(res["ratio"], abs=0.006)
    lc = res["loss_check"]
    assert lc["ok"] and lc["rel_diff"] <= 1e-3
    ours, theirs = np.asarray(res["ours"]["losses"]), np.asarray(res["torch"]["losses"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[2] < ours[0] - 1e-3  # the update happened (and on both sides alike)
    assert res["mfu"]["skipped"].startswith("no GPU")


def test_synthetic_batch_is_assistant_only():
    c = tiny()
    b = sft_bench.synthetic_batch(c, batch=4, seq_len=64, images_per_sample=1, image_size=56,
                                  min_fill=0.5, seed=3)
    ids, mask, loss = b["input_ids"], b["attention_mask"], b["loss_mask"]
    assert ids.shape == (4, 64) and (mask == 0).any()  # some padding
    for i in range(4):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert (ids[i, n:] == c.generation_pad_id).all()
        on = np.flatnonzero(loss[i])
        assert len(on) and on[-1] == n - 1 and (np.diff(on) == 1).all()  # one suffix
        assert not (ids[i][loss[i] == 1] == c.image_token_id).any()
        assert (ids[i] == c.image_token_id).sum() == 4
    pv, grids = sft_bench.flat_images(b)
    assert pv.shape == (4 * 16, c.vision.patch_dim) and grids.tolist() == [[1, 4, 4]] * 4


def test_loss_check_fails_on_mismatch():
    assert not sft_bench.check_losses([2.0, 1.9], [2.01, 1.9], 1e-3)["ok"]
    assert sft_bench.check_losses([2.0, 1.9], [2.0001, 1.9], 1e-3)["ok"]


def test_unmirrored_settings_are_refused(capsys):
    assert cli.main(["bench", "sft", *TINY, "--config.optim.freeze=^visual"]) == 2
    assert "optim.freeze" in capsys.readouterr().err


def test_run_mfu_step_runs_on_cpu():
    """`bench sft --mfu` only runs on a GPU from the CLI; its step (full-length sequences with
    an image, the run config's own dtype) must build and train here on the tiny config."""
    from guard_jax.run_config import load_config

    run = load_config(sft_bench.DEFAULT_CONFIG, [*TINY, "--config.data.max_pixels=12544",
                                                 "--config.model.dtype=bfloat16"])
    res = sft_bench.run_mfu(run, steps=1, seed=0)
    b = res["batch"]
    assert b["micro_batch"] == 2 and b["seq_len"] == 48 and b["tokens"] == 96  # min_fill 1.0
    assert b["images"] == 2 and b["image_tokens"] > 0 and res["dtype"] == "bfloat16"
    assert res["model_flops_per_step"] > 0 and res["ours"]["median_s"] > 0
    assert all(np.isfinite(res["ours"]["losses"]))
    assert res["peak_flops"] is None and res["mfu"] is None  # no peak figure for a CPU
