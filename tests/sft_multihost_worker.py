"""One process of an SFT run for test_sft_multihost.py: `python sft_multihost_worker.py CONFIG
WORKDIR OVERRIDE...`. With GUARD_JAX_COORDINATOR etc. set it is one of several processes with
8 / n fake CPU devices; without, a single process with 8. It trains through
guard_jax.training.sft.train and prints the result as one JSON line."""

import json
import os
import sys

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    n = int(os.environ.get("GUARD_JAX_NUM_PROCESSES", "1"))
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // n}"


def main():
    config, workdir, *overrides = sys.argv[1:]
    import processes
    processes.cache_compiles_on_every_process()  # a later run loads on both processes
    from guard_jax import distributed
    distributed.initialize(timeout_s=int(os.environ.get("GUARD_JAX_INIT_TIMEOUT", "120")))
    import logging

    from guard_jax.run_config import load_config
    from guard_jax.training.sft import train
    logging.basicConfig(level=logging.WARNING)
    result = train(load_config(config, overrides), workdir)
    print(json.dumps({"step": result["step"], "loss": result.get("loss")}), flush=True)


if __name__ == "__main__":
    main()
