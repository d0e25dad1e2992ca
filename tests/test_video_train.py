"""SFT and GRPO on video samples end to end (docs/sft.md#video, docs/grpo.md#video): a tiny
dataset whose records carry short mpeg4 clips (one also an image), built with `build_dataset`,
trained for 2 steps of the demo-sized model on the CPU. The videos must reach the model: the
same records with other clips of the same size give other losses and other rollouts, and the
GRPO update's forward gives the sampler's own log-probabilities. The multi-process loader gathers
the video arrays into the batch one process reads."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import processes as P
from guard_jax.run_config import load_config
from video_files import encode, random_frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(os.path.dirname(__file__), "video_loader_worker.py")
N = 4
# the video keys: 1 video of at most 4 frames of 56 x 56 per sample (32 patches, 8 tokens)
VIDEO = {"data.videos_per_sample": 1, "data.max_frames": 4, "data.video_max_pixels": 56 * 56}


def _dataset(root, name: str, samples, seed: int) -> str:
    """`samples` with one 4-frame clip each (frames drawn from `seed`); record 0 keeps its
    image too, the others have only the clip."""
    from data_pipeline import synthetic
    from data_pipeline.build import build_dataset
    raw = root / f"raw_{name}"
    src = synthetic.write_split(raw, samples, seed=0, name="train")
    (raw / "clips").mkdir()
    lines = []
    for i, line in enumerate(src.read_text().splitlines()):
        rec = json.loads(line)
        clip = f"clips/{rec['id']}.mp4"
        (raw / clip).write_bytes(encode(random_frames(4, 56, 56, seed=seed * 100 + i), fps=2))
        rec["videos"] = [clip]
        if i:
            rec["images"] = []
        lines.append(json.dumps(rec))
    src.write_text("\n".join(lines) + "\n")
    build_dataset("generic_jsonl", src, root / name, options=synthetic.DEMO_CONVERTER_OPTIONS,
                  progress=False, echo=False)
    return str(root / name)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Two datasets of the same 4 records, `a` and `b`, differing only in the clips' pixels;
    their tokenizer and a tiny model sized to it (the demo's architecture)."""
    from transformers import AutoTokenizer

    from data_pipeline import synthetic
    from guard_jax.demo import demo_model_config
    from guard_jax.models.qwen2_5_vl import init_model, save_hf

    root = tmp_path_factory.mktemp("video_train")
    samples = synthetic.make_samples(N, 0, prefix="v")
    tok = synthetic.train_tokenizer(synthetic.tokenizer_corpus(samples), root / "tok",
                                    vocab_size=600)
    config = demo_model_config(AutoTokenizer.from_pretrained(str(tok)))
    save_hf(init_model(config, seed=0), root / "hf", assets_from=str(tok), progress=False)
    return {"a": _dataset(root, "a", samples, 1), "b": _dataset(root, "b", samples, 2),
            "tok": str(tok), "hf": str(root / "hf")}


def _run(task, config: str, data: str, **extra):
    overrides = {"model.hf_dir": task["hf"], "data.path": task[data],
                 "data.tokenizer_dir": task["tok"], "train.steps": 2, **VIDEO, **extra}
    return load_config(os.path.join(ROOT, "configs", config),
                       [f"--config.{k}={v}" for k, v in overrides.items()])


def _metrics(workdir) -> list[dict]:
    return [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]


# ---- SFT ---------------------------------------------------------------------------------------
SFT = {"train.global_batch": 2, "train.micro_batch": 2, "train.checkpoint_every": 2,
       "train.log_every": 1}


def _first_batch(task, data: str):
    """The first SFT batch of dataset `data` (loader order of the run) and the model config."""
    from guard_jax.run_config import model_config
    from guard_jax.training import sft
    run = _run(task, "tiny_sft.py", data, **SFT)
    run.workdir = "/nonexistent"  # the quarantine path; nothing is refused
    mc = model_config(run)
    loader = sft.build_loader(run, mc, tokenizer_dir=task["tok"])
    raw = next(loader)
    loader.close()
    return raw, mc


