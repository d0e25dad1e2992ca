"""Checkpointing the train state with orbax: keep-N, every-N-steps, preemption, resharding.

A checkpoint step directory holds two items:

- ``state``: the train state pytree ``{"params", "opt_state", "step"}`` saved as a FLAT dict
  ``{"params.text.embed": array, "opt_state.0.mu.text.embed": array, ...}`` (keys are the pytree
  paths). Flat keys make restores independent of container types (nnx State, optax named
  tuples) and let a mismatch be reported by parameter path.
- ``meta``: JSON with the step, the rng (seed and/or key data), the run config and the data
  iterator state (grain's ``get_state()``: a dict/str is stored as is, bytes as base64).

Restoring goes onto the shardings of a target (concrete arrays or ``jax.ShapeDtypeStruct`` with
``sharding``), so a checkpoint written on one mesh loads onto any other mesh; see
``abstract_train_state`` for a target that allocates nothing.

Preemption: ``install_sigterm_handler()`` makes SIGTERM only set a flag. The next
``maybe_save`` then saves synchronously whatever the interval and returns True, and the trainer
exits (exit code 0 by convention; see tests/checkpoint_worker.py). With several processes the
flag is OR-reduced across them inside ``maybe_save`` so every host saves the same step (orbax
saves are collective).

Orbax writes each step into a temporary directory and renames it when complete, so a save
interrupted midway never shows up as a step. A finalised step that is damaged later (files
missing) is moved aside by ``restore(step=None)`` into ``WORKDIR/corrupt/STEP-TIMESTAMP`` (with a
warning naming both paths; nothing is deleted), and the previous step is restored: the damaged
step can then be saved again, and whatever reads the newest step sees a readable one. Saving a
step that already exists raises ``CheckpointExistsError`` instead of keeping either copy
silently. See docs/checkpoints.md.
"""

from __future__ import annotations

import base64
import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from guard_jax.errors import InputError

log = logging.getLogger(__name__)

STATE = "state"
META = "meta"
CORRUPT = "corrupt"  # WORKDIR/corrupt/STEP-TIMESTAMP: damaged steps moved out of orbax's listing


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the target (missing/extra paths, other shapes)."""


class CheckpointCorruptError(RuntimeError):
    """A checkpoint step exists but cannot be read."""


class CheckpointExistsError(InputError, FileExistsError):
    """A save asked for a step the directory already holds (another run writing to the same
    workdir, or an import into a folder that has checkpoints); `guard-jax` exits 2."""


# ------------------------------------------------------------------ pytree <-> flat dict
def _path_name(path) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    return name[:-len(".value")] if name.endswith(".value") else name


def flatten_state(tree) -> tuple[dict[str, Any], Any]:
    """({path: leaf}, treedef) for any pytree; paths like 'params.text.embed'."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat: dict[str, Any] = {}
    for path, leaf in leaves:
        name = _path_name(path)
        if name in flat:
            raise ValueError(f"two leaves of the state share the checkpoint key {name!r}")
        flat[name] = leaf
    return flat, treedef


def unflatten_state(flat: Mapping[str, Any], treedef, names: list[str]):
    return jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names])


def _abstract_leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        if getattr(x, "sharding", None) is None:
            raise ValueError("restore target leaves need a sharding (ShapeDtypeStruct(..., "
                             "sharding=NamedSharding(mesh, spec)))")
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    raise TypeError(f"restore target leaf of type {type(x).__name__}: expected a jax.Array or "
                    "jax.ShapeDtypeStruct with a sharding")


def abstract_train_state(model_or_config, tx, mesh, rules=None, *, lora=None):
    """The train state's tree of ShapeDtypeStructs with their shardings on `mesh`, allocating
    nothing: the restore target for a (possibly different) mesh. Accepts a Qwen25VLConfig or
    an (abstract or concrete) nnx model; `lora` (a LoraConfig) adds the adapters."""
    from flax import nnx

    from guard_jax.sharding import TRAIN_RULES
    from guard_jax.training.lora import lora_shapes
    from guard_jax.training.train_step import _fresh_state, state_shardings

    rules = rules or TRAIN_RULES
    model = model_or_config
    if not isinstance(model, nnx.Module):
        from guard_jax.models.qwen2_5_vl.model import abstract_model
        model = abstract_model(model_or_config)
    _, params = nnx.split(model, nnx.Param)
    trainable = params if lora is None else lora_shapes(params, lora)
    shapes = jax.eval_shape(lambda p, t: _fresh_state(p, t, tx, lora), params, trainable)
    shardings = state_shardings(params, tx, mesh, rules, lora=lora)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


