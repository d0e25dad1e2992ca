"""Joining the processes of a multi-host job with `jax.distributed`.

How the topology is found, in order:
1. explicit variables: `GUARD_JAX_COORDINATOR` (host:port), `GUARD_JAX_NUM_PROCESSES`,
   `GUARD_JAX_PROCESS_ID` (also read under JAX's own names `JAX_COORDINATOR_ADDRESS`,
   `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`);
2. SLURM (`srun` sets SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID, ...): JAX's cluster detection;
3. Cloud TPU VMs of a multi-host slice: JAX's cluster detection (metadata server);
4. otherwise a single process, and nothing is initialised.

A peer that never joins is an error after `timeout_s` (GUARD_JAX_INIT_TIMEOUT, default 300 s)
that names the coordinator and the process, never a silent hang. Once joined, a watchdog
thread on every process writes a heartbeat to the coordinator's key-value store and reads the
others': a process that stops (killed, its host lost) is named by every survivor, which exits
with PEER_LOST_EXIT_CODE after GUARD_JAX_PEER_TIMEOUT seconds (default 100) instead of
waiting in a collective that will never complete (docs/grpo-multihost.md). A process that ends
on its own with a non-zero exit code (2 for bad input, `guard_jax.cli` tells it through
`exiting`) is named at once, and every survivor exits with that same code (docs/errors.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time

import jax
import numpy as np

from guard_jax.errors import EXIT_INPUT, InputError

JOIN_TIMEOUT_EXIT_CODE = 75  # EX_TEMPFAIL: a peer never joined; the job may be retried
PEER_LOST_EXIT_CODE = 75  # a peer died mid-run: the same, retrying resumes from a checkpoint
_ALIVE, _DONE, _GONE = "guard_jax/alive/", "guard_jax/done/", "guard_jax/gone/"
_exit_code = 0  # what this process's command returned (`exiting`)
_all_stopping = False  # an input error ended every process at once (raise_input_errors_together)


def exiting(code: int) -> None:
    """Records the exit code this process's command returns (`guard_jax.cli` calls it). At exit
    the peer watchdog writes it for the other processes: a non-zero one ends each of them with
    one line naming this process and the code, and the same exit code."""
    global _exit_code
    _exit_code = int(code)


@dataclasses.dataclass(frozen=True)
class Topology:
    method: str  # "single", "explicit", "slurm", "tpu"
    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0


def _env(*names):
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def detect(environ=None) -> Topology:
    env = os.environ if environ is None else environ

    def get(*names):
        for n in names:
            if env.get(n):
                return env[n]
        return None

    coord = get("GUARD_JAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
    nproc = get("GUARD_JAX_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    pid = get("GUARD_JAX_PROCESS_ID", "JAX_PROCESS_ID")
    if coord or nproc or pid:
        missing = [n for n, v in (("GUARD_JAX_COORDINATOR", coord),
                                  ("GUARD_JAX_NUM_PROCESSES", nproc),
                                  ("GUARD_JAX_PROCESS_ID", pid)) if not v]
        if missing:
            raise InputError(f"multi-process start-up needs all three of GUARD_JAX_COORDINATOR, "
                             f"GUARD_JAX_NUM_PROCESSES and GUARD_JAX_PROCESS_ID; missing {missing}")
        n, i = int(nproc), int(pid)
        if not 0 <= i < n:
            raise InputError(f"GUARD_JAX_PROCESS_ID={i} is outside 0..{n - 1}")
        return Topology("explicit", coord, n, i)
    if all(env.get(v) for v in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_NODELIST",
                                "SLURM_LOCALID")) and int(env["SLURM_NTASKS"]) > 1:
        return Topology("slurm", None, int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]))
    workers = get("TPU_WORKER_HOSTNAMES")
    if workers and len(workers.split(",")) > 1:
        return Topology("tpu", None, len(workers.split(",")), int(get("TPU_WORKER_ID") or 0))
    return Topology("single")


def initialize(timeout_s: int | None = None, local_device_ids=None) -> Topology:
    """Joins the job's processes (no-op for a single process). Call before any device work."""
    topo = detect()
    if topo.method == "single":
        return topo
    timeout_s = int(timeout_s or _env("GUARD_JAX_INIT_TIMEOUT") or 300)
    peer_timeout_s = float(_env("GUARD_JAX_PEER_TIMEOUT") or 100)
    # JAX's own deadlines abort the process from C++ with a stack trace; our watchdogs fire
    # first and exit with a message that says what happened and what to check.
    kw = dict(initialization_timeout=timeout_s + 60,
              heartbeat_timeout_seconds=int(peer_timeout_s) + 60)
    if topo.method == "explicit":
        kw.update(coordinator_address=topo.coordinator, num_processes=topo.num_processes,
                  process_id=topo.process_id)
        if local_device_ids is not None:
            kw["local_device_ids"] = local_device_ids
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        # CPU processes need a collectives library to talk to each other (tests, CPU clusters).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = topo.coordinator or f"the {topo.method} coordinator"
    message = (
        f"guard_jax: process {topo.process_id} of {topo.num_processes} could not join the job at "
        f"{where} within {timeout_s}s. Check that every process was started with the same "
        "coordinator address and process count, that the coordinator's port is reachable, and "
        "that process ids are unique; raise GUARD_JAX_INIT_TIMEOUT if workers start slowly.")
    done = threading.Event()

    def watchdog():
        if not done.wait(timeout_s):
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
            os._exit(JOIN_TIMEOUT_EXIT_CODE)

    threading.Thread(target=watchdog, daemon=True, name="guard_jax-join-watchdog").start()
    try:
        jax.distributed.initialize(**kw)
    except Exception as e:  # noqa: BLE001 - re-raised with the facts a user needs
        raise RuntimeError(f"{message} ({type(e).__name__}: {e})") from e
    finally:
        done.set()
    watch_peers(topo, peer_timeout_s)
    return topo


