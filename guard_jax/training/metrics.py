"""Training metrics output: JSONL log, TensorBoard scalars, a tqdm progress bar, NaN/inf guard.

`MetricsWriter(workdir).write(step, metrics)` appends one JSON line to `workdir/metrics.jsonl`
and writes one TensorBoard scalar per metric to event files under `workdir/tensorboard/`
(written with tensorboardX, a small pure-Python writer). Only process 0 writes; on other
processes every method is a no-op, so the trainer can call it unconditionally on all hosts.

Metric values may be Python numbers, NumPy scalars or JAX scalars; each is converted with
`float()`, which blocks on a JAX value, so log every N steps rather than on every step if
the host should not wait on the device.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "MetricsWriter",
    "NonFiniteLossError",
    "StepTimer",
    "check_finite",
    "to_float_dict",
]

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
# Keys the JSONL record itself uses; a metric may not take them.
_RESERVED = ("step", "time")
# Metrics whose non-finite value means the run has diverged.
FINITE_KEYS = ("loss", "grad_norm")


class NonFiniteLossError(FloatingPointError):
    """Loss or gradient norm became NaN/inf; the run should stop without saving this state."""

    def __init__(self, step: int, name: str, value: float):
        self.step, self.name, self.value = int(step), name, value
        super().__init__(
            f"non-finite {name} at step {self.step}: {name}={value!r}. Stopping training; this "
            "state is not checkpointed, the last good checkpoint is kept (resume from it, "
            "e.g. with a lower learning rate or different data order)."
        )


def _to_float(name: str, value: Any) -> float:
    arr = np.asarray(value)  # device_get for a jax.Array
    if arr.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {arr.shape}")
    return float(arr.reshape(()))


def to_float_dict(metrics: Mapping[str, Any]) -> dict[str, float]:
    """`{name: float(value)}` for scalar Python/NumPy/JAX values (raises on non-scalars)."""
    return {str(k): _to_float(str(k), v) for k, v in metrics.items()}


def check_finite(step: int, metrics: Mapping[str, Any], keys: tuple[str, ...] = FINITE_KEYS) -> None:
    """Raise `NonFiniteLossError` when any of `keys` present in `metrics` is NaN or +-inf."""
    for key in keys:
        if key in metrics:
            value = _to_float(key, metrics[key])
            if not math.isfinite(value):
                raise NonFiniteLossError(step, key, value)


class StepTimer:
    """Wall time per step and tokens/s.

    `timer.step(num_tokens)` returns `{"step_time_s", "tokens_per_sec"}` for the interval since
    the previous call (or construction / `reset()`); with `num_steps > 1` the interval is
    averaged over that many steps (log every N steps, pass the tokens of all N). JAX dispatch
    is asynchronous: block on the step's outputs (e.g. `float(metrics["loss"])`) before calling.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._last = clock()

    def reset(self) -> None:
        self._last = self._clock()

    def step(self, num_tokens: float, num_steps: int = 1) -> dict[str, float]:
        now = self._clock()
        elapsed, self._last = now - self._last, now
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        tokens = float(np.asarray(num_tokens))
        return {
            "step_time_s": elapsed / num_steps,
            "tokens_per_sec": tokens / elapsed if elapsed > 0 else 0.0,
        }


class MetricsWriter:
    """JSONL + TensorBoard + progress-bar output for training metrics (process 0 only).

    `metrics.jsonl` is opened for append, so a resumed run continues the same file; each line is
    `{"step": int, "time": unix_seconds, "<metric>": float, ...}` and is flushed as written.
    Non-finite values are written as the `NaN`/`Infinity` tokens that `json.loads` accepts.
    The progress bar shows `loss`, `tokens_per_sec` and `lr` (or `learning_rate`) when present.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        process_index: int = 0,
        total_steps: int | None = None,
        progress: bool = True,
        initial_step: int = 0,
        flush_secs: int = 30,
    ):
        self.workdir = os.fspath(workdir)
        self.active = process_index == 0
        self._jsonl = self._tb = self._bar = None
        self._bar_step = initial_step
        if not self.active:
            return
        from tensorboardX import SummaryWriter

        os.makedirs(self.workdir, exist_ok=True)
        self.metrics_path = os.path.join(self.workdir, METRICS_FILENAME)
        self.tensorboard_dir = os.path.join(self.workdir, TENSORBOARD_DIRNAME)
        self._jsonl = open(self.metrics_path, "a", encoding="utf-8")
        self._tb = SummaryWriter(self.tensorboard_dir, flush_secs=flush_secs)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        if self._jsonl is None:
            raise RuntimeError("MetricsWriter is closed")
        step = int(step)
        values = to_float_dict(metrics)
        clash = [k for k in values if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved in {METRICS_FILENAME}")
        wall = time.time()
        self._jsonl.write(json.dumps({"step": step, "time": wall, **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tb.add_scalar(name, value, global_step=step, walltime=wall)
        if self._bar is not None:
            self._update_bar(step, values)

    def _update_bar(self, step: int, values: Mapping[str, float]) -> None:
        post = {}
        if "loss" in values:
            post["loss"] = f"{values['loss']:.4f}"
        if "tokens_per_sec" in values:
            post["tok/s"] = f"{values['tokens_per_sec']:.4g}"
        lr = values.get("lr", values.get("learning_rate"))
        if lr is not None:
            post["lr"] = f"{lr:.3g}"
        if step > self._bar_step:
            self._bar.update(step - self._bar_step)
            self._bar_step = step
        self._bar.set_postfix(post, refresh=True)

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
