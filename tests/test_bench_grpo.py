"""`guard-jax bench grpo` on the tiny config: both sides run, agree, and the output carries the
fields docs/performance.md quotes (no timing assertions)."""

from __future__ import annotations

import json

from bench_args import parse_bench
from guard_jax.bench import main


def test_parser_defaults():
    args = parse_bench(["grpo"])
    assert args.config_size == "small" and args.prompts * args.generations == 8
    assert args.new_tokens == 256 and args.entropy_coeff == 0.0


def test_bench_grpo_tiny(tmp_path, capsys):
    out = tmp_path / "grpo.json"
    assert main(parse_bench(["grpo", "--config-size", "tiny", "--prompt-len", "32", "--new-tokens",
                        "16", "--rounds", "1", "--entropy-coeff", "0.01", "--temperature",
                        "0.8", "--json", str(out)])) == 0
    text = capsys.readouterr().out
    for needle in ("GRPO update micro-batch", "fused head", "autodiff head", "XLA temp memory",
                   "ratio fused/autodiff"):
        assert needle in text, needle
    res = json.loads(out.read_text())
    assert res["tokens"] == 2 * 4 * 16 and res["ratio"] > 0
    assert abs(res["loss_fused"] - res["loss_autodiff"]) < 1e-5
    assert res["max_rel_grad_diff"] < 1e-4       # the two heads give the same gradients
    for side in ("fused", "autodiff"):
        s = res["sides"][side]
        assert s["median_s"] > 0 and s["temp_mb"] > 0 and len(s["times_s"]) == 1
