"""`guard-jax bench rollout` on the tiny config: both sides run, produce the same greedy tokens
and positive throughputs (no timing assertions); the roofline's byte count matches a hand
computation."""

from __future__ import annotations

import json

from bench_args import parse_bench
from guard_jax.bench import main
from guard_jax.bench import rollout_bench as rb
from guard_jax.models.qwen2_5_vl.config import tiny


def test_parser_defaults():
    a = parse_bench(["rollout"])
    assert (a.config_size, a.batch, a.prompt_len, a.max_new_tokens) == ("small", 8, 64, 64)
    assert a.temperature == 0 and a.num_samples == 1 and not a.roofline
    assert parse_bench(["rollout", "--gpu-roofline"]).roofline


def test_bench_rollout_tiny(tmp_path, capsys):
    out = tmp_path / "rollout.json"
    args = parse_bench(["rollout", "--config-size", "tiny", "--batch", "2", "--prompt-len", "24",
                   "--max-new-tokens", "6", "--repeats", "1", "--roofline",
                   "--peak-bandwidth", "20", "--json", str(out)])
    assert main(args) == 0
    text = capsys.readouterr().out
    for needle in ("ours (jax.jit)", "transformers+torch", "ratio ours/torch", "of the bandwidth"):
        assert needle in text, needle
    res = json.loads(out.read_text())
    assert res["rows"] == 2 and res["max_new_tokens"] == 6
    for side in ("ours", "torch"):
        assert res[side]["tokens_per_s"] > 0 and res[side]["generate"]["median_s"] > 0
    assert res["ratio"] > 0
    # same weights, greedy, the EOS id out of the vocabulary: every token equal, every step run
    assert res["token_agreement"] == 1.0
    assert res["ours"]["decode_steps"] == 5 and res["ours"]["cache_slots"] == 24 + 6
    r = res["roofline"]
    assert r["peak_bytes_per_s"] == 20e9 and 0 < r["fraction"]
    assert r["bytes_per_step"] == rb.decode_bytes_per_step(tiny(), res["ours"]["cache_bytes"])
    assert res["ours"]["cache_bytes"] == 2 * 2 * 2 * 30 * 2 * 16 * 4


def test_roofline_bytes_by_hand():
    c = tiny()
    # per layer: 2 norms 2*64, q 64*4*16 + bias 64, k and v 64*2*16 + bias 32 each,
    # o 4*16*64, gate/up/down 3*64*128 = 37,120 params; 2 layers; lm_head 64*256; norm 64
    params = 2 * 37_120 + 64 * 256 + 64
    cache = 2 * 2 * 2 * 30 * 2 * 16 * 4  # k+v, layers, rows, slots, kv heads, head_dim, f32
    ours = {"decode_steps": 5, "decode": {"median_s": 0.01}, "cache_bytes": cache}
    r = rb.roofline(c, ours, peak=100e9)
    assert r["bytes_per_step"] == {"weights": params * 4, "cache": cache,
                                   "total": params * 4 + cache}
    assert abs(r["step_s"] - 0.002) < 1e-12
    assert abs(r["fraction"] - (params * 4 + cache) / 0.002 / 100e9) < 1e-12


def test_peak_bandwidth_table():
    assert rb.peak_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert rb.peak_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert rb.peak_bandwidth("NVIDIA H200") == 4.8e12
    assert rb.peak_bandwidth("TPU v5 lite") == 0.819e12
    assert rb.peak_bandwidth("TPU v5") == 2.765e12
    assert rb.peak_bandwidth("cpu") is None
