"""ProGuard, GRPO from the instruct model (no SFT cold start), 3B (docs/recipes.md#proguard).

Data:  guard-jax data build proguard --source SRC --out data/proguard   (87,024 samples)
Run:   guard-jax train --config configs/proguard_grpo_3b.py --workdir runs/proguard_grpo_3b \
           --config.model.hf_dir=PATH/Qwen2.5-VL-3B-Instruct --config.data.path=data/proguard \
           --config.grpo.similarity_model=PATH/bge-m3
Plan:  guard-jax plan --config configs/proguard_grpo_3b.py --target h100x8
TPU:   fits v5p-8 (fsdp 4), 51.8 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/proguard_grpo_3b.py --target v5p-8
Expect: 340 rollout steps of 256 prompts x G = 16, each in 8 updates of 32 prompts; the reward
(format x (request + response + category), at most 3) rises as the strict format is learned,
then with the labels; reward/similarity_bonus > 0 once out-of-taxonomy names come close to the
gold name (BGE-M3 cosine, thresholds 0.7 max / 0.6 mean). Without similarity_model the bonus is
0, as when the released code's similarity service fails.
Hyperparameters (released script + verl defaults): T = 1.0, lr 1e-6, clip 0.2 / 0.2 (verl's
defaults override the script's 0.1), dual clip 3.0, KL loss 0.01 (low_var_kl) and KL in the
reward 0.001, entropy bonus 0.01, token-mean, prompt/response 3072/1024, the <thinking> tag.
"""

from guard_jax.run_config import recipe_config

SAMPLES, PROMPTS_PER_STEP, G, MINI_BATCH_PROMPTS = 87_024, 256, 16, 32


def get_config():
    return recipe_config(
        "grpo", "3b",
        data=dict(recipe="proguard", recipe_mode="", seq_len=4096, worker_count=8),
        train=dict(global_batch=MINI_BATCH_PROMPTS * G, micro_batch=G,
                   steps=SAMPLES // PROMPTS_PER_STEP, log_every=1, checkpoint_every=20),
        optim=dict(lr=1e-6, schedule="constant"),
        grpo=dict(num_generations=G, prompts_per_step=PROMPTS_PER_STEP, rollout_chunk_prompts=32,
                  max_prompt_len=3072, max_new_tokens=1024, clip_ratio_dual=3.0, kl_coef=0.01,
                  kl_in_reward_coef=0.001, entropy_coeff=0.01, reward="proguard",
                  reward_knobs="think_tag=thinking,category_mode=faithful"))
