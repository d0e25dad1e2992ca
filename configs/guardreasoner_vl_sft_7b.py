"""GuardReasoner-VL stage 1, reasoning SFT (R-SFT), 7B (docs/recipes.md#guardreasoner-vl).

Run:   guard-jax train --config configs/guardreasoner_vl_sft_7b.py --workdir runs/grvl_sft_7b \
           --config.model.hf_dir=PATH/Qwen2.5-VL-7B-Instruct --config.data.path=data/grvl_sft
Plan:  guard-jax plan --config configs/guardreasoner_vl_sft_7b.py --target h100x8
TPU:   fits v5p-16 (fsdp 8), 56.4 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/guardreasoner_vl_sft_7b.py --target v5p-16
Expect: as the 3B config (same data, schedule and batch: 1,923 updates of 192 sequences); the
cold start for configs/guardreasoner_vl_grpo_7b.py (the full 7B model: 79.07 prompt Avg(All) F1).
"""

import os

from guard_jax.run_config import config_from_file


def get_config():
    c = config_from_file(os.path.join(os.path.dirname(__file__), "guardreasoner_vl_sft_3b.py"))
    c.model.preset = "7b"
    # 7B activations: smaller micro-batches than the 3B run's 24, a multiple of the 8 or 16
    # data x fsdp devices it runs on (12 would be replicated on 8: docs/performance.md)
    c.train.micro_batch = 16
    return c