# ------------------------------------------------------------------ JSON helpers
def _encode_data_state(s):
    if s is None or isinstance(s, (str, int, float, bool, list, dict)):
        return s
    if isinstance(s, (bytes, bytearray)):
        return {"__bytes_b64__": base64.b64encode(bytes(s)).decode("ascii")}
    raise TypeError(f"data iterator state of type {type(s).__name__} is not JSON-able")


def _decode_data_state(s):
    if isinstance(s, dict) and set(s) == {"__bytes_b64__"}:
        return base64.b64decode(s["__bytes_b64__"])
    return s


def _encode_rng(rng):
    if rng is None or isinstance(rng, int):
        return rng
    if isinstance(rng, jax.Array) and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return {"impl": str(jax.random.key_impl(rng)),
                "key_data": np.asarray(jax.random.key_data(rng)).tolist(), "typed": True}
    arr = np.asarray(rng)
    return {"key_data": arr.tolist(), "dtype": str(arr.dtype), "typed": False}


def decode_rng(meta_rng):
    """The rng saved by `maybe_save(rng=...)`: an int seed, or a jax key (typed or raw uint32)."""
    if meta_rng is None or isinstance(meta_rng, int):
        return meta_rng
    data = np.asarray(meta_rng["key_data"], dtype=meta_rng.get("dtype", "uint32"))
    if meta_rng.get("typed"):
        return jax.random.wrap_key_data(data.astype(np.uint32))
    return jax.numpy.asarray(data)


# ------------------------------------------------------------------ preemption
_PREEMPTED = threading.Event()


def install_sigterm_handler(signals=(signal.SIGTERM,)) -> None:
    """SIGTERM (the TPU/GCE preemption notice) sets a flag instead of killing the process; the
    trainer's next `maybe_save` saves and returns True. Must run on the main thread."""
    def handler(signum, frame):
        log.warning("signal %d received: saving a checkpoint at the next step and exiting", signum)
        _PREEMPTED.set()

    for s in signals:
        signal.signal(s, handler)


def preempted() -> bool:
    """Whether a preemption signal arrived (this process only)."""
    return _PREEMPTED.is_set()


