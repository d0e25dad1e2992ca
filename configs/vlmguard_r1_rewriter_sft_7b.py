"""VLMGuard-R1 prompt rewriter SFT (docs/recipes.md#vlmguard-r1): (text, image) -> <think>risk
analysis</think> then the rewritten prompt (grammar think_rewrite, our choice; the paper
publishes neither its format nor its hyperparameters).

Data:  synthesised records with the original prompt, image, risk analysis and rewritten prompt
       (extras risk_analysis / rewritten_prompt, or a ready target), e.g.
       guard-jax data build generic_jsonl --source SRC --out data/vlmguard_r1 \
           --option target_field=target
Run:   guard-jax train --config configs/vlmguard_r1_rewriter_sft_7b.py --workdir runs/vgr1 \
           --config.model.hf_dir=PATH/Qwen2.5-VL-7B-Instruct --config.data.path=data/vlmguard_r1
TPU:   fits v5p-8 (fsdp 4), 50.9 GiB per chip (TPU compiler; docs/performance.md):
       guard-jax plan --config configs/vlmguard_r1_rewriter_sft_7b.py --target v5p-8
Try:   guard-jax moderate --model runs/vgr1 --recipe vlmguard_r1 --prompt "..." --image x.png
Expect: the rewriter emits the analysis and a rewritten prompt that the downstream VLM answers
safely (the paper: +43.59% average safety on SIUO across five VLMs). Hyperparameters are ours
(a standard full-FT SFT of Qwen2.5-VL-7B with the vision tower frozen): lr 1e-5 cosine, warmup
3%, 3 epochs; set train.steps = 3 x samples / 64 for your data (default: 20k samples).
"""

from guard_jax.run_config import base_config

SAMPLES, EPOCHS, GLOBAL_BATCH = 20_000, 3, 64


def get_config():
    c = base_config()
    c.trainer = "sft"
    c.model.update(preset="7b", param_dtype="float32", dtype="bfloat16", remat="full")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.data.update(recipe="vlmguard_r1", recipe_mode="", seq_len=4096, buckets="2048,4096",
                  images_per_sample=1, max_pixels=1003520)
    steps = EPOCHS * SAMPLES // GLOBAL_BATCH
    c.train.update(global_batch=GLOBAL_BATCH, micro_batch=8, steps=steps, log_every=10,
                   checkpoint_every=200)
    c.optim.update(lr=1e-5, schedule="cosine", warmup_steps=max(steps * 3 // 100, 1),
                   weight_decay=0.0, grad_clip=1.0, freeze=r"^visual\.")
    return c
