"""GuardReasoner-VL stage 2, GRPO with dynamic clipping, 3B (docs/recipes.md#guardreasoner-vl).

Data:  guard-jax data build guardreasoner_vl_rl --source SRC --out data/grvl_rl
       (SRC: the 12K RL prompts, 20% safety-aware concatenations)
Run:   guard-jax train --config configs/guardreasoner_vl_grpo_3b.py --workdir runs/grvl_grpo_3b \
           --config.model.hf_dir=R_SFT_EXPORT --config.data.path=data/grvl_rl
       (R_SFT_EXPORT: `guard-jax export` of configs/guardreasoner_vl_sft_3b.py's run)
Plan:  guard-jax plan --config configs/guardreasoner_vl_grpo_3b.py --target h100x8
TPU:   fits v5p-8 (fsdp 4), 69.8 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/guardreasoner_vl_grpo_3b.py --target v5p-8
Expect: 24 rollout steps of 512 prompts x G = 16 (one pass over the 12K prompts), 4 updates of
128 prompts each per step (the released config.yaml; the paper says 256, i.e. 2 updates: set
train.global_batch=4096); the clip ratio decays linearly from 0.2 to 0 (clip/eps_low in the
metrics); the reward (length-aware, paper form, beta = 1) rises towards 0 as answers get right.
Paper anchor for the 3B model: 78.73 prompt Avg(All) F1.
Hyperparameters: T = 1.2, lr 1e-6, wd 1e-2, no warmup, grad clip 1.0, no KL, no entropy bonus,
token-mean, prompt/response 3072/3072 tokens, images 512^2..2048^2 pixels, vision trained,
no degenerate-group masking (faithful). For the released models' reward use
--config.grpo.reward_knobs=mode=code_faithful (characters / 3072, no beta cap).
"""

from guard_jax.run_config import recipe_config

PROMPTS, PROMPTS_PER_STEP, G, MINI_BATCH_PROMPTS = 12_000, 512, 16, 128


def get_config():
    return recipe_config(
        "grpo", "3b",
        data=dict(recipe="guardreasoner_vl", recipe_mode="rl", seq_len=6144,
                  min_pixels=262144, max_pixels=4194304, worker_count=8),
        train=dict(global_batch=MINI_BATCH_PROMPTS * G, micro_batch=G,
                   steps=-(-PROMPTS // PROMPTS_PER_STEP), log_every=1, checkpoint_every=4),
        optim=dict(lr=1e-6, weight_decay=1e-2, schedule="constant"),
        grpo=dict(num_generations=G, prompts_per_step=PROMPTS_PER_STEP, rollout_chunk_prompts=32,
                  max_prompt_len=3072, max_new_tokens=3072, temperature=1.2,
                  clip_schedule="linear", reward="guardreasoner_vl",
                  reward_knobs="mode=paper,beta=1.0"))
