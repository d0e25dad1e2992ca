"""`guard-jax bench rollout` on the tiny config: both sides run, produce the same greedy tokens
and positive throughputs (no timing assertions); the roofline's byte count matches a hand
computation."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
    args = parse_bench(["rollout", "--config-size", "tiny", "--batch", "4", "--prompt-len", "24",
                   "--max-new-tokens", "6", "--repeats", "1", "--roofline",
                   "--peak-bandwidth", "20", "--lengths", "guard", "--length-median", "2",
                   "--engine", "static", "--json", str(out)])
    assert main(args) == 0
    text = capsys.readouterr().out
    for needle in ("ours: static", "transformers (", "ratio static/torch", "of the bandwidth",
                   "util", "KV B/token", "read/step MB", "KV MB G=8", "lengths: log-normal"):
        assert needle in text, needle
    res = json.loads(out.read_text())
    assert res["rows"] == 4 and res["max_new_tokens"] == 6
    targets = np.asarray(res["target_lengths"])
    assert targets.max() == 6 and targets.min() >= 1 and targets.sum() < 4 * 6
    for side in ("ours", "torch"):
        assert res[side]["tokens_per_s"] > 0 and res[side]["generate"]["median_s"] > 0
    assert res["ratio"] > 0
    # same weights, greedy, the EOS id out of the vocabulary: every token equal, every step run
    assert res["token_agreement"] == 1.0
    static = res["engines"]["static"]
    assert static is not None and res["ours"]["decode_steps"] == 5
    assert res["ours"]["cache_slots"] == 24 + 6
    # static batching: every row decodes until the longest (the cap) ends
    cache = 2 * 2 * 4 * 30 * 2 * 16 * 4  # k+v, layers, rows, slots, kv heads, head_dim, f32
    weights = rb.decode_bytes_per_step(tiny(), 0)["weights"]
    for side in (static, res["torch"]):
        assert side["useful_tokens"] == targets.sum() and side["row_steps"] == 4 * 6
        assert side["utilisation"] == targets.sum() / 24
        assert side["kv_cache_bytes"] == cache
        assert side["kv_bytes_per_useful_token"] == cache / targets.sum()
        assert side["kv_cache_bytes_g8"] == cache * 8 and side["kv_cache_bytes_g16"] == cache * 16
    assert static["bytes_read_per_step"] == weights + cache   # the whole static cache
    # transformers' dynamic cache: a step reads the filled part, prompt + 2.5 slots on average
    assert res["torch"]["kv_bytes_read_per_step"] == cache * (24 + 2.5) / 30
    assert abs(static["tokens_per_s"] * static["generate"]["median_s"] - targets.sum()) < 1e-6
    r = res["roofline"]
    assert r["peak_bytes_per_s"] == 20e9 and 0 < r["fraction"]
    assert r["bytes_per_step"] == rb.decode_bytes_per_step(tiny(), res["ours"]["cache_bytes"])
    assert res["ours"]["cache_bytes"] == cache


def test_guard_lengths_have_a_long_tail_capped_at_max_new_tokens():
    t = rb.target_lengths(64, 256, "guard", median=40, sigma=1.0)
    assert t.shape == (64,) and t.min() >= 1 and t.max() == 256
    assert np.median(t) in (39, 40, 40.5, 41) and t.mean() > 1.2 * np.median(t)  # the tail
    assert (t == 256).sum() >= 2                                                   # capped
    assert np.array_equal(t, rb.target_lengths(64, 256, "guard", median=40, sigma=1.0))
    assert not np.array_equal(t, np.sort(t))   # shuffled over the rows (groups mixed)
    assert np.array_equal(rb.target_lengths(3, 9), [9, 9, 9])


def test_engines_by_name():
    from guard_jax.errors import InputError
    from guard_jax.sampling.engines import ENGINES
    assert rb.engine_names(parse_bench(["rollout"])) == ["static"]
    names = parse_bench(["rollout", "--engine", "static", "--engine", f"{next(iter(ENGINES))}"])
    assert rb.engine_names(names) == ["static"]
    with pytest.raises(InputError, match="--engine nope: unknown rollout engine; known: static"):
        rb.engine_names(parse_bench(["rollout", "--engine", "static,nope"]))
    specs = rb.engine_names(parse_bench(["rollout", "--engine", "continuous:8,continuous:32"]))
    assert specs == ["continuous:8", "continuous:32"]
    assert [rb.split_engine(n) for n in specs] == [("continuous", 8), ("continuous", 32)]
    with pytest.raises(InputError, match="--engine continuous:0: the decode slots"):
        rb.split_engine("continuous:0")


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
