"""GRPO on several processes (docs/grpo-multihost.md): two processes with 4 fake CPU devices each,
joined on a localhost coordinator, against one process with 8, through the real trainer
(tests/grpo_multihost_worker.py); a SIGTERM on one process; a kill -9 of one process; a resume
on another process count. The runs that a test reads are started by module fixtures, overlapped
where one waits (the worker caches every process's compiles, so later runs load them).
"""

import json
import os

import numpy as np
import pytest

import processes as P
from guard_jax import distributed

from test_grpo import task  # noqa: F401  (the tiny dataset, tokenizer and model)

WORKER = os.path.join(os.path.dirname(__file__), "grpo_multihost_worker.py")
# 4 prompts a step in chunks of 2 (one prompt per process per chunk), G = 4, regeneration
# (up to one more batch of 4 prompts), a KL term, 2 updates of 2 micro-batches each per step
OVERRIDES = {"train.steps": 3, "train.checkpoint_every": 1, "train.global_batch": 8,
             "train.micro_batch": 4, "grpo.num_generations": 4, "grpo.prompts_per_step": 4,
             "grpo.rollout_chunk_prompts": 2, "grpo.max_new_tokens": 8,
             "grpo.dynamic_sampling": "regenerate", "grpo.max_regenerations": 1,
             "grpo.kl_coef": 0.05, "optim.lr": 1e-3,
             # Adam turns a gradient of pure rounding noise (e.g. the k bias's, zero in exact
             # arithmetic: softmax ignores a constant score) into an lr-sized step, and the
             # all-reduce of 2 processes adds in another order than 1 process's: an eps above
             # that noise keeps such steps small, real gradients still move the weights
             "optim.eps": 1e-3}


def _start(task, work, *, processes, signal_at=None, overrides=None, env=None):  # noqa: F811
    """The worker processes of one run in `work` (started, not waited for)."""
    spec = json.dumps({"task": task, "workdir": str(work), "dump": str(work) + "-rewards",
                       "signal_at": signal_at, "overrides": {**OVERRIDES, **(overrides or {})}})
    return P.start(WORKER, [spec], processes=processes, env=env)


_finish, _ok, _params, _lines = P.finish, P.ok, P.checkpoint_arrays, P.jsonl


@pytest.fixture(scope="module")
def runs(task, tmp_path_factory):  # noqa: F811
    """The same 3 steps on 1 process x 8 devices (`one`) and on 2 processes x 4 (`two`), run
    at the same time. (No more processes at once: a collective whose peer is still compiling
    after 30 s fails in gloo's set-up, and the test machine's cores are few.)"""
    root = tmp_path_factory.mktemp("grpo_mh")
    one = _start(task, root / "one", processes=1)
    two = _start(task, root / "two", processes=2)
    _ok(_finish(one))
    _ok(_finish(two))
    return root


def test_two_processes_train_like_one(runs):
    one, two = runs / "one", runs / "two"
    # every reward call saw the same prompts with the same labels, the same rollouts and
    # rewards, on each of the two processes and on the single one
    calls = _lines(f"{one}-rewards.0.jsonl")
    assert _lines(f"{two}-rewards.0.jsonl") == _lines(f"{two}-rewards.1.jsonl")
    others = _lines(f"{two}-rewards.0.jsonl")
    assert [c["ids"] for c in others] == [c["ids"] for c in calls]
    assert [c["labels"] for c in others] == [c["labels"] for c in calls]
    np.testing.assert_allclose([c["total"] for c in others], [c["total"] for c in calls])
    totals = np.asarray([c["total"] for c in calls]).reshape(-1, 4)  # [groups, G]
    assert 0 < np.mean(totals.max(1) > totals.min(1)) < 1  # some groups valid, some not
    # the same data order and selected groups per step, the same dynamic-sampling decisions
    order = _lines(one / "data_order.jsonl")
    assert [ln["step"] for ln in order] == [1, 2, 3]
    assert _lines(two / "data_order.jsonl") == order
    m1, m2 = _lines(one / "metrics.jsonl"), _lines(two / "metrics.jsonl")
    assert [ln["step"] for ln in m2] == [1, 2, 3]
    assert any(ln["dyn/regenerations"] > 0 for ln in m1)
    for a, b in zip(m1, m2):
        for k in ("dyn/valid_groups", "dyn/trained_groups", "dyn/regenerations",
                  "dyn/rollout_prompts", "reward/total/mean", "actor/skipped_minibatches"):
            assert a[k] == b[k], k
        np.testing.assert_allclose(b["loss"], a["loss"], atol=1e-6)
    # the same weights after every step, and they moved
    for step in (1, 2, 3):
        a, b = _params(str(one), step), _params(str(two), step)
        assert a.keys() == b.keys()
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6, step
    first = _params(str(one), 1)
    assert max(float(np.abs(a[k] - first[k]).max()) for k in a) > 1e-4


