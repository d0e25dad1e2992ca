"""The KV-cache sampler against transformers' `generate` (torch, float32, same random weights).

Greedy outputs must equal transformers' token for token: text with left padding and two EOS
ids that fire early at different steps, and a left-padded batch of two differently sized
images tiled into G samples per prompt. Sampling is checked statistically against the softmax
of transformers' logits; a sharded run on the 8 fake devices against the unsharded one.
Each distinct shape or setting costs a compilation (a few seconds), so the cases share them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P

import guard_jax
import hf_reference as H
from guard_jax.models.qwen2_5_vl.config import tiny
from guard_jax.sampling import distribution
from guard_jax.sampling.generate import sampler_for
from guard_jax.sampling.sampler import SamplingParams
from guard_jax.sharding import SAMPLE_RULES, batch_shardings, make_mesh, put_batch
from hf_reference import left_pad

N = 8  # max_new_tokens
GRIDS = [[1, 6, 10], [1, 4, 4]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    c = tiny()
    hf = H.build_hf_model(c, seed=0)
    d = H.save_hf_reference(hf, tmp_path_factory.mktemp("gen"))
    return c, hf, guard_jax.load_hf(d, dtype="float32", progress=False)


def hf_generate(hf, c, ids, mask, *, eos, pv=None, grid=None, n=N):
    """transformers' greedy generate -> new tokens [B, n], padded with the pad id past the
    point where every row had stopped (transformers returns fewer columns then)."""
    t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    kw = {}
    if pv is not None:
        kw = dict(pixel_values=torch.as_tensor(pv), image_grid_thw=torch.as_tensor(grid),
                  mm_token_type_ids=(t == c.image_token_id).long())
    hf.model.rope_deltas = None
    with torch.no_grad():
        out = hf.generate(input_ids=t, attention_mask=torch.as_tensor(np.asarray(mask)),
                          max_new_tokens=n, do_sample=False, eos_token_id=list(eos),
                          pad_token_id=c.generation_pad_id, **kw)
    new = out[:, t.shape[1]:].numpy()
    return np.pad(new, ((0, 0), (0, n - new.shape[1])), constant_values=c.generation_pad_id)


def first_stop(row, eos) -> int:
    hits = [i for i, t in enumerate(row) if t in eos]
    return hits[0] + 1 if hits else len(row)


def image_batch(c):
    pv, grid = H.random_image_inputs(c, GRIDS, seed=3)
    prompts = [[3, 4] + H.image_tokens(c, GRIDS[0]) + [5, 6, 7],
               [8] + H.image_tokens(c, GRIDS[1]) + [9, 10]]
    ids, mask = left_pad(prompts, c.generation_pad_id)
    return prompts, ids, mask, pv, grid


# ---------------------------------------------------------------------------- greedy parity
def test_greedy_text_left_padded_two_eos_early(pair):
    c, hf, ours = pair
    rng = np.random.default_rng(0)
    ids, mask = left_pad([rng.integers(2, 248, 11).tolist(), rng.integers(2, 248, 6).tolist()],
                         c.generation_pad_id)
    free = hf_generate(hf, c, ids, mask, eos=(c.eos_token_id,))
    # two EOS ids taken from the free-running output: row 0 stops at its 3rd token, row 1 at
    # the first token that row 0 has not produced by then and that comes later in row 1
    eos = [int(free[0, 2])]
    eos.append(next(int(t) for t in free[1, 4:] if t not in free[0, :3] and t not in free[1, :4]))
    want = hf_generate(hf, c, ids, mask, eos=eos)
    stops = [first_stop(r, eos) for r in free]
    assert stops[0] == 3 and 3 < stops[1] < N, (free, eos)
    assert (want[0, 3:] == c.generation_pad_id).all()

    out = guard_jax.generate(ours, ids, attention_mask=mask, max_new_tokens=N,
                             eos_token_ids=eos, return_output=True)
    np.testing.assert_array_equal(out.tokens, want)
    np.testing.assert_array_equal(out.lengths, stops)
    assert out.finished.all()
    # the loop stopped once both rows had finished, not after N - 1 steps
    assert int(out.steps) == max(stops) - 1 < N - 1
    np.testing.assert_array_equal(out.completion_mask, np.arange(N)[None] < out.lengths[:, None])
    assert (out.logprobs[out.completion_mask] < 0).all()
    assert (out.logprobs[~out.completion_mask] == 0).all()


@pytest.fixture(scope="module")
def image_run(pair):
    """A left-padded batch with two images of different sizes, greedy, G = 2 samples per
    prompt: (prompts, inputs, transformers' output [2, N], ours [4, N])."""
    c, hf, ours = pair
    prompts, ids, mask, pv, grid = image_batch(c)
    kw = dict(attention_mask=mask, pixel_values=pv, image_grid_thw=grid)
    want = hf_generate(hf, c, ids, mask, eos=c.generation_eos_ids, pv=pv, grid=grid)
    got = guard_jax.generate(ours, ids, max_new_tokens=N, eos_token_ids=c.generation_eos_ids,
                             num_samples=2, **kw)
    return prompts, dict(input_ids=ids, **kw), want, got


def test_greedy_images_tiled_samples(pair, image_run):
    """Every row of the G = 2 tiling equals transformers' batch output and each prompt run on
    its own (unpadded, by both libraries)."""
    c, hf, ours = pair
    prompts, inputs, want, got = image_run
    assert got.shape == (4, N) and got.dtype == np.int32
    np.testing.assert_array_equal(got, np.repeat(want, 2, axis=0))

    # prompt 1 (padded in the batch) alone: its image's patches only
    n0 = int(np.prod(GRIDS[0]))
    pv, grid = inputs["pixel_values"][n0:], inputs["image_grid_thw"][1:]
    alone = np.asarray([prompts[1]])
    one_mask = np.ones_like(alone)
    eos = c.generation_eos_ids
    ref = hf_generate(hf, c, alone, one_mask, eos=eos, pv=pv, grid=grid)
    mine = guard_jax.generate(ours, alone, attention_mask=one_mask, pixel_values=pv,
                              image_grid_thw=grid, max_new_tokens=N, eos_token_ids=eos)
    np.testing.assert_array_equal(ref[0], want[1])
    np.testing.assert_array_equal(mine[0], want[1])


def test_sharded_equals_unsharded(pair, image_run):
    """The same run on a data 2 x fsdp 2 x tensor 2 mesh of the 8 fake devices: the 4 rows
    and the cache split over data x fsdp, heads over tensor, weights placed by SAMPLE_RULES."""
    c, _, ours = pair
    _, inputs, _, plain = image_run
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    out = guard_jax.generate(ours, max_new_tokens=N, eos_token_ids=c.generation_eos_ids,
                             num_samples=2, mesh=mesh, return_output=True, **inputs)
    np.testing.assert_array_equal(out.tokens, plain)
    assert np.isfinite(out.logprobs).all() and (out.logprobs[:, 0] < 0).all()

    # the compiled prefill generate used (a cache hit): where its cache and batch live
    params = SamplingParams(N, c.generation_eos_ids, c.generation_pad_id, num_samples=2)
    graphdef, state = nnx.split(ours)
    sampler = sampler_for(graphdef, params, mesh)
    state = sampler.place_state(state)
    host = ours.prepare_inputs(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               pixel_values=inputs["pixel_values"],
                               image_grid_thw=inputs["image_grid_thw"])
    batch = put_batch(host, batch_shardings(host, mesh, SAMPLE_RULES))
    prefill_fn, _ = sampler.functions(state, batch)
    cache, _ = prefill_fn(state, batch)
    assert cache.k.shape == (2, 4, batch["input_ids"].shape[1] + N, 2, 16)
    assert cache.k.sharding.spec == P(None, ("data", "fsdp"), None, "tensor")
    assert state["text"]["layers"]["q"].sharding.spec == P(None, None, "tensor")


# ---------------------------------------------------------------------------- sampling
def assert_frequencies(freq, p, n):
    """Observed frequencies of n draws against probabilities p: within 5 standard errors for
    every token expected at least 5 times, and the rare tokens' total mass likewise."""
    common = p * n >= 5
    z = np.abs(freq - p)[common] / np.sqrt(p * (1 - p) / n)[common]
    assert z.max() < 5, (z.max(), np.flatnonzero(common)[np.argmax(z)])
    rare_p, rare_f = p[~common].sum(), freq[~common].sum()
    assert abs(rare_f - rare_p) < 5 * np.sqrt(rare_p / n) + 2 / n, (rare_f, rare_p)
    assert np.abs(freq - p).sum() < 0.1  # total variation, twice


def test_first_token_frequencies_match_softmax(pair):
    c, hf, ours = pair
    ids = np.random.default_rng(0).integers(2, 248, (1, 9))
    temperature, g = 0.05, 4096
    logits = H.hf_logits(hf, ids)[0, -1].astype(np.float64)
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    assert 0.2 < p.max() < 0.6 and (p > 0.01).sum() >= 8  # a spread-out target
    out = guard_jax.generate(ours, ids, attention_mask=np.ones_like(ids), max_new_tokens=1,
                             temperature=temperature, eos_token_ids=[c.eos_token_id],
                             rng=7, num_samples=g, return_output=True)
    first = out.tokens[:, 0]
    freq = np.bincount(first, minlength=p.size) / g
    assert_frequencies(freq, p, g)
    # the recorded log-probs are those of the tempered softmax
    logp = np.log(p)
    np.testing.assert_allclose(out.logprobs[:, 0], logp[first], atol=2e-3)
    np.testing.assert_allclose(out.sampling_logprobs[:, 0], out.logprobs[:, 0], atol=1e-5)


# (T, top_k, top_p); temperature alone is checked end to end above
SETTINGS = [(0.7, 4, 1.0), (1.3, 0, 0.7), (1.0, 6, 0.8)]


@pytest.fixture(scope="module")
def synthetic_draws():
    """20,000 draws from 12 fixed logits under every setting, in one compilation:
    {setting: (base logits, token, logprob, sampling_logprob, dense truncated logits)}."""
    import jax

    base = np.random.default_rng(3).standard_normal(12).astype(np.float32) * 0.8
    logits = np.tile(base, (20000, 1))

    @jax.jit
    def run(x, key):
        return [(distribution.choose(x, key, temperature=t, top_k=k, top_p=p),
                 distribution.truncated_logits(x[:1], temperature=t, top_k=k, top_p=p)[0])
                for t, k, p in SETTINGS]

    outs = run(logits, jax.random.key(0))
    return {s: (base,) + tuple(np.asarray(a) for a in draws) + (np.asarray(dense),)
            for s, (draws, dense) in zip(SETTINGS, outs)}


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_truncation_and_frequencies(synthetic_draws, setting):
    temperature, top_k, top_p = setting
    base, token, logprob, sampling_logprob, dense = synthetic_draws[setting]
    # the target, computed here in float64 from the definitions
    x = base.astype(np.float64) / temperature
    order = np.argsort(-x)
    keep = np.zeros(x.size, bool)
    keep[order[:top_k or x.size]] = True
    q = np.where(keep, np.exp(x - x.max()), 0)
    q /= q.sum()
    if top_p < 1:
        qs = q[order]
        nucleus = (np.cumsum(qs) - qs) < top_p
        keep[order[~nucleus]] = False
        q = np.where(keep, q, 0)
        q /= q.sum()
    assert 1 < keep.sum() < x.size
    freq = np.bincount(token, minlength=x.size) / len(token)
    assert (freq[~keep] == 0).all(), "a truncated token was sampled"
    assert_frequencies(freq, q, len(token))
    np.testing.assert_array_equal(np.isfinite(dense), keep)
    full = x - np.log(np.exp(x - x.max()).sum()) - x.max()
    np.testing.assert_allclose(logprob, full[token], atol=1e-5)
    np.testing.assert_allclose(sampling_logprob, np.log(q[token]), atol=1e-5)


# ---------------------------------------------------------------------------- errors
def test_bad_inputs_are_named(pair):
    c, _, ours = pair
    ids = np.asarray([[5, 6, 7], [8, 9, 10]])
    right = np.asarray([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="row 1 ends with padding.*LEFT"):
        guard_jax.generate(ours, ids, attention_mask=right, max_new_tokens=2, eos_token_ids=1)
    holes = np.asarray([[1, 1, 1], [1, 0, 1]])
    with pytest.raises(ValueError, match="row 1 is not left padding"):
        guard_jax.generate(ours, ids, attention_mask=holes, max_new_tokens=2, eos_token_ids=1)
    ones = np.ones_like(ids)
    with pytest.raises(ValueError, match="pass rng"):
        guard_jax.generate(ours, ids, attention_mask=ones, max_new_tokens=2, eos_token_ids=1,
                           temperature=0.5)
    with pytest.raises(ValueError, match="max_new_tokens=0.*top_p=0.0"):
        guard_jax.generate(ours, ids, attention_mask=ones, max_new_tokens=0, eos_token_ids=1,
                           top_p=0.0)


def test_inverse_cdf_draws_across_blocks():
    """`distribution.sample` over a vocabulary of 1,300 (blocks of 512: the last one partial):
    20,000 draws follow the softmax, tokens at -inf (a whole block among them) are never drawn,
    and a row whose only token of positive mass sits in the partial block always draws it."""
    import jax

    rng = np.random.default_rng(5)
    v, n = 1300, 20000
    base = (rng.standard_normal(v) * 3.0).astype(np.float32)
    base[512:1024] = -np.inf          # the middle block excluded
    base[rng.choice(512, 40, replace=False)] = -np.inf
    only = np.full(v, -np.inf, np.float32)
    only[1290] = 0.0
    draws = np.asarray(jax.jit(distribution.sample)(np.stack([base] * n + [only]),
                                                    jax.random.key(1)))
    assert draws[-1] == 1290
    freq = np.bincount(draws[:-1], minlength=v) / n
    p = np.exp(base.astype(np.float64) - base.max())
    p /= p.sum()
    assert (freq[~np.isfinite(base)] == 0).all()
    assert_frequencies(freq, p, n)
