"""`guard_jax.generate`: the host-side entry point of the sampler (see sampler.py)."""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from guard_jax.distributed import host_array
from guard_jax.sampling.engines import ENGINES
from guard_jax.sampling.sampler import Sampler, SampleOutput, SamplingParams
from guard_jax.sharding import SAMPLE_RULES


def check_left_padded(attention_mask) -> np.ndarray:
    """The mask as int32 [B, L]; an error naming the row unless every row is some padding
    followed by at least one real token (the sampler writes every row's next token to the
    same cache slot)."""
    mask = np.asarray(attention_mask)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be [batch, length]; got shape {mask.shape}")
    mask = mask.astype(np.int32)
    for i, row in enumerate(mask):
        if not row[-1]:
            what = "is all padding" if not row.any() else "ends with padding"
            raise ValueError(f"attention_mask row {i} {what}: generate needs prompts padded on "
                             "the LEFT (tokenizer padding_side='left') and at least one token")
        if (np.diff(row) < 0).any() or ((row != 0) & (row != 1)).any():
            raise ValueError(f"attention_mask row {i} is not left padding (zeros then ones): "
                             f"{row.tolist()}")
    return mask


@functools.lru_cache(maxsize=8)
def _cached_sampler(graphdef, params: SamplingParams, mesh, rules_items, engine: str,
                    slots: int):
    pool = {"slots": slots} if slots else {}
    return ENGINES[engine](graphdef, params, mesh=mesh, rules=dict(rules_items), **pool)


def sampler_for(graphdef, params: SamplingParams, mesh=None, rules=SAMPLE_RULES,
                engine: str = "static", slots: int = 0) -> Sampler:
    """The rollout engine (`engines.ENGINES[engine]`, with a decode pool of `slots` where it
    has one; 0: its default) `generate` uses for this graph and these settings (its
    compilations are kept across calls)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown rollout engine {engine!r}; known: {sorted(ENGINES)}")
    return _cached_sampler(graphdef, params, mesh, tuple(sorted(rules.items())), engine,
                           int(slots))


def _as_key(rng, temperature: float):
    if rng is None:
        if temperature > 0:
            raise ValueError(f"temperature={temperature} samples at random: pass "
                             "rng=jax.random.key(seed) (or an int seed)")
        return jax.random.key(0)  # greedy never draws from it
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    return rng


def generate(model, input_ids, *, attention_mask, pixel_values=None, image_grid_thw=None,
             pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None,
             max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_ids, rng=None, num_samples: int = 1, mesh=None,
             pad_token_id: int | None = None, rules=SAMPLE_RULES, engine: str = "static",
             slots: int = 0, return_output: bool = False):
    """New token ids [B * num_samples, max_new_tokens] (numpy int32), padded after the EOS.

    Arguments follow transformers' `generate` for Qwen2.5-VL: input_ids [B, L] LEFT-padded
    with attention_mask, pixel_values / image_grid_thw as the image processor makes them,
    pixel_values_videos / video_grid_thw / second_per_grid_ts as the video processor does.
    temperature 0 is greedy; top_k 0 and top_p 1 are off; eos_token_ids is one id or several
    (Qwen instruct models: `config.generation_eos_ids`), and each row stops at the first; the
    pad id is `config.generation_pad_id` unless given. num_samples = G rows per prompt,
    sample-major (rows p*G .. p*G+G-1 are prompt p's), from one prefill per prompt. rng: a
    jax key or int seed, required when temperature > 0. With a mesh the weights are placed by
    `rules` (default SAMPLE_RULES: split over `tensor` only) and the rows and the cache over
    data x fsdp. engine: the rollout engine (docs/sampling.md#engines; `continuous` pays off
    for many rows of uneven lengths; `slots`: its decode pool, 0 = its default).
    `return_output=True` returns the whole `SampleOutput` (lengths, log-probs)
    as numpy arrays instead of the tokens."""
    config = model.config
    mask = check_left_padded(attention_mask)
    params = SamplingParams(
        max_new_tokens=int(max_new_tokens), eos_token_ids=eos_token_ids,
        pad_token_id=config.generation_pad_id if pad_token_id is None else int(pad_token_id),
        temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
        num_samples=int(num_samples))
    key = _as_key(rng, params.temperature)
    batch = model.prepare_inputs(input_ids, attention_mask=mask, pixel_values=pixel_values,
                                 image_grid_thw=image_grid_thw,
                                 pixel_values_videos=pixel_values_videos,
                                 video_grid_thw=video_grid_thw,
                                 second_per_grid_ts=second_per_grid_ts)
    graphdef, state = nnx.split(model)
    sampler = sampler_for(graphdef, params, mesh, rules, engine, slots)
    state = sampler.place_state(state)
    if mesh is None:
        batch = jax.device_put(batch)
    else:
        from guard_jax.sharding import batch_shardings, put_batch
        batch = put_batch(batch, batch_shardings(batch, mesh, rules))
    out = sampler(state, batch, key)
    if not return_output:
        return host_array(out.tokens)
    return SampleOutput(*(host_array(a) for a in out))


__all__ = ["generate", "check_left_padded", "sampler_for"]