def _saved(work) -> list[int]:
    return sorted(int(d) for d in os.listdir(work) if d.isdigit())


@pytest.fixture(scope="module")
def interrupted(task, runs):  # noqa: F811
    """The run killed (-9) and the run preempted (SIGTERM) on 2 processes, what each left on
    disk, and their resumes. The preempted run trains while the killed run's survivor waits
    out its GUARD_JAX_PEER_TIMEOUT, and the two resumes run at the same time (3 processes, as
    in `runs`; every program is in the compilation cache by now)."""
    kill, term = runs / "killed", runs / "preempt"
    killed = _start(task, kill, processes=2, signal_at=[7, 1, "KILL"],
                    env={"GUARD_JAX_PEER_TIMEOUT": "20"})
    killed_1 = _finish(killed[1:])
    preempted = _start(task, term, processes=2, signal_at=[5, 1, "TERM"],
                       overrides={"train.checkpoint_every": 100})
    out = {"killed": _finish(killed[:1]) + killed_1, "killed_saved": _saved(kill)}
    out["preempted"], out["preempted_saved"] = _finish(preempted), _saved(term)
    if out["preempted_saved"]:
        out["preempted_meta"] = json.load(open(term / str(out["preempted_saved"][-1]) / "meta"
                                                / "metadata"))
    kill_resumed = _start(task, kill, processes=2)
    out["preempted_resumed"] = _finish(_start(task, term, processes=1))
    out["killed_resumed"] = _finish(kill_resumed)
    return out


def test_sigterm_on_one_process_saves_one_step_on_all_and_resumes_on_one(runs, interrupted):
    """Process 1 alone gets SIGTERM in step 2 (4 reward calls a step here): both processes
    finish step 2, save it together and exit 0. The run then resumes on ONE process (8
    devices) from that checkpoint and ends exactly where the uninterrupted run ends."""
    root, work = runs, runs / "preempt"
    for rc, result, err in interrupted["preempted"]:
        assert rc == 0 and result["step"] == 2, err[-3000:]
        assert "preempted: saved step 2, exiting" in err
    assert interrupted["preempted_saved"] == [2]
    meta = interrupted["preempted_meta"]
    assert meta["data_state"]["process_count"] == 2 and len(meta["data_state"]["shards"]) == 2
    assert _ok(interrupted["preempted_resumed"])[0]["step"] == 3
    a, b = _params(str(root / "one"), 3), _params(str(work), 3)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
    order = {ln["step"]: ln for ln in _lines(work / "data_order.jsonl")}
    assert [order[s] for s in (1, 2, 3)] == _lines(root / "one" / "data_order.jsonl")


def test_a_killed_process_is_named_by_the_survivor_and_the_run_resumes(runs, interrupted):
    """kill -9 of process 1 in step 2 (after step 1's checkpoint, 2 to 4 reward calls a step
    here): process 0 does not wait
    forever in the collective its peer never joins; it exits 75 naming the lost process
    (GUARD_JAX_PEER_TIMEOUT seconds after the last heartbeat). Both restarted, the run resumes
    from step 1 and ends exactly where the uninterrupted run ends."""
    work = runs / "killed"
    (rc0, _, err0), (rc1, _, _) = interrupted["killed"]
    assert rc1 == -9
    assert rc0 == distributed.PEER_LOST_EXIT_CODE, err0[-3000:]
    assert "guard_jax: process 0 of 2: lost process 1: no heartbeat for 20s" in err0, err0[-3000:]
    saved = interrupted["killed_saved"]
    assert saved and saved[-1] < 3, saved
    assert [r["step"] for r in _ok(interrupted["killed_resumed"])] == [3, 3]
    for step in (2, 3):
        a, b = _params(str(runs / "one"), step), _params(str(work), step)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6, step
    order = {ln["step"]: ln for ln in _lines(work / "data_order.jsonl")}
    assert [order[s] for s in (1, 2, 3)] == _lines(runs / "one" / "data_order.jsonl")


def test_loader_position_moves_to_another_process_count():
    """2 processes that each read 10 prompts -> 20 read; 4 processes restart at 5 each, one at
    20; positions that differ between processes (skips on one share) cannot be split."""
    from guard_jax.errors import InputError
    from guard_jax.training.global_loader import shard_state
    two = {"process_count": 2, "shards": [{"next_index": 10}, {"next_index": 10}]}
    assert shard_state(two, 2, 1) == {"next_index": 10}
    assert shard_state(two, 4, 3) == {"next_index": 5}
    assert shard_state(two, 1, 0) == {"next_index": 20}
    assert shard_state({"next_index": 6}, 2, 0) == {"next_index": 3}  # a one-process run
    with pytest.raises(InputError, match="resume on 2 processes"):
        shard_state({"process_count": 2, "shards": [{"next_index": 10}, {"next_index": 11}]},
                    1, 0)
    with pytest.raises(InputError, match="cannot be split over 3"):
        shard_state(two, 3, 0)
