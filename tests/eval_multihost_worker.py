"""One process of `guard-jax eval --config` runs for test_eval_multihost.py:
`python eval_multihost_worker.py SPEC`.

SPEC is JSON: {"jobs": [{"name", "argv", "argv_1": argv of process 1 (optional)}]}. With
GUARD_JAX_COORDINATOR etc. set (tests/processes.py) it is one of n processes with 8 / n fake
CPU devices; without, a single process with 8. It joins the job once, then runs each job's argv
through the real command line (`guard_jax.cli.main`) in turn, and prints one JSON line: per
job, the exit status, what it wrote to stderr and its wall time.
"""

import contextlib
import io
import json
import os
import sys
import time
import traceback

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    n = int(os.environ.get("GUARD_JAX_NUM_PROCESSES") or 1)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // n}"


def main():
    spec = json.loads(sys.argv[1])
    import processes
    processes.cache_compiles_on_every_process()  # a later run loads on both processes
    from guard_jax import cli, distributed
    distributed.initialize(timeout_s=int(os.environ.get("GUARD_JAX_INIT_TIMEOUT", "120")))
    import jax
    distributed.initialize = lambda *a, **k: None  # joined once; cli.main would join again
    me = jax.process_index()
    results = {}
    for job in spec["jobs"]:
        argv = job.get(f"argv_{me}") or job["argv"]
        err, start = io.StringIO(), time.monotonic()
        with contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except Exception:  # noqa: BLE001 - reported to the test, which names the job
                traceback.print_exc(file=err)
                rc = 1
        results[job["name"]] = {"rc": rc, "stderr": err.getvalue(),
                                "seconds": round(time.monotonic() - start, 1)}
    print(json.dumps({"process": me, "jobs": results}), flush=True)


if __name__ == "__main__":
    main()
