"""`guard-jax demo` end to end at toy sizes: every stage runs (synthetic data -> ArrayRecord,
tokenizer training, model, eval before, SFT, eval after on the export, transformers reload, GRPO
from the SFT run's earliest checkpoint) and the summary holds the figures. The full-size run's
F1 gain and reward rise are the demo's own pass criteria."""

import json

from guard_jax.cli import main as cli


def test_demo_runs_every_stage(tmp_path, capsys):
    rc = cli(["demo", "--workdir", str(tmp_path), "--train-samples", "48", "--test-samples",
              "8", "--sft-steps", "3", "--min-f1-gain", "-1", "--rl-steps", "2",
              "--min-reward-gain", "-10"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert summary["ok"] and summary["sft_steps"] == 3
    assert 0.0 <= summary["f1_before"] <= 1.0 and 0.0 <= summary["f1_after"] <= 1.0
    assert summary["export_logits_diff"] <= 1e-4  # transformers reloads the trained export
    for stage in ("[demo 1/7]", "[demo 4/7]", "[demo 6/7]", "[demo 7/7]", "F1 on held-out",
                  "GRPO from SFT step 1"):
        assert stage in out
    # stage 2 starts from the SFT run's earliest checkpoint and reports its figures and curves
    rl = summary["rl"]
    assert rl["sft_start_step"] == 1 and rl["grpo_steps"] == 2 and rl["ok"]
    for key in ("reward_first_10pct", "reward_last_10pct", "f1_before_rl", "f1_after_rl",
                "accuracy_before_rl", "accuracy_after_rl"):
        assert rl[key] == rl[key], key  # finite figures, not NaN
    assert (tmp_path / "rl" / "grpo_reward.png").stat().st_size > 1000
    assert (tmp_path / "eval_after" / "prompt" / "report.md").is_file()
    assert (tmp_path / "sft" / "metrics.jsonl").is_file()