def _reset_preempted() -> None:  # tests
    _PREEMPTED.clear()


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------ the checkpointer
class Checkpointer:
    """Saves every `every_steps` steps, keeps the last `keep`, restores onto any mesh.

        ckpt = Checkpointer(workdir, keep=3, every_steps=500, config=cfg_dict)
        install_sigterm_handler()
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(abstract_train_state(config, tx, mesh))
            it.set_state(meta["data_state"])
        for batch in it:
            state, metrics = step(state, batch)
            if ckpt.maybe_save(int(state["step"]), state, data_state=it.get_state()):
                break  # preempted: saved, exit now
        ckpt.close()
    """

    def __init__(self, workdir, *, keep: int | None = 3, every_steps: int = 1000,
                 async_save: bool = True, config: Mapping | None = None,
                 seed: int | None = None):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.directory = Path(workdir).absolute()
        self.every_steps = every_steps
        self.config = dict(config) if config is not None else None
        self.seed = seed
        self.last_saved_step: int | None = None
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._mgr = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={STATE: ocp.StandardCheckpointHandler(),
                           META: ocp.JsonCheckpointHandler()})

    # -------------------------------------------------------------- saving
    def _metadata(self, step, data_state, rng, extra) -> dict:
        meta = {"step": int(step), "seed": self.seed, "rng": _encode_rng(rng),
                "config": self.config, "data_state": _encode_data_state(data_state)}
        if extra:
            meta["extra"] = dict(extra)
        return meta

    def save(self, step: int, state, *, data_state=None, rng=None, extra=None,
             wait: bool = False) -> None:
        """Saves now (asynchronously unless `wait` or async_save=False). Raises
        CheckpointExistsError if `step` is already saved: nothing is overwritten."""
        step = int(step)
        flat, _ = flatten_state(state)
        if step in self._mgr.all_steps():
            # Keeping either copy silently would lose a state; an unreadable step never gets
            # here (restore moves it aside), so another writer owns this directory.
            raise CheckpointExistsError(
                f"checkpoint step {step} already exists in {self.directory}; not overwriting "
                "it (is another run writing to this directory?): use a new directory, or move "
                f"{self.directory / str(step)} aside")
        self._mgr.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(flat),
            META: ocp.args.JsonSave(self._metadata(step, data_state, rng, extra))}))
        self.last_saved_step = step
        if wait:
            self._mgr.wait_until_finished()

    def maybe_save(self, step: int, state, *, data_state=None, rng=None, extra=None,
                   force: bool = False) -> bool:
        """Saves when `step` is a multiple of every_steps, when forced, or after a preemption
        signal (then synchronously). Returns True iff preempted: the caller should exit."""
        step = int(step)
        stop = _any_process(preempted())
        if stop or force or step % self.every_steps == 0:
            self.save(step, state, data_state=data_state, rng=rng, extra=extra, wait=stop)
        return stop

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- restoring
    def all_steps(self) -> list[int]:
        self._mgr.reload()
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _read(self, step: int, **items) -> tuple[Any, dict]:
        """(orbax's output, the decoded metadata): `items` and the metadata of `step`."""
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(
                **items, **{META: ocp.args.JsonRestore()}))
        except Exception as e:  # noqa: BLE001
            raise CheckpointCorruptError(
                f"checkpoint {self.directory / str(step)} cannot be restored "
                f"({type(e).__name__}: {e})") from e
        meta = dict(out[META] or {})
        meta["data_state"] = _decode_data_state(meta.get("data_state"))
        return out, meta

    def read_meta(self, step: int) -> dict:
        """The metadata of `step` (step, seed, rng, run config, data state), not its arrays."""
        return self._read(step)[1]

    def check_compatible(self, step: int, target) -> None:
        """Raises CheckpointMismatchError naming the paths whose shapes/presence differ."""
        flat_target, _ = flatten_state(target)
        try:
            meta = self._mgr.item_metadata(step)[STATE]
        except Exception as e:  # noqa: BLE001
            raise CheckpointCorruptError(
                f"checkpoint {self.directory / str(step)}: cannot read its metadata "
                f"({type(e).__name__}: {e})") from e
        if meta is None:
            raise CheckpointCorruptError(f"checkpoint {self.directory / str(step)}: no "
                                         f"'{STATE}' item")
        saved = {k: tuple(v.shape) for k, v in meta.items()}
        problems = []
        for k, v in flat_target.items():
            if k not in saved:
                problems.append(f"{k}: missing from the checkpoint (model expects {tuple(v.shape)})")
            elif saved[k] != tuple(v.shape):
                problems.append(f"{k}: checkpoint has shape {saved[k]}, model expects "
                                f"{tuple(v.shape)}")
        for k in saved:
            if k not in flat_target:
                problems.append(f"{k}: in the checkpoint but not in the model (shape {saved[k]})")
        if problems:
            head = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(step)} does not match the model "
                f"({len(problems)} problems):\n  {head}{more}")

    def _restore_step(self, step: int, target):
        self.check_compatible(step, target)
        flat_target, treedef = flatten_state(target)
        names = list(flat_target)
        abstract = {k: _abstract_leaf(v) for k, v in flat_target.items()}
        out, meta = self._read(step, **{STATE: ocp.args.StandardRestore(abstract)})
        return unflatten_state(out[STATE], treedef, names), meta

    def restore(self, target, step: int | None = None):
        """(state, metadata) restored onto the shardings of `target` (concrete arrays or
        ShapeDtypeStructs with shardings, any mesh). With step=None, the latest readable step:
        each damaged newer step is moved to WORKDIR/corrupt/ (see `quarantine`) so that it can
        be saved again. An explicit `step` is only read. Shape mismatches always raise."""
        if step is not None:
            if step not in self.all_steps():
                raise FileNotFoundError(f"no checkpoint step {step} in {self.directory}; "
                                        f"steps: {self.all_steps()}")
            return self._restore_step(step, target)
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        errors = []
        for s in reversed(steps):
            try:
                out, error = self._restore_step(s, target), None
            except CheckpointCorruptError as e:
                out, error = None, e
            # every process must take the same step (orbax saves are collective)
            if not _any_process(error is not None):
                return out
            moved = self.quarantine(s, error)
            errors.append(f"{moved}: {error or 'unreadable on another process'}")
        raise CheckpointCorruptError(
            f"no readable checkpoint in {self.directory}; the damaged steps were moved aside "
            "(a new run in this directory starts from scratch):\n" + "\n".join(errors))

    def quarantine(self, step: int, reason=None) -> Path:
        """Moves step directory `step` to WORKDIR/corrupt/STEP-TIMESTAMP (process 0 moves, every
        process waits for it) and returns the new path. Nothing is deleted; orbax no longer
        lists the step, so it can be saved again."""
        src = self.directory / str(step)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = self.directory / CORRUPT / f"{step}-{stamp}"
        if jax.process_index() == 0:
            n = 1
            while dest.exists():  # the same step damaged twice within a second
                dest = self.directory / CORRUPT / f"{step}-{stamp}-{n}"
                n += 1
            dest.parent.mkdir(parents=True, exist_ok=True)
            src.rename(dest)
            log.warning("checkpoint step %d cannot be read: moved %s to %s (nothing deleted); "
                        "trying the next older step. The error: %s", step, src, dest,
                        reason or "unreadable on another process")
        _sync_processes(f"guard_jax_quarantine_{step}")
        self._mgr.reload()
        return dest
