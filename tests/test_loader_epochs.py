"""Epochs of the training loader: every epoch is a permutation of the dataset, for the SFT and
GRPO loaders as their trainers configure them, on one process and split over two, and a
resumed loader continues the same sequence."""

from pathlib import Path

import pytest

from data_pipeline.loader import make_loader
from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir
from data_pipeline.schema import Label, Sample, Task
from guard_jax.run_config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
N = 12  # records; batches of 2 per process


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return str(write_qwen2_5_vl_tokenizer_dir(tmp_path_factory.mktemp("tok") / "qwen"))


def _samples():
    return [Sample(id=f"s{i}", source="test", task=Task.PROMPT_HARMFULNESS,
                   user_text=f"question {i}", prompt_label=Label.HARMFUL,
                   target="<think>t</think><result>Request: harmful</result>")
            for i in range(N)]


def _loader_config(trainer: str, shard_index: int = 0, shard_count: int = 1):
    """The LoaderConfig `guard-jax train` builds for configs/tiny_{trainer}.py."""
    over = ["--config.data.recipe=guardreasoner_vl", "--config.data.recipe_mode=sft",
            "--config.data.seq_len=512", "--config.grpo.max_prompt_len=512"]
    if trainer == "sft":
        from guard_jax.training.sft import loader_config
        over += [f"--config.train.micro_batch={2 * shard_count}",
                 f"--config.train.global_batch={2 * shard_count}"]
    else:
        from guard_jax.training.grpo import loader_config
        # each process loads its 1/n share of a rollout chunk (docs/grpo-multihost.md)
        over += [f"--config.grpo.rollout_chunk_prompts={2 * shard_count}",
                 f"--config.grpo.prompts_per_step={2 * shard_count}",
                 "--config.train.global_batch=8", "--config.train.micro_batch=4"]
    run = load_config(str(CONFIGS / f"tiny_{trainer}.py"), over)
    cfg = loader_config(run, pad_id=0, shard_index=shard_index, shard_count=shard_count)
    assert cfg.num_epochs is None and cfg.batch_size == 2 and cfg.rl == (trainer == "grpo")
    return cfg


def _ids(it, n_records):
    out = []
    while len(out) < n_records:
        out += [str(i) for i in next(it)["ids"]]
    assert len(out) == n_records
    return out


def _assert_permutations(ids, epochs):
    everything = sorted(f"s{i}" for i in range(N))
    for e in range(epochs):
        assert sorted(ids[e * N:(e + 1) * N]) == everything, f"epoch {e}"
    assert len({tuple(ids[e * N:(e + 1) * N]) for e in range(epochs)}) == epochs  # reshuffled


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_each_epoch_is_a_permutation_on_one_process(tok_dir, trainer):
    it = make_loader(_samples(), _loader_config(trainer), tokenizer_dir=tok_dir)
    _assert_permutations(_ids(it, 4 * N), epochs=4)


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_each_epoch_is_a_permutation_over_two_processes(tok_dir, trainer):
    shards = [_ids(make_loader(_samples(), _loader_config(trainer, k, 2), tokenizer_dir=tok_dir),
                   3 * N // 2) for k in (0, 1)]
    for e in range(3):
        part = [s[e * N // 2:(e + 1) * N // 2] for s in shards]
        assert not set(part[0]) & set(part[1]), f"epoch {e}"
        assert sorted(part[0] + part[1]) == sorted(f"s{i}" for i in range(N)), f"epoch {e}"


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_resume_mid_epoch_continues_the_same_sequence(tok_dir, trainer):
    cfg = _loader_config(trainer)
    it = make_loader(_samples(), cfg, tokenizer_dir=tok_dir)
    first = _ids(it, 8)  # mid-epoch 0
    state = it.get_state()
    rest = _ids(it, 3 * N - 8)  # through the next two epoch boundaries
    again = make_loader(_samples(), cfg, tokenizer_dir=tok_dir)
    again.set_state(state)
    assert _ids(again, 3 * N - 8) == rest
    _assert_permutations(first + rest, epochs=3)
