"""SafeGuard-VL stage 1: descriptive SFT on recaptioned unsafe images, LoRA
(docs/recipes.md#safeguard-vl).

Data:  records {image, answer} (answer = the recaptioned description), e.g.
       guard-jax data build sharegpt --source SRC --out data/sgvl_recaption
Run:   guard-jax train --config configs/safeguard_vl_recaption_sft_7b.py --workdir runs/sgvl_s1 \
           --config.model.hf_dir=PATH/Qwen2.5-VL-7B-Instruct --config.data.path=data/sgvl_recaption
TPU:   fits v5p-8 (data 4), 69.8 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/safeguard_vl_recaption_sft_7b.py --target v5p-8
Then:  guard-jax export --checkpoint runs/sgvl_s1 --out runs/sgvl_s1_hf   (adapters merged)
Expect: one epoch over ~100k images = ~1,560 updates of 64; the model learns to describe harmful
content instead of whitewashing it. Paper ablation (UnsafeBench F1): base 41.71, SFT without
recaption 53.22, SFT with recaption 66.96, full SFT + RL 72.16.
Released recipe: LoRA r=64 alpha=128, lr 1e-4, weight decay 1e-3, 1 epoch, warmup 5%, batch 64,
gradient checkpointing, bf16, max_length 20480 (we bucket to 4096/8192/20480 tokens and cap
images at 1003520 pixels; raise data.max_pixels for full-resolution images).
"""

from guard_jax.run_config import base_config

SAMPLES, GLOBAL_BATCH = 100_000, 64


def get_config():
    c = base_config()
    c.trainer = "sft"
    c.model.update(preset="7b", param_dtype="bfloat16", dtype="bfloat16", remat="full")
    c.mesh.update(data=-1, fsdp=1, tensor=1)  # LoRA: the frozen base fits replicated in bf16
    c.data.update(recipe="safeguard_vl", recipe_mode="recaption", seq_len=20480,
                  buckets="4096,8192,20480", images_per_sample=1, max_pixels=1003520)
    steps = SAMPLES // GLOBAL_BATCH
    c.train.update(global_batch=GLOBAL_BATCH, micro_batch=8, steps=steps, log_every=10,
                   checkpoint_every=200)
    c.optim.update(lr=1e-4, schedule="cosine", warmup_steps=steps // 20, weight_decay=1e-3,
                   grad_clip=1.0)
    c.lora.update(rank=64, alpha=128.0, targets="")  # "" = every language-model projection
    return c
