"""MetricsWriter (JSONL + TensorBoard), check_finite, StepTimer."""

import glob
import json
import math
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from guard_jax.training.metrics import (
    MetricsWriter,
    NonFiniteLossError,
    StepTimer,
    check_finite,
)

STEPS = {
    1: {"loss": jnp.float32(2.5), "grad_norm": np.float32(1.25), "lr": 1e-4, "tokens_per_sec": 1000.0},
    5: {"loss": jnp.float32(1.5), "grad_norm": np.float32(0.75), "lr": 2e-4, "tokens_per_sec": 1200.0},
    9: {"loss": jnp.float32(0.5), "grad_norm": np.float32(0.5), "lr": 3e-4, "tokens_per_sec": 1500.0},
}


def _read_tfrecord_scalars(logdir):
    """{tag: [(step, value)]} from every event file, checking the TFRecord length/data CRCs."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    out = {}
    files = sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*")))
    assert files, f"no event files in {logdir}"
    for path in files:
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            (hcrc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            assert hcrc == masked_crc32c(header)
            body = data[pos + 12 : pos + 12 + length]
            (dcrc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
            assert dcrc == masked_crc32c(body)
            pos += 16 + length
            event = event_pb2.Event.FromString(body)
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _write_all(workdir, **kw):
    with MetricsWriter(workdir, total_steps=10, **kw) as w:
        for step, metrics in STEPS.items():
            w.write(step, metrics)


def test_jsonl_lines_hold_values(tmp_path):
    _write_all(tmp_path, progress=True)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(STEPS)
    for line, (step, metrics) in zip(lines, STEPS.items()):
        rec = json.loads(line)
        assert rec["step"] == step and isinstance(rec["time"], float)
        assert set(rec) == {"step", "time", *metrics}
        for k, v in metrics.items():
            assert rec[k] == pytest.approx(float(v))


def test_jsonl_appends_on_resume(tmp_path):
    _write_all(tmp_path, progress=False)
    with MetricsWriter(tmp_path, progress=False) as w:
        w.write(11, {"loss": 0.25})
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 5, 9, 11]


def test_tensorboard_scalars_read_back(tmp_path):
    _write_all(tmp_path, progress=False)
    scalars = _read_tfrecord_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"loss", "grad_norm", "lr", "tokens_per_sec"}
    for tag, points in scalars.items():
        assert [s for s, _ in points] == list(STEPS)
        np.testing.assert_allclose([v for _, v in points], [float(m[tag]) for m in STEPS.values()], rtol=1e-6)


def test_nonzero_process_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    _write_all(workdir, process_index=1)
    assert not workdir.exists()


def test_rejects_reserved_and_non_scalar(tmp_path):
    with MetricsWriter(tmp_path, progress=False) as w:
        with pytest.raises(ValueError, match="reserved"):
            w.write(1, {"step": 3.0})
        with pytest.raises(ValueError, match="scalar"):
            w.write(1, {"loss": jnp.ones(3)})


@pytest.mark.parametrize("name", ["loss", "grad_norm"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_raises(name, bad):
    metrics = {"loss": jnp.float32(1.0), "grad_norm": 2.0, name: jnp.float32(bad)}
    with pytest.raises(NonFiniteLossError) as info:
        check_finite(42, metrics)
    msg = str(info.value)
    assert "step 42" in msg and name in msg and "last good checkpoint is kept" in msg
    assert ("nan" if math.isnan(bad) else "inf") in msg
    assert info.value.step == 42 and info.value.name == name


def test_check_finite_passes_and_ignores_other_metrics():
    check_finite(1, {"loss": jnp.float32(1.0), "grad_norm": 0.5, "lr": math.nan})
    check_finite(1, {})


def test_step_timer():
    t = iter([10.0, 12.0, 13.0])
    timer = StepTimer(clock=lambda: next(t))
    assert timer.step(4000) == {"step_time_s": 2.0, "tokens_per_sec": 2000.0}
    assert timer.step(jnp.int32(500), num_steps=2) == {"step_time_s": 0.5, "tokens_per_sec": 500.0}
