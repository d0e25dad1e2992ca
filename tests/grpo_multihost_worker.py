"""One process of a GRPO run for test_grpo_multihost.py: `python grpo_multihost_worker.py SPEC`.

SPEC is JSON: {"task": {"data", "tok", "hf"}, "workdir", "overrides": {key: value},
"dump": path prefix, "signal_at": [call, process, "TERM" | "KILL"] or null}. With
GUARD_JAX_COORDINATOR etc. set it is one of several processes with 4 fake CPU devices; without,
a single process with 8. It trains configs/tiny_grpo.py through guard_jax.training.grpo.train
and prints the result as one JSON line.

A random tiny model earns the recipe's reward 0 on every sample, so every group would be
degenerate; the reward here adds 1 when a completion's first token is a multiple of 3, which
gives some groups a spread and leaves others degenerate (dynamic sampling has work to do). Each
reward call appends the prompts' ids, their reward labels and the rollouts' totals to
DUMP.PROCESS.jsonl; at call number `call` process `process` sends itself SIGTERM or SIGKILL.
"""

import json
import os
import signal
import sys

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    devices = 4 if os.environ.get("GUARD_JAX_COORDINATOR") else 8
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_grpo.py")


def patch_reward(dump: str, signal_at) -> None:
    import jax
    import jax.numpy as jnp

    from guard_jax.distributed import host_array
    from guard_jax.training.grpo_rewards import RolloutReward
    real = RolloutReward.__call__
    calls = [0]

    def reward(self, tokens, mask, labels, ids=None):
        terms = real(self, tokens, mask, labels, ids=ids)
        terms["total"] = terms["total"] + (tokens[:, 0] % 3 == 0).astype(jnp.float32)
        calls[0] += 1
        with open(f"{dump}.{jax.process_index()}.jsonl", "a") as f:
            f.write(json.dumps({"ids": [str(i) for i in ids], "labels": labels,
                                "total": host_array(terms["total"]).tolist()}) + "\n")
        if signal_at and calls[0] == signal_at[0] and jax.process_index() == signal_at[1]:
            os.kill(os.getpid(), getattr(signal, "SIG" + signal_at[2]))
        return terms

    RolloutReward.__call__ = reward


def main():
    spec = json.loads(sys.argv[1])
    import processes
    processes.cache_compiles_on_every_process()  # a later run loads on both processes
    from guard_jax import distributed
    distributed.initialize(timeout_s=int(os.environ.get("GUARD_JAX_INIT_TIMEOUT", "120")))
    import logging

    from guard_jax.run_config import load_config
    from guard_jax.training.grpo import train
    logging.basicConfig(level=logging.WARNING)
    patch_reward(spec["dump"], spec.get("signal_at"))
    task = spec["task"]
    overrides = {"model.hf_dir": task["hf"], "data.path": task["data"],
                 "data.tokenizer_dir": task["tok"], **spec["overrides"]}
    run = load_config(CONFIG, [f"--config.{k}={v}" for k, v in overrides.items()])
    result = train(run, spec["workdir"])
    print(json.dumps({k: v for k, v in result.items() if k == "step" or k.startswith("dyn/")}),
          flush=True)


if __name__ == "__main__":
    main()
