"""Tiny SFT on the CPU: the architecture of the parity tests, random init, any number of devices
(all of them on fsdp, so one CPU device is enough).

Run on a `guard-jax demo` workdir DEMO (its data, tokenizer and initial model):
    guard-jax train --config configs/tiny_sft.py --workdir /tmp/tiny_sft \
        --config.model.hf_dir=DEMO/init_hf --config.data.tokenizer_dir=DEMO/tokenizer \
        --config.data.path=DEMO/data/train --config.train.steps=20
or on any `guard-jax data build` output DATA with a Qwen2.5-VL tokenizer directory TOK:
    guard-jax train --config configs/tiny_sft.py --workdir /tmp/tiny_sft \
        --config.model.preset=tiny_qwen --config.data.path=DATA --config.data.tokenizer_dir=TOK
(`tiny_qwen` has the real Qwen ids; the default `tiny` preset's 256-token vocabulary suits the
parity tests only.) seq_len 512 holds the demo's samples in this recipe (459 tokens with the
demo's small tokenizer, about 210 with Qwen's).
Plan:  guard-jax plan --config configs/tiny_sft.py --target h100x8 --compiled
Expect: a few MiB per device; the assistant-token loss falls within tens of steps (tests/test_sft.py
runs this config end to end, with checkpoints, resume, kill -9 and SIGTERM; tests/test_tiny_sft.py
runs the demo command above on one CPU device).
"""

from guard_jax.run_config import base_config


def get_config():
    c = base_config()
    c.trainer = "sft"
    c.model.preset = "tiny"
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.data.seq_len = 512
    c.data.images_per_sample = 1
    c.data.max_pixels = 112 * 112
    c.train.global_batch = 8
    c.train.micro_batch = 8
    c.optim.lr = 1e-3
    return c
