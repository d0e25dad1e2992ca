"""`bench grpo-step --lengths guard` on the TRL side: `force_lengths` makes transformers'
`generate` (what TRL's GRPOTrainer calls) end every row after exactly its target length, by
sampling, on a tiny Qwen2.5-VL with random weights; our side passes the same targets to the
engine (tests/test_rollout_engine.py covers the engine's target lengths)."""

from __future__ import annotations

import numpy as np
import torch

from guard_jax.bench.grpo_step_bench import force_lengths
from guard_jax.bench.rollout_bench import target_lengths
from guard_jax.models.qwen2_5_vl.config import tiny
from hf_reference import build_hf_model


def test_generate_ends_each_row_at_its_target():
    c = tiny()
    model = build_hf_model(c)
    n, eos = 12, [7, 9]
    targets = [int(t) for t in target_lengths(6, n, "guard", median=3)]
    assert len(set(targets)) >= 3 and max(targets) == n
    force_lengths(model, targets, eos)
    torch.manual_seed(0)
    ids = torch.randint(10, 200, (6, 5))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                         temperature=1.0, max_new_tokens=n, eos_token_id=eos, pad_token_id=0)
    completion = out[:, 5:].numpy()
    for row, want in zip(completion, targets):
        ends = np.flatnonzero(np.isin(row, eos))
        assert ends.size and ends[0] + 1 == want, (row, want)
