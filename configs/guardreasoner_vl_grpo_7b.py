"""GuardReasoner-VL stage 2, GRPO with dynamic clipping, 7B (paper §2.3.2; released EasyR1 config).

Run:   guard-jax train --config configs/guardreasoner_vl_grpo_7b.py --workdir runs/grvl_grpo_7b \
           --config.model.hf_dir=R_SFT_EXPORT --config.data.path=data/grvl_rl
Plan:  guard-jax plan --config configs/guardreasoner_vl_grpo_7b.py --target v5p-32
TPU:   fits v5p-16 (fsdp 8), 78.4 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/guardreasoner_vl_grpo_7b.py --target v5p-16
Expect: as configs/guardreasoner_vl_grpo_3b.py (the same hyperparameters: G = 16, T = 1.2, 512
prompts per step in 4 updates of 128, lr 1e-6, wd 1e-2, no KL, linear clip decay from 0.2,
prompt/response 3072/3072, images 512^2..2048^2 pixels, vision trained) on the 7B model; memory
per device: docs/performance.md#tpu-memory-of-the-recipe-configs. Paper anchor: 79.07 prompt
Avg(All) F1.
"""

import os

from guard_jax.run_config import config_from_file


def get_config():
    c = config_from_file(os.path.join(os.path.dirname(__file__), "guardreasoner_vl_grpo_3b.py"))
    c.model.preset = "7b"
    return c
