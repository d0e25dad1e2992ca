"""Starting a job's processes for the multi-process tests: one process with 8 fake CPU devices,
or n processes with 8 / n each joined by jax.distributed on a localhost coordinator."""

import json
import os
import socket
import subprocess
import sys
import warnings

import numpy as np


def cache_compiles_on_every_process() -> None:
    """Let every process of a job write JAX's persistent compilation cache, not only process 0.

    A CPU program's cache key differs between the processes of a job (each compiles for its own
    part of the collectives), and JAX writes entries from process 0 alone: process 1 would
    compile every program again in each later run, while process 0 loads it, and gloo gives a
    peer only 30 s to reach a new collective. With each process writing its own entries, a
    later run of the same programs loads them on both. Call before the first compile."""
    from jax._src import compilation_cache, compiler, config

    def write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
        # the rules of JAX's own writer (compiler._cache_write) less its process 0 check
        least = config.persistent_cache_min_compile_time_secs.value
        if host_callbacks or compile_time_secs < least:
            return
        try:
            compilation_cache.put_executable_and_time(cache_key, module_name, executable,
                                                      backend, int(compile_time_secs))
        except Exception as err:  # noqa: BLE001 - a cache that cannot be written costs time only
            warnings.warn(f"not cached: {module_name}: {err}")

    compiler._cache_write = write


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(worker: str, args, *, processes: int, env=None, init_timeout: int = 120):
    """`python WORKER ARGS...` as `processes` processes of one job (started, not waited for).
    The worker sets its own fake device count (8 / processes) from GUARD_JAX_NUM_PROCESSES."""
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith(("SLURM_", "TPU_", "GUARD_JAX_", "XLA_FLAGS"))}, **(env or {})}
    port = free_port()
    procs = []
    for i in range(processes):
        if processes > 1:
            env = dict(env, GUARD_JAX_COORDINATOR=f"127.0.0.1:{port}",
                       GUARD_JAX_NUM_PROCESSES=str(processes), GUARD_JAX_PROCESS_ID=str(i),
                       GUARD_JAX_INIT_TIMEOUT=str(init_timeout))
        procs.append(subprocess.Popen([sys.executable, worker, *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


def finish(procs, timeout: int = 900) -> list[tuple[int, dict | None, str]]:
    """(exit code, the last JSON line printed, stderr) of each process."""
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        out.append((p.returncode, json.loads(lines[-1]) if lines else None, stderr))
    return out


def ok(results) -> list[dict]:
    for rc, result, err in results:
        assert rc == 0 and result is not None, err[-4000:]
    return [r for _, r, _ in results]


def checkpoint_arrays(workdir, step, prefix: str = "params.") -> dict:
    """The arrays of checkpoint `step` whose names start with `prefix`, read onto this
    process's first device whatever topology wrote them."""
    import jax
    import orbax.checkpoint as ocp
    path = os.path.join(str(workdir), str(step), "state")
    reader = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=one)
              for k, v in reader.metadata(path).item_metadata.items()}
    return {k: np.asarray(v) for k, v in reader.restore(path, target).items()
            if k.startswith(prefix)}


def jsonl(path) -> list:
    return [json.loads(line) for line in open(path)]