def _lost(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(_exit_code or PEER_LOST_EXIT_CODE)


def watch_peers(topo: Topology, timeout_s: float) -> threading.Event:
    """Starts the peer watchdog of a joined multi-process job (see the module docstring);
    returns the event that stops it. A process that exits marks itself done first: "ok" (exit
    0, or an input error every process met together), "exit N" (a non-zero exit code from
    `exiting`) or "error" (an uncaught exception); the others report the last two.

    Leaving on "exit N" skips JAX's shutdown (a barrier that would wait for peers that are
    leaving too) and keeps an order, so that no process meets another's absence before it
    has read why: the process that ended waits until every peer has marked itself done (each
    does so on reading its mark, then leaves), and process 0, which holds the job's key-value
    store, leaves after every other process that is leaving this way."""
    import atexit

    from jax._src import distributed as jax_distributed
    client = jax_distributed.global_state.client
    me, n = topo.process_id, topo.num_processes
    interval = max(0.2, min(5.0, timeout_s / 10))
    stop, leaving = threading.Event(), threading.Event()
    who = f"guard_jax: process {me} of {n}"

    def tell(key: str, value: str) -> None:
        try:
            client.key_value_set(f"{key}{me}", value, allow_overwrite=True)
        except Exception:  # noqa: BLE001 - nothing left to tell
            pass

    def wait(ready) -> None:
        """Until `ready(done marks, gone marks)`, the store is gone or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                done, gone = dict(client.key_value_dir_get(_DONE)), \
                    dict(client.key_value_dir_get(_GONE))
            except Exception:  # noqa: BLE001 - nobody left to wait for
                return
            if ready(done, gone):
                return
            time.sleep(interval / 2)

    def leave(code: int, *, lost: int | None = None, first_peers_done: bool = False):
        others = [p for p in range(n) if p not in (me, lost)]
        if first_peers_done:
            wait(lambda done, gone: all(f"{_DONE}{p}" in done for p in others))
        if me == 0:  # last: after the others leaving by "exit N" are gone
            wait(lambda done, gone: all(
                f"{_GONE}{p}" in gone or not done.get(f"{_DONE}{p}", "exit").startswith("exit")
                for p in others))
        else:
            tell(_GONE, "1")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def lose(message: str, code: int = PEER_LOST_EXIT_CODE, lost: int | None = None):
        leaving.set()
        code = _exit_code or code
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        tell(_DONE, f"exit {code}")
        leave(code, lost=lost)

    def loop():
        beats, last_ok, seen = 0, time.monotonic(), {}
        while not stop.wait(interval):
            now = time.monotonic()
            try:
                beats += 1
                client.key_value_set(f"{_ALIVE}{me}", str(beats), allow_overwrite=True)
                alive = dict(client.key_value_dir_get(_ALIVE))
                done = dict(client.key_value_dir_get(_DONE))
                last_ok = now
            except Exception as e:  # noqa: BLE001 - the coordinator itself may be gone
                if now - last_ok > timeout_s and not stop.is_set():
                    where = topo.coordinator or topo.method
                    _lost(f"{who}: lost the coordinator (process 0, {where}): "
                          f"unreachable for {timeout_s:.0f}s ({type(e).__name__}: {e}). It "
                          "died, was killed or its host is gone; exiting. Restart every process "
                          "to resume from the last checkpoint.")
                continue
            for peer in range(n):
                state = done.get(f"{_DONE}{peer}")
                if peer == me or state == "ok" or stop.is_set():
                    continue
                if state == "error":
                    lose(f"{who}: process {peer} stopped on an error (see its log); exiting "
                         "instead of waiting in a collective that cannot complete.")
                if state and state.startswith("exit "):
                    code = int(state.split()[1])
                    why = "bad input; its log names it" if code == EXIT_INPUT else "see its log"
                    lose(f"{who}: process {peer} exited with code {code} ({why}); exiting with "
                         "the same code instead of waiting in a collective that cannot "
                         "complete.", code)
                value = alive.get(f"{_ALIVE}{peer}")
                if seen.get(peer, (object(),))[0] != value:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] > timeout_s:
                    lose(f"{who}: lost process {peer}: no heartbeat for {timeout_s:.0f}s "
                         "(GUARD_JAX_PEER_TIMEOUT). It died, was killed or its host is gone; "
                         "exiting instead of waiting in a collective that cannot complete. "
                         "Restart every process to resume from the last checkpoint.",
                         lost=peer)

    failed = []
    hook = sys.excepthook

    def excepthook(*exc):
        if leaving.is_set():  # the watchdog is ending the process, which its line explains:
            threading.Event().wait()  # the error is the collective its peers left; it waits
        failed.append(exc[0])
        hook(*exc)

    def finished():
        # after an error (e.g. a collective that failed because a peer died) keep watching:
        # JAX's shutdown then waits for the peers, and a dead one is still named here
        state = "error" if failed else "ok" if not _exit_code or _all_stopping else \
            f"exit {_exit_code}"
        if state != "error":
            stop.set()
        tell(_DONE, state)
        if state.startswith("exit "):  # the peers read it and leave (loop, above)
            leave(_exit_code, first_peers_done=True)

    sys.excepthook = excepthook
    atexit.register(finished)
    threading.Thread(target=loop, daemon=True, name="guard_jax-peer-watchdog").start()
    return stop


# ------------------------------------------------------------------ host values on every process
def host_array(x) -> np.ndarray:
    """A device array as numpy on every process: one that spans other processes' devices (not
    fully addressable) is all-gathered, so every process must call this at the same point."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def allgather_json(value) -> list:
    """[value of process 0, value of process 1, ...] for a JSON-able value (one per process;
    a collective: every process calls it at the same point). One process: [value]."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
    padded = np.zeros((int(np.max(sizes)),), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(rows[i, :int(n)].tobytes().decode("utf-8"))
            for i, n in enumerate(np.asarray(sizes).reshape(-1))]


def allgather_interleaved(batch: dict) -> dict:
    """Each process's host batch (rows along axis 0, the same keys and shapes everywhere) ->
    the global batch on every process, rows interleaved: global row i * n + k is process k's
    row i (n processes). numpy arrays travel as arrays; lists and string arrays as JSON. This
    is the order of one loader sharded by process (process k reads elements k, k + n, ...):
    see docs/grpo-multihost.md."""
    n = jax.process_count()
    if n == 1:
        return dict(batch)
    from jax.experimental import multihost_utils
    arrays = {k: v for k, v in batch.items()
              if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"}
    other = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v))
             for k, v in batch.items() if k not in arrays}
    out = {}
    for k, v in multihost_utils.process_allgather(arrays).items():
        v = np.asarray(v)  # [n, rows, ...] -> [rows * n, ...] with process as the fast axis
        out[k] = np.swapaxes(v, 0, 1).reshape((-1,) + v.shape[2:])
    parts = allgather_json(other)
    for k, v in other.items():
        rows = [parts[p][k][i] for i in range(len(v)) for p in range(n)]
        out[k] = np.asarray(rows) if isinstance(batch[k], np.ndarray) else rows
    return {k: out[k] for k in batch}


# ------------------------------------------------------------------ input errors on every process
class SharedInputError(InputError):
    """An input error met on one or more processes, raised on every process with the same
    line (see `raise_input_errors_together`)."""


def _shared_message(messages: list) -> str:
    """One line for the errors each process met (None: none): the message itself when every
    process met the same one, else each message with the processes that met it."""
    met = [(i, m) for i, m in enumerate(messages) if m is not None]
    distinct = list(dict.fromkeys(m for _, m in met))
    if len(met) == len(messages) and len(distinct) == 1:
        return distinct[0]
    parts = []
    for m in distinct:
        ids = [i for i, x in met if x == m]
        who = f"process {ids[0]}" if len(ids) == 1 else "processes " + ", ".join(map(str, ids))
        parts.append(f"on {who} of {len(messages)}: {m}")
    return "; ".join(parts)


def raise_input_errors_together(error: BaseException | None) -> None:
    """A collective: each process passes the input error it met since the last call (None
    when none). If any process met one, every process raises the same `SharedInputError`,
    whose line names the processes unless all met the same error; so no process is left
    waiting in a collective for a peer that stopped. One process: `error` itself is raised."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    global _all_stopping
    messages = allgather_json(None if error is None else str(error))
    if any(m is not None for m in messages):
        _all_stopping = True  # every process ends with this error: none reports the others
        raise SharedInputError(_shared_message(messages)) from error


@contextlib.contextmanager
def input_errors_together(*kinds):
    """Runs the block on every process and ends with `raise_input_errors_together`: an error
    of `kinds` (default InputError) raised in it on any process leaves it on every process as
    the same one-line error. Each process reaches the end of the block once, with or without
    an error; inside, `raise_input_errors_together(None)` before each collective makes the
    peers of a failed process stop there (the SharedInputError it raises passes through)."""
    kinds = kinds or (InputError,)
    try:
        yield
    except SharedInputError:
        raise
    except kinds as e:
        raise_input_errors_together(e)
        raise  # several processes: the line above raised already
    raise_input_errors_together(None)
