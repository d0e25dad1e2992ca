"""One process of test_video_train's loader test: `python video_loader_worker.py SPEC`.

SPEC is JSON: {"task": {"a", "tok", "hf"}, "overrides": {key: value}, "batches": n, "workdir"}.
With GUARD_JAX_COORDINATOR etc. set it is one of several processes (one CPU device each). It
builds configs/tiny_grpo.py's loader on dataset `a` (grpo.build_loader: each process reads its
share, every batch gathered) and prints one JSON line: per batch the record ids and each array's
shape, dtype and SHA-256."""

import hashlib
import json
import os
import sys

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_grpo.py")


def main():
    import numpy as np

    from guard_jax import distributed
    distributed.initialize(timeout_s=int(os.environ.get("GUARD_JAX_INIT_TIMEOUT", "120")))
    from guard_jax.run_config import load_config, model_config
    from guard_jax.training.grpo import build_loader

    spec = json.loads(sys.argv[1])
    task = spec["task"]
    overrides = {"model.hf_dir": task["hf"], "data.path": task["a"],
                 "data.tokenizer_dir": task["tok"], **spec["overrides"]}
    run = load_config(CONFIG, [f"--config.{k}={v}" for k, v in overrides.items()])
    run.workdir = spec["workdir"]
    loader = build_loader(run, model_config(run), tokenizer_dir=task["tok"])
    batches = []
    for _ in range(spec["batches"]):
        b = next(loader)
        arrays = {k: v for k, v in b.items() if isinstance(v, np.ndarray) and k != "ids"}
        batches.append({
            "ids": [str(i) for i in b["ids"]],
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
            "dtypes": {k: str(v.dtype) for k, v in arrays.items()},
            "sha256": {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                       for k, v in arrays.items()}})
    loader.close()
    print(json.dumps({"batches": batches}), flush=True)


if __name__ == "__main__":
    main()
