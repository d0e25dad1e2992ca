"""guard-jax plan: arithmetic against XLA's memory analysis of the compiled step, and targets."""

import pytest

from guard_jax import plan
from guard_jax.run_config import load_config

CONFIG = "configs/tiny_sft.py"


def test_plan_agrees_with_compiled_memory_analysis():
    # float32 compute: XLA's CPU backend widens bf16 temporaries, which a GPU/TPU does not
    run = load_config(CONFIG, ["--config.model.preset=small", "--config.data.seq_len=1024",
                               "--config.model.remat=full", "--config.data.max_pixels=50176",
                               "--config.mesh.data=2", "--config.mesh.tensor=2"])
    p = plan.arithmetic_plan(run, 8)
    compiled = plan.compiled_plan(run, p.mesh)
    arith = p.phase_totals()["train step"]
    assert compiled["total"] > 0 and compiled["temporaries"] > 0
    assert abs(arith / compiled["total"] - 1) <= 0.10, (arith, compiled)
    # parameters + optimizer are exact: they are the step's (donated) arguments
    state = p.rows["parameters"] + p.rows["optimizer state"]
    assert compiled["arguments"] >= state
    assert compiled["arguments"] - state < 0.05 * compiled["arguments"] + 5e6  # + the batch


def test_grpo_plan_rows_and_fit_verdict():
    run = load_config("configs/guardreasoner_vl_grpo_7b.py")
    p = plan.arithmetic_plan(run, 16)
    assert p.mesh == (1, 16, 1)
    assert {"rollout KV cache", "rollout weights (sampling layout)"} <= set(p.rows)
    # 8.29B params in float32 over 16 fsdp shards
    assert abs(p.rows["parameters"] - 8.292e9 * 4 / 16) / p.rows["parameters"] < 0.01
    text = plan.format_plan(p, "v5p", 16, 95.0)
    assert "train step peak" in text and "rollout peak" in text and "method: arithmetic" in text


def test_targets():
    assert plan.parse_target("v5p-32") == ("v5p", 16, 95.0)
    assert plan.parse_target("h100x8")[:2] == ("h100", 8)
    with pytest.raises(ValueError, match="use e.g."):
        plan.parse_target("tpu-9000")
    with pytest.raises(ValueError, match="multiples of 2"):
        plan.parse_target("v5p-3")


def test_plan_warns_when_the_micro_batch_does_not_split():
    """A micro-batch that the data x fsdp devices do not divide is replicated on every device
    (each computes all of it): the plan says so first."""
    run = load_config(CONFIG, ["--config.mesh.data=1", "--config.mesh.fsdp=-1",
                               "--config.mesh.tensor=1", "--config.train.micro_batch=12",
                               "--config.train.global_batch=12"])
    p = plan.arithmetic_plan(run, 8)
    assert p.notes[0].startswith("WARNING: train.micro_batch 12 does not split over the 8")
    ok = load_config(CONFIG, ["--config.mesh.data=1", "--config.mesh.fsdp=-1",
                              "--config.mesh.tensor=1"])
    assert not any("WARNING" in n for n in plan.arithmetic_plan(ok, 8).notes)
