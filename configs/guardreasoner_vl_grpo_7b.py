"""GuardReasoner-VL GRPO, 7B (paper §2.3.2; released EasyR1 config).

Run:   guard-jax train --config configs/guardreasoner_vl_grpo_7b.py --workdir DIR
Plan:  guard-jax plan --config configs/guardreasoner_vl_grpo_7b.py --target v5p-32
Expect: memory per device as in the README's planning table; the GRPO trainer itself arrives
with the training issues. Hyperparameters: G=16, T=1.2, 512 prompts per step, lr 1e-6,
wd 1e-2, no KL, max prompt/response 3072/3072, images 512^2..2048^2 pixels, vision trained.
"""

from guard_jax.run_config import base_config


def get_config():
    c = base_config()
    c.trainer = "grpo"
    c.model.preset = "7b"
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.data.seq_len = 6144  # prompt 3072 + response 3072
    c.data.images_per_sample = 1
    c.data.min_pixels = 262144
    c.data.max_pixels = 4194304
    c.train.global_batch = 128 * 16  # actor mini-batch: 128 prompts x G (released config.yaml)
    c.train.micro_batch = 16
    c.optim.lr = 1e-6
    c.optim.weight_decay = 1e-2
    c.optim.warmup_steps = 0
    c.optim.grad_clip = 1.0
    c.optim.schedule = "constant"
    c.grpo.num_generations = 16
    c.grpo.prompts_per_step = 512
    c.grpo.rollout_chunk_prompts = 32
    c.grpo.max_prompt_len = 3072
    c.grpo.max_new_tokens = 3072
    c.grpo.temperature = 1.2
    c.grpo.kl_coef = 0.0
    return c
