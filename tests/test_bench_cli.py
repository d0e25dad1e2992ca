"""`guard-jax bench model` on the tiny config: every stage runs and reports positive numbers
(no timing assertions), and the MFU FLOP count matches a hand computation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench_args import parse_bench
from guard_jax.bench import flops, main
from guard_jax.models.qwen2_5_vl.config import tiny


def test_parser_defaults():
    args = parse_bench(["model"])
    assert args.config_size == "small" and args.seq_len == 512 and args.image_size == 448
    assert args.compile_config == "7b" and args.compile_seq_len == 4096
    assert not args.skip_torch and not args.skip_compile and not args.mfu


def test_no_bench_named(capsys):
    assert main(parse_bench([])) == 2


def test_bench_model_tiny(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    args = parse_bench(["model", "--config-size", "tiny", "--seq-len", "64", "--image-size", "56",
                   "--steps", "1", "--compile-config", "tiny", "--compile-seq-len", "64",
                   "--compile-image-size", "56", "--mfu", "--interleave", "--breakdown",
                   "--json", str(out)])
    assert main(args) == 0
    text = capsys.readouterr().out
    for needle in ("(a) forward+backward step", "ours (jax.jit)", "transformers+torch",
                   "ratio ours/torch", "(b) train step", "lower", "compile", "(c) MFU"):
        assert needle in text, needle
    res = json.loads(out.read_text())
    a = res["step"]
    assert a["image_tokens"] == 4 and a["patches"] == 16 and a["model_flops"] > 0
    for side in ("ours", "torch"):
        assert a[side]["median_s"] > 0 and a[side]["min_s"] > 0 and len(a[side]["times_s"]) == 1
        assert a[side]["loss"] > 0
    assert a["ours"]["compile_s"] > 0 and a["ratio"] > 0 and a["interleaved"]
    # page faults per step on both sides, XLA's own temporary/output buffer sizes for ours
    assert all(a[side]["minor_faults_per_step"] >= 0 for side in ("ours", "torch"))
    assert a["ours"]["temp_mb"] > 0 and a["ours"]["output_mb"] > 0
    assert "page faults/step" in text and "XLA temp + out" in text
    # interleaved: the per-round ratio (one round here) is ours' time over torch's in that round
    assert a["ratio_rounds"] == pytest.approx(a["ours"]["times_s"][0] / a["torch"]["times_s"][0])
    assert "median of the per-round ratios" in text
    # --breakdown times the same three pieces on both sides
    pieces = {"vision_fwd_bwd_s", "decoder_fwd_bwd_s", "lm_head_loss_fwd_bwd_s"}
    assert set(a["breakdown"]) == pieces and set(a["breakdown_torch"]) == pieces
    assert all(v > 0 for v in [*a["breakdown"].values(), *a["breakdown_torch"].values()])
    assert "ours/torch" in text and "lm head loss" in text
    # same random-init scale on both sides: the initial loss is about log(vocab) for both
    assert abs(a["ours"]["loss"] - a["torch"]["loss"]) < 0.5
    b = res["compile"]
    assert b["lower_s"] > 0 and b["compile_s"] > 0 and b["total_s"] > 0
    assert b["seq_len"] == 64 and b["patches"] == 16 and b["remat"] == "full"
    assert b["params"] > 0
    # no GPU/TPU in CI: --mfu says why it did not run
    if res["backend"] == "cpu":
        assert "skipped" in res["mfu"]


def test_bench_model_skip_torch_and_compile(tmp_path):
    out = tmp_path / "b.json"
    args = parse_bench(["model", "--config-size", "tiny", "--seq-len", "32", "--image-size", "0",
                   "--steps", "1", "--skip-torch", "--skip-compile", "--breakdown",
                   "--json", str(out)])
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert "torch" not in res["step"] and "compile" not in res
    assert res["step"]["ours"]["median_s"] > 0 and res["step"]["patches"] == 0
    assert all(v > 0 for v in res["step"]["breakdown"].values())


def test_flops_tiny_by_hand():
    c = tiny()
    # text: E=64, 4 heads / 2 kv of 16, mlp 128, 2 layers, vocab 256; 64 tokens
    L = 64
    per_token_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128  # q, k+v, o, mlp = 36864
    dense = 2 * L * per_token_layer * 2                                # 9_437_184
    attn = 2 * L * L * 4 * 16 * 2                                      # causal half: 1_048_576
    head = 2 * L * 64 * 256                                            # 2_097_152
    t = flops.text_forward_flops(c, L)
    assert (t["dense"], t["attention"], t["lm_head"]) == (dense, attn, head)
    assert t["total"] == 12_582_912

    # vision: d=32, mlp 48, 2 blocks (block 1 full, block 0 windowed), window 56 px = 2x2
    # merged tokens = 16 patches; patch_dim 3*2*14*14 = 1176.
    # 112 px image: grid 1x8x8 = 64 patches, 4 full windows of 16 patches.
    n = 64
    patch_embed = 2 * n * 1176 * 32
    dense_blocks = 2 * (2 * n * (3 * 32 * 32 + 32 * 32 + 3 * 32 * 48))
    attn_v = 4 * 32 * (64 ** 2 + 4 * 16 ** 2)  # one full block + one windowed block
    merger = 2 * (n // 4) * (128 * 128 + 128 * 64)
    v = flops.vision_forward_flops(c, [[1, 8, 8]])
    assert v["patch_embed"] == patch_embed and v["blocks_dense"] == dense_blocks
    assert v["attention"] == attn_v and v["merger"] == merger
    assert v["total"] == patch_embed + dense_blocks + attn_v + merger

    # 84 px: grid 1x6x6, 3x3 merged tokens -> windows of 2x2, 2x1, 1x2, 1x1 merged tokens
    # = 16, 8, 8, 4 patches: linear in the window, not 36^2.
    v84 = flops.vision_forward_flops(c, [[1, 6, 6]])
    assert v84["attention"] == 4 * 32 * (36 ** 2 + 16 ** 2 + 8 ** 2 + 8 ** 2 + 4 ** 2)

    s = flops.train_step_flops(c, L, batch=2, grids=[[1, 8, 8], [1, 8, 8]])
    assert s["forward"] == 2 * t["total"] + flops.vision_forward_flops(
        c, [[1, 8, 8], [1, 8, 8]])["total"]
    assert s["train_step"] == 3 * s["forward"]


def test_peak_flops_table():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("TPU v5p") == 459e12
    assert flops.peak_flops("TPU v5") == 459e12
    assert flops.peak_flops("TPU v6 lite") == 918e12
    assert flops.peak_flops("TPU v5 lite") is None
    assert flops.peak_flops("cpu") is None
    assert flops.mfu(1e12, 2.0, 1e12) == 0.5


def test_run_mfu_step_runs_on_cpu():
    """The MFU measurement only runs on a GPU/TPU from the CLI, and GPU time is scarce: its step
    (bf16, the default remat, no padding mask so the decoder attention is purely causal) must
    build, compile and train here on the tiny config, so a GPU session measures rather than
    debugs."""
    from guard_jax.bench import model_bench

    c = model_bench.make_config("tiny", "bfloat16", "dots_no_batch")
    res = model_bench.run_mfu(c, 64, 56, 2)
    assert res["padding_mask"] is False and res["remat"] == "dots_no_batch"
    assert res["image_tokens"] == 4 and res["seq_len"] == 64
    assert np.isfinite(res["loss"]) and res["loss"] > 0
    assert res["model_flops_per_step"] > 0 and res["tokens_per_s"] > 0
    assert len(res["times_s"]) == 2
    assert res["peak_flops"] is None and res["mfu"] is None  # no peak figure for a CPU
