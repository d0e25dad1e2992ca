"""SFT with LoRA on several processes: two processes with 4 fake CPU devices each, joined on a
localhost coordinator, against one process with 8, through the real trainer
(tests/sft_multihost_worker.py). Each process reads its share of every micro-batch and the
shares are gathered into the global batch (guard_jax/training/global_loader.py)."""

import os

import numpy as np

import processes as P
from test_sft import CONFIG, _overrides, dataset  # noqa: F401  (12 samples, 4 with an image)

WORKER = os.path.join(os.path.dirname(__file__), "sft_multihost_worker.py")


def test_two_processes_train_lora_like_one(dataset, tmp_path):  # noqa: F811
    # 3 optimizer steps of 2 micro-batches of 4 rows, on a (data 2, fsdp 2, tensor 2) mesh
    args = [CONFIG, None, *_overrides(dataset, 3, **{
        "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "lora.rank": 4,
        "train.global_batch": 8, "train.micro_batch": 4, "train.checkpoint_every": 1})]
    runs = {}
    for name, n in (("one", 1), ("two", 2)):
        args[1] = str(tmp_path / name)
        runs[name] = P.start(WORKER, list(args), processes=n)
    one, two = (P.ok(P.finish(runs[k])) for k in ("one", "two"))
    assert [r["step"] for r in one + two] == [6, 6, 6]  # micro-steps
    a, b = tmp_path / "one", tmp_path / "two"
    # the same samples in the same order: every micro-step's rows over both processes
    order = P.jsonl(a / "data_order.jsonl")
    assert [len(ln["ids"]) for ln in order] == [4] * 6
    assert P.jsonl(b / "data_order.jsonl") == order
    m1, m2 = P.jsonl(a / "metrics.jsonl"), P.jsonl(b / "metrics.jsonl")
    assert [ln["step"] for ln in m2] == [ln["step"] for ln in m1]
    np.testing.assert_allclose([ln["loss"] for ln in m2], [ln["loss"] for ln in m1], rtol=1e-6)
    # the same adapters after every step, the base weights untouched, and the adapters moved
    for step in (2, 4, 6):  # a checkpoint per optimizer step
        la, lb = P.checkpoint_arrays(a, step, "lora."), P.checkpoint_arrays(b, step, "lora.")
        assert la and la.keys() == lb.keys()
        assert max(float(np.abs(la[k] - lb[k]).max()) for k in la) <= 1e-6, step
    first = P.checkpoint_arrays(a, 2, "lora.")
    assert max(float(np.abs(la[k] - first[k]).max()) for k in la) > 1e-5
    pa, pb = P.checkpoint_arrays(a, 6), P.checkpoint_arrays(b, 6)
    assert max(float(np.abs(pa[k] - pb[k]).max()) for k in pa) == 0.0