def test_sft_trains_on_videos(task, tmp_path):
    import jax

    from guard_jax.models.qwen2_5_vl import load_hf
    from guard_jax.training.batch import to_model_batch
    from guard_jax.training.sft import train
    from guard_jax.training.train_step import next_token_loss

    raw, mc = _first_batch(task, "a")
    assert raw["pixel_values_videos"].shape == (2, 32, 1176)
    assert raw["video_grid_thw"][:, 0].tolist() == [[2, 4, 4]] * 2
    assert raw["num_videos"].tolist() == [1, 1]
    batch = to_model_batch(raw, mc)
    # each sample's vision row: its image's patches (if any), then its 32 video patches
    for i in range(2):
        n_img = int(np.prod(raw["image_grid_thw"][i, :raw["num_images"][i]], axis=1).sum())
        np.testing.assert_array_equal(batch["pixel_values"][i, n_img:n_img + 32],
                                      raw["pixel_values_videos"][i])
        assert (raw["input_ids"][i] == mc.video_token_id).sum() == 8

    work = tmp_path / "sft"
    assert train(_run(task, "tiny_sft.py", "a", **SFT), str(work))["step"] == 2
    rows = {r["step"]: r for r in _metrics(work)}
    assert sorted(rows) == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows.values())
    # step 1's loss is the start model's on that batch, video patches included; the same
    # tokens with other clips' pixels give another loss
    model = load_hf(task["hf"], dtype="float32", compute_dtype="float32", progress=False)
    loss = jax.jit(lambda b: next_token_loss(model, b)[0])
    raw_b, _ = _first_batch(task, "b")
    np.testing.assert_array_equal(raw_b["input_ids"], raw["input_ids"])
    assert not np.array_equal(raw_b["pixel_values_videos"], raw["pixel_values_videos"])
    ours, other = float(loss(batch)), float(loss(to_model_batch(raw_b, mc)))
    np.testing.assert_allclose(rows[1]["loss"], ours, rtol=1e-5)
    assert abs(other - ours) > 1e-4, (ours, other)


# ---- GRPO --------------------------------------------------------------------------------------
GRPO = {"train.global_batch": 4, "train.micro_batch": 4, "train.checkpoint_every": 2,
        "grpo.num_generations": 2, "grpo.prompts_per_step": 2, "grpo.rollout_chunk_prompts": 2,
        "grpo.max_new_tokens": 4, "grpo.dynamic_sampling": "off", "grpo.entropy_coeff": 0.01,
        "data.recipe_mode": "rl"}


def test_grpo_trains_on_videos(task, tmp_path):
    from guard_jax.training.grpo import train
    work = tmp_path / "grpo"
    assert train(_run(task, "tiny_grpo.py", "a", **GRPO), str(work))["step"] == 2
    rows = _metrics(work)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["loss"]) and r["grad_norm"] > 0
        assert r["dyn/trained_groups"] == 2
        # the update's forward (prompt, video patches, completion) gives the sampler's
        # log-probabilities of the rollouts it trains on
        assert r["rollout/logprob_diff"] < 1e-4
    order = [json.loads(x) for x in open(work / "data_order.jsonl")]
    assert sorted(i for o in order for i in o["trained"]) == [f"v{i:05d}" for i in range(N)]


def test_grpo_rollouts_see_the_videos(task, tmp_path):
    import jax

    from guard_jax.training.grpo import GRPOTrainer, build_loader
    rollouts = {}
    for data in ("a", "b"):
        run = _run(task, "tiny_grpo.py", data, **GRPO)
        run.workdir = str(tmp_path)
        trainer = GRPOTrainer(run, str(tmp_path))
        loader = build_loader(run, trainer.mc, tokenizer_dir=task["tok"])
        raw = next(loader)
        loader.close()
        assert raw["num_videos"].tolist() == [1, 1]
        params = trainer.sampler.place_state(trainer._merge(trainer.state))
        out = trainer.rollout_chunk(raw, params, jax.random.key(0))
        rollouts[data] = (list(raw["ids"]), np.asarray(out["tokens"]),
                          np.asarray(out["sampler_logp"]))
    (ids_a, tok_a, logp_a), (ids_b, tok_b, logp_b) = rollouts["a"], rollouts["b"]
    assert ids_a == ids_b  # the same records and prompts, the same rng: only pixels differ
    assert not (np.array_equal(tok_a, tok_b) and np.array_equal(logp_a, logp_b))


def test_two_process_loader_gathers_the_video_arrays(task, tmp_path):
    """grpo.build_loader on 2 processes (one prompt each per chunk of 2) gathers the same
    batches, video arrays included, as 1 process reading them all."""
    def spec(n):
        (tmp_path / str(n)).mkdir()
        return json.dumps({"task": task, "overrides": {**VIDEO, **GRPO}, "batches": 2,
                           "workdir": str(tmp_path / str(n))})
    runs = {n: P.start(WORKER, [spec(n)], processes=n) for n in (1, 2)}  # at once
    one, two = (P.ok(P.finish(runs[n], timeout=300)) for n in (1, 2))
    assert two[0] == two[1] == one[0]
    shapes = one[0]["batches"][0]["shapes"]
    assert shapes["pixel_values_videos"] == [2, 32, 1176]
    assert shapes["video_grid_thw"] == [2, 1, 3] and shapes["second_per_grid_ts"] == [2, 1]
