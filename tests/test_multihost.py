"""Two local processes joined by jax.distributed on a localhost coordinator (4 fake devices each)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import optax
import pytest

from guard_jax import distributed

HERE = os.path.dirname(__file__)
WORKER = os.path.join(HERE, "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(port, n, i, timeout=90):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_"))}
    env.update(GUARD_JAX_COORDINATOR=f"127.0.0.1:{port}", GUARD_JAX_NUM_PROCESSES=str(n),
               GUARD_JAX_PROCESS_ID=str(i), GUARD_JAX_INIT_TIMEOUT=str(timeout))
    return env


def test_two_processes_run_the_same_sharded_step():
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, WORKER], env=_env(port, 2, i),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
    a, b = outs
    assert {a["process"], b["process"]} == {0, 1}
    assert a["method"] == b["method"] == "explicit"
    assert a["losses"] == b["losses"] and a["q_sum"] == b["q_sum"]

    # and they agree with one process running the same three steps on one device
    sys.path.insert(0, HERE)
    import multihost_worker as w
    from guard_jax.models.qwen2_5_vl import init_model, tiny
    from guard_jax.training.train_step import init_train_state, make_train_step
    c = tiny()
    model = init_model(c, seed=0)
    tx = optax.sgd(0.1, momentum=0.9)
    gd, state = init_train_state(model, tx)
    step = make_train_step(gd, tx)
    batch = w.batch_for(model, c)
    losses = []
    for _ in range(3):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(a["losses"], losses, atol=1e-5)
    q = np.asarray(state["params"]["text"]["layers"]["q"].get_value(), np.float64)
    assert abs(a["q_abs"] - np.abs(q).sum()) < 1e-3


def test_missing_peer_is_a_clear_error_not_a_hang():
    port = _free_port()
    p = subprocess.run([sys.executable, WORKER], env=_env(port, 2, 0, timeout=5),
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == distributed.JOIN_TIMEOUT_EXIT_CODE, p.stderr[-2000:]
    assert "could not join the job at 127.0.0.1" in p.stderr, p.stderr[-2000:]
    assert "GUARD_JAX_INIT_TIMEOUT" in p.stderr


def test_detect_topologies():
    assert distributed.detect({}).method == "single"
    t = distributed.detect({"GUARD_JAX_COORDINATOR": "h:1", "GUARD_JAX_NUM_PROCESSES": "4",
                            "GUARD_JAX_PROCESS_ID": "3"})
    assert (t.method, t.num_processes, t.process_id) == ("explicit", 4, 3)
    with pytest.raises(ValueError, match="missing"):
        distributed.detect({"GUARD_JAX_COORDINATOR": "h:1"})
    with pytest.raises(ValueError, match="outside"):
        distributed.detect({"GUARD_JAX_COORDINATOR": "h:1", "GUARD_JAX_NUM_PROCESSES": "2",
                            "GUARD_JAX_PROCESS_ID": "2"})
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "SLURM_PROCID": "5",
             "SLURM_NODELIST": "n[1-2]", "SLURM_LOCALID": "1"}
    t = distributed.detect(slurm)
    assert (t.method, t.num_processes, t.process_id) == ("slurm", 16, 5)
    t = distributed.detect({"TPU_WORKER_HOSTNAMES": "a,b,c,d", "TPU_WORKER_ID": "2"})
    assert (t.method, t.num_processes, t.process_id) == ("tpu", 4, 2)
