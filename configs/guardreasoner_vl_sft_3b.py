"""GuardReasoner-VL stage 1, reasoning SFT (R-SFT), 3B (docs/recipes.md#guardreasoner-vl).

Data:  guard-jax data build guardreasoner_vl_sft --source SRC --out data/grvl_sft
       (SRC: the GuardReasoner-VLTrain files)
Run:   guard-jax train --config configs/guardreasoner_vl_sft_3b.py --workdir runs/grvl_sft_3b \
           --config.model.hf_dir=PATH/Qwen2.5-VL-3B-Instruct --config.data.path=data/grvl_sft
Plan:  guard-jax plan --config configs/guardreasoner_vl_sft_3b.py --target h100x8
TPU:   fits v5p-16 (fsdp 8), 57.6 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/guardreasoner_vl_sft_3b.py --target v5p-16
Expect: 3 epochs over the 123,096 samples = 1,923 updates of 192 sequences; the loss (assistant
tokens only) falls fast in the first epoch and flattens; this is the cold start for GRPO
(configs/guardreasoner_vl_grpo_3b.py). The paper's ablation puts R-SFT alone at about 77 prompt
Avg(All) F1 (the full 3B model: 78.73).
Released recipe: full fine-tuning, vision tower frozen (LLaMA-Factory default), lr 5e-5 cosine,
no warmup, grad clip 1.0, AdamW, bf16, cutoff 2048 tokens, no packing, global batch 192.
"""

from guard_jax.run_config import base_config

SAMPLES, EPOCHS, GLOBAL_BATCH = 123_096, 3, 192


def get_config():
    c = base_config()
    c.trainer = "sft"
    c.model.update(preset="3b", param_dtype="float32", dtype="bfloat16", remat="dots_no_batch")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(recipe="guardreasoner_vl", recipe_mode="sft", seq_len=2048,
                  buckets="1024,2048", images_per_sample=1, min_pixels=3136,
                  max_pixels=1003520, worker_count=8)
    c.train.update(global_batch=GLOBAL_BATCH, micro_batch=24,
                   steps=EPOCHS * SAMPLES // GLOBAL_BATCH, log_every=10, checkpoint_every=200)
    c.optim.update(lr=5e-5, schedule="cosine", warmup_steps=0, weight_decay=0.0, grad_clip=1.0,
                   freeze=r"^visual\.")
    return c
