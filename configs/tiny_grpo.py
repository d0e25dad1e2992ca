"""Tiny GRPO on the CPU: a tiny Qwen2.5-VL, SafeGuard-VL prompts and reward, G = 4.

Run:   guard-jax train --config configs/tiny_grpo.py --workdir /tmp/tiny_grpo \
           --config.data.path=DATA --config.data.tokenizer_dir=TOK [--config.model.hf_dir=HF]
       (DATA: a `guard-jax data build` output whose samples render with the safeguard_vl
       recipe, e.g. the demo's synthetic policy task; TOK: its byte-level BPE tokenizer; HF:
       a model sized to that tokenizer, e.g. the demo's SFT export; without it the
       `tiny_qwen` preset with the real Qwen2.5 vocabulary starts from random weights)
Expect: a few seconds per step after compilation; metrics.jsonl holds the phase timings
(timing_s/gen, reward, old_log_prob, update), the reward terms' mean/std and
frac_reward_zero_std, response lengths, clip fraction and approximate KL; checkpoints resume
(tests/test_grpo.py runs this config end to end).
"""

import os

from guard_jax.run_config import config_from_file


def get_config():
    # tiny_sft's model (float32, no remat) and image budget, then GRPO
    c = config_from_file(os.path.join(os.path.dirname(__file__), "tiny_sft.py"))
    c.trainer = "grpo"
    c.model.update(preset="tiny_qwen", attention_impl="xla")
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    c.data.update(recipe="safeguard_vl", recipe_mode="rl", min_pixels=56 * 56)
    c.train.update(steps=4, global_batch=8, micro_batch=4, log_every=1, checkpoint_every=2)
    c.optim.update(lr=1e-4, schedule="constant", weight_decay=1e-2)
    c.grpo.update(num_generations=4, prompts_per_step=4, rollout_chunk_prompts=4,
                  max_prompt_len=224, max_new_tokens=24, temperature=1.0,
                  dynamic_sampling="mask",
                  # every new filled-position count is one more compile, and at this size
                  # compiling costs more than the padding's head (docs/grpo.md)
                  compact_head=False)
    return c
