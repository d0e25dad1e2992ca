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


def test_plan_counts_video_patches():
    """data.videos_per_sample x max_frames / temporal_patch_size x video_max_pixels / 196
    patches per sequence join the images' in the activation estimate, and the abstract batch
    has the shapes the model's vision rows get for the largest video (images then videos)."""
    import numpy as np

    from guard_jax.models.qwen2_5_vl import positions
    from guard_jax.run_config import model_config
    base = ["--config.model.preset=small", "--config.data.max_pixels=50176",
            "--config.data.max_frames=7", "--config.data.video_max_pixels=12544"]
    no_video = load_config(CONFIG, base)
    with_video = load_config(CONFIG, base + ["--config.data.videos_per_sample=2"])
    mc = model_config(with_video)
    assert plan.vision_patches(mc, 1, 50176, **plan.video_budget(with_video)) == \
        256 + 2 * 4 * 64  # 7 frames -> 4 temporal patches of 8 x 8
    a = plan.arithmetic_plan(no_video, 8)
    b = plan.arithmetic_plan(with_video, 8)
    assert b.rows["activations (train step)"] > a.rows["activations (train step)"]
    assert "image and video patches" in b.notes[-1]

    shapes = plan.abstract_batch(mc, 2, 64, 1, 50176, **plan.video_budget(with_video))
    grids = np.asarray([[1, 16, 16], [4, 8, 8], [4, 8, 8]])
    real = positions.vision_batch(np.zeros((int(np.prod(grids, 1).sum()), 1176), np.float32),
                                  grids, [[0, 1, 2]], mc)
    for k in ("pixel_values", "pos_hw", "win_idx", "full_idx"):
        assert shapes[k].shape[1:] == real[k].shape[1:], k
