"""`guard-jax bench reward` on tiny sizes: both sides run, agree, and the output carries the
fields docs/performance.md quotes (no timing assertions)."""

from __future__ import annotations

import json

from bench_args import parse_bench
from guard_jax.bench import main
from guard_jax.bench.reward_bench import RECIPES


def test_parser_defaults():
    args = parse_bench(["reward"])
    assert args.sequences == 512 and args.tokens == 1024
    assert args.recipes.split(",") == list(RECIPES)


def test_bench_reward_tiny(tmp_path, capsys):
    # one recipe keeps this to one compile; tests/test_rewards.py holds every recipe's
    # device reward equal to its reference
    out = tmp_path / "reward.json"
    assert main(parse_bench(["reward", "--sequences", "8", "--tokens", "48", "--rounds", "1",
                        "--recipes", "guardreasoner_vl", "--json", str(out)])) == 0
    text = capsys.readouterr().out
    for needle in ("8 sequences x 48 tokens", "guardreasoner_vl", "jit:",
                   "host decode + reference:", "ratio jit/host"):
        assert needle in text, needle
    res = json.loads(out.read_text())
    assert set(res["recipes"]) == {"guardreasoner_vl"}
    for r in res["recipes"].values():
        assert r["device_seq_per_s"] > 0 and r["host_seq_per_s"] > 0 and r["ratio"] > 0
        assert len(r["device_s"]) == len(r["host_s"]) == 1 and r["compile_s"] > 0
        assert r["max_abs_total_diff"] < 1e-3      # both sides computed the same rewards
        assert 48 < r["bytes_per_seq"] < 48 * 128


def test_bench_reward_rejects_unknown_recipe():
    import pytest
    from guard_jax.errors import InputError
    with pytest.raises(InputError, match="unknown recipes"):
        main(parse_bench(["reward", "--recipes", "llamaguard"]))
