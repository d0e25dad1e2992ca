"""ProGuard, GRPO from the instruct model (no SFT cold start), 7B (docs/recipes.md#proguard).

Run:   guard-jax train --config configs/proguard_grpo_7b.py --workdir runs/proguard_grpo_7b \
           --config.model.hf_dir=PATH/Qwen2.5-VL-7B-Instruct --config.data.path=data/proguard \
           --config.grpo.similarity_model=PATH/bge-m3
Plan:  guard-jax plan --config configs/proguard_grpo_7b.py --target h100x8
TPU:   fits v5p-16 (fsdp 8), 64.6 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/proguard_grpo_7b.py --target v5p-16
Expect: as configs/proguard_grpo_3b.py (the same hyperparameters) on the 7B model, the size of
the released ProGuard-7B.
"""

import os

from guard_jax.run_config import config_from_file


def get_config():
    c = config_from_file(os.path.join(os.path.dirname(__file__), "proguard_grpo_3b.py"))
    c.model.preset = "7b"
    return c
