"""LlavaGuard-style policy-conditioned SFT (QwenGuard2.5-v1.2-7B recipe,
docs/recipes.md#llavaguard).

Data:  guard-jax data build llavaguard --source SRC --out data/llavaguard (LlavaGuard-DS with its
       policy augmentations: the policy in the prompt decides the rating)
Run:   guard-jax train --config configs/llavaguard_policy_sft_7b.py --workdir runs/lg_7b \
           --config.model.hf_dir=PATH/Qwen2.5-VL-7B-Instruct --config.data.path=data/llavaguard
TPU:   fits v5p-16 (fsdp 8), 45.0 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/llavaguard_policy_sft_7b.py --target v5p-16
Eval:  guard-jax eval --config configs/eval/llavaguard.py --checkpoint runs/lg_7b
Expect: the model answers with the LlavaGuard JSON (rating, category, rationale) under the
policy it is given; policy-flipped samples (v2/v4 augmentations) teach it to follow the policy
rather than memorise categories. Released recipe: full fine-tuning, vision tower and projector
frozen, lr 1e-5 cosine, warmup 5%, weight decay 0.1, 3 epochs, 5 per device x 2 accumulation,
images at 262144 pixels, cutoff 32768 (policies are long: we bucket to 2048/4096 tokens).
"""

from guard_jax.run_config import base_config

SAMPLES, EPOCHS, GLOBAL_BATCH = 8_000, 3, 80  # 5 x 2 accumulation x 8 devices


def get_config():
    c = base_config()
    c.trainer = "sft"
    c.model.update(preset="7b", param_dtype="float32", dtype="bfloat16", remat="full")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(recipe="llavaguard", recipe_mode="", seq_len=4096, buckets="2048,4096",
                  images_per_sample=1, min_pixels=262144, max_pixels=262144)
    steps = EPOCHS * SAMPLES // GLOBAL_BATCH
    c.train.update(global_batch=GLOBAL_BATCH, micro_batch=40, steps=steps, log_every=10,
                   checkpoint_every=100)
    c.optim.update(lr=1e-5, schedule="cosine", warmup_steps=steps // 20, weight_decay=0.1,
                   grad_clip=1.0, freeze=r"^visual\.")
    return c
