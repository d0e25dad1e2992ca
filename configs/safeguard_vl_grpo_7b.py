"""SafeGuard-VL stage 2, policy-aware GRPO, 7B (docs/recipes.md#safeguard-vl).

Data:  guard-jax data build llavaguard --source SRC --out data/llavaguard_train
       (LlavaGuard's train split with its policy augmentations: the label under the policy)
Run:   guard-jax train --config configs/safeguard_vl_grpo_7b.py --workdir runs/sgvl_grpo_7b \
           --config.model.hf_dir=STAGE1_EXPORT --config.data.path=data/llavaguard_train \
           --config.train.steps=N   (N = training samples / 2: one epoch)
       (STAGE1_EXPORT: `guard-jax export` of configs/safeguard_vl_recaption_sft_7b.py's run, or
       Qwen2.5-VL-7B-Instruct for the RL-only variant)
Plan:  guard-jax plan --config configs/safeguard_vl_grpo_7b.py --target h100x8
TPU:   fits v5p-8 (fsdp 4), 46.4 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/safeguard_vl_grpo_7b.py --target v5p-8
Expect: 2 prompts x G = 8 completions per step, one update each (so the ratio is 1 and the clip
never binds); the reward (asymmetric yes/no 1.7 / 2.0 + the >= 50-character think rule + the
whole-string format, at most 3) rises; frac_reward_zero_std shows how many groups agree.
Hyperparameters (ms-swift): T = 1.0, lr 1e-6 with 1% warmup, KL beta 0.01 (low_var_kl),
512 completion tokens, full fine-tuning in bf16 compute.
"""

from guard_jax.run_config import recipe_config

STEPS = 2_000  # placeholder length: set train.steps to one epoch of your data (samples / 2)


def get_config():
    return recipe_config(
        "grpo", "7b",
        data=dict(recipe="safeguard_vl", recipe_mode="rl", seq_len=2560, worker_count=8),
        train=dict(global_batch=16, micro_batch=8, steps=STEPS, log_every=1,
                   checkpoint_every=300),
        # the schedule: transformers Trainer's default (linear); verify against ms-swift's
        optim=dict(lr=1e-6, warmup_steps=STEPS // 100, schedule="linear"),
        grpo=dict(num_generations=8, prompts_per_step=2, rollout_chunk_prompts=2,
                  max_prompt_len=2048, max_new_tokens=512, kl_coef=0.01, reward="safeguard_vl"))
