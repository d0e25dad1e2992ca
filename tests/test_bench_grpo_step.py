"""`guard-jax bench grpo-step`, our side on the tiny_qwen config (TRL is not a test dependency):
the output's structure, the phases adding up to the step, and the message when TRL is missing
(no timing assertions)."""

from __future__ import annotations

import json

from bench_args import parse_bench
from guard_jax.bench import grpo_step_bench as gs
from guard_jax.bench import main


def test_parser_defaults():
    a = parse_bench(["grpo-step"])
    assert (a.config_size, a.prompts, a.generations, a.new_tokens, a.image_size) == (
        "small", 2, 4, 32, 224)
    assert a.sides == "ours,trl" and a.skip_old_logprob == "auto" and a.kl_coef == 0


def test_grpo_step_ours_tiny(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gs, "trl_available", lambda python: False)
    out = tmp_path / "step.json"
    assert main(parse_bench(["grpo-step", "--config-size", "tiny_qwen", "--prompts", "2",
                             "--generations", "2", "--new-tokens", "4", "--image-size", "56",
                             "--steps", "1", "--kl-coef", "0.05", "--skip-old-logprob", "never",
                             "--json", str(out)])) == 0
    text = capsys.readouterr().out
    assert "TRL is not installed" in text and "measuring ours alone" in text
    for needle in ("rollout", "old_logprob", "update", "ours RSS GiB", "completion tokens/s",
                   "ours holds: params"):
        assert needle in text, needle
    res = json.loads(out.read_text())
    assert "trl_missing" in res and list(res["sides"]) == ["ours"]
    ours = res["sides"]["ours"]
    assert len(ours["steps"]) == 1 and not ours["skip_old_logprob"]
    for rec in ours["steps"] + [ours["warmup"]]:
        assert set(rec["phase_s"]) == set(gs.PHASES)
        assert all(v >= 0 for v in rec["phase_s"].values())
        assert abs(sum(rec["phase_s"].values()) - rec["step_s"]) < 1e-9   # they add up
        # every phase that ran (KL on, old log-probs kept) was measured, with its memory
        for p in ("rollout", "old_logprob", "ref", "update"):
            assert rec["phase_s"][p] > 0 and rec["phase_peak_rss_bytes"][p] > 0, p
        assert rec["completion_tokens"] == 2 * 2 * 4   # forced lengths
    m = ours["memory_bytes"]
    assert m["ref_params"] == m["params"] > 0 and m["opt_state"] >= 2 * m["params"]
    assert m["fused_head_f32_buffer"] == 4 * 4 * 151936 * 4
    assert ours["tokens_per_s"] > 0 and "ratio" not in res


def test_phase_clock_charges_nested_phases_to_the_innermost():
    clock = gs.PhaseClock(period=0.001)
    try:
        with clock.phase("update"):
            with clock.phase("ref"):
                assert clock.current == "ref"
            assert clock.current == "update"
        rec = clock.step_record(clock.times["update"] + 0.5)
    finally:
        clock.close()
    assert rec["phase_peak_rss_bytes"]["ref"] > 0
    assert abs(sum(rec["phase_s"].values()) - rec["step_s"]) < 1e-12
