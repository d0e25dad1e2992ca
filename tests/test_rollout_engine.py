"""The `continuous` rollout engine against the static sampler (the reference, itself checked
token for token against transformers in test_generate.py).

Greedy output must equal the static engine's in every field (text with left padding and
several EOS ids firing at different steps, a left-padded batch of two images, G > 1, fewer decode
slots than rows so finished rows hand their slots on); sampled first tokens follow the softmax;
a row's draws do not depend on the pool size or the mesh; the attention reads no completion
block past the longest fill. Small attention blocks (4 keys) so that prompts and completions
span several blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from guard_jax.models.qwen2_5_vl import init_model
from guard_jax.models.qwen2_5_vl.config import tiny
from guard_jax.sampling import engines
from guard_jax.sampling.continuous import (
    ContinuousEngine, own_pages, pool_sizes, prefill_prompts, resolve_kernel)
from guard_jax.sampling.paged_attention import kernel_for, paged_attention
from guard_jax.sampling.sampler import SampleOutput, Sampler, SamplingParams
from guard_jax.sharding import SAMPLE_RULES, batch_shardings, make_mesh, put_batch
from hf_reference import image_tokens, left_pad, random_image_inputs
from test_generate import GRIDS, assert_frequencies
from test_grpo import _metrics, _params, _run_config, _train, task  # noqa: F401 (a fixture)

N = 8
PAGE = 4


@pytest.fixture(scope="module")
def model():
    return init_model(tiny(), seed=0)


def run(engine, model, inputs, params, rng=0, mesh=None, **kw) -> SampleOutput:
    """One call of `engine` (a class of ENGINES) on host inputs -> numpy SampleOutput."""
    host = model.prepare_inputs(**inputs)
    graphdef, state = nnx.split(model)
    eng = engine(graphdef, params, mesh=mesh, **kw)
    state = eng.place_state(state)
    batch = (jax.device_put(host) if mesh is None
             else put_batch(host, batch_shardings(host, mesh, SAMPLE_RULES)))
    out = eng(state, batch, jax.random.key(rng))
    return SampleOutput(*(np.asarray(a) for a in out))


def assert_same(got: SampleOutput, want: SampleOutput):
    for name in ("tokens", "lengths", "completion_mask", "finished"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
    np.testing.assert_allclose(got.sampling_logprobs, want.sampling_logprobs, atol=1e-5)


def text_inputs(c, lengths=(11, 6, 9, 3), seed=0):
    rng = np.random.default_rng(seed)
    ids, mask = left_pad([rng.integers(2, 248, n).tolist() for n in lengths],
                         c.generation_pad_id)
    return dict(input_ids=ids, attention_mask=mask)


def stopping_eos(free, n_ids=3):
    """EOS ids taken from a free-running greedy output [rows, N] so that rows stop at
    different steps: the token at column 1 + 2 * i of row i, for the first rows."""
    eos = []
    for i in range(n_ids):
        t = int(free[i, 1 + 2 * i])
        if t not in eos and t != free[i, 0]:
            eos.append(t)
    return tuple(eos)


# ---------------------------------------------------------------------------- greedy parity
def test_greedy_text_equals_static_with_refills(model):
    """4 left-padded prompts x G 3 = 12 rows through 4 slots: rows end at different steps
    (three EOS ids), slots are refilled, and every output field equals the static engine's."""
    c = model.config
    inputs = text_inputs(c)
    free = run(Sampler, model, inputs, SamplingParams(N, (255,), c.generation_pad_id)).tokens
    eos = stopping_eos(free)
    params = SamplingParams(N, eos, c.generation_pad_id, num_samples=3)
    want = run(Sampler, model, inputs, params)
    lengths = set(want.lengths.tolist())
    assert len(lengths) >= 3 and N in lengths and min(lengths) < N, want.lengths
    got = run(ContinuousEngine, model, inputs, params, slots=4, page=PAGE)
    assert_same(got, want)
    # 4 slots ran the 12 rows' decode steps (lengths - 1 each) with little idling
    useful = int((want.lengths - 1).sum())
    assert useful / 4 <= int(got.steps) <= useful / 4 + N, (got.steps, useful)
    # `guard_jax.generate(..., engine=...)`, eval's entry point, runs the same engine
    from guard_jax import generate
    kw = dict(max_new_tokens=N, eos_token_ids=eos, num_samples=3, return_output=True)
    again = generate(model, inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     engine="continuous", slots=4, **kw)
    assert_same(SampleOutput(*again), want)
    with pytest.raises(ValueError, match="unknown rollout engine 'paged'"):
        generate(model, inputs["input_ids"], attention_mask=inputs["attention_mask"],
                 engine="paged", **kw)


def test_greedy_images_equals_static(model):
    """Two images of different sizes, left padded, G = 2 through 3 slots."""
    c = model.config
    pv, grid = random_image_inputs(c, GRIDS, seed=3)
    ids, mask = left_pad([[3, 4] + image_tokens(c, GRIDS[0]) + [5, 6, 7],
                          [8] + image_tokens(c, GRIDS[1]) + [9, 10]], c.generation_pad_id)
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid)
    free = run(Sampler, model, inputs, SamplingParams(N, (255,), c.generation_pad_id)).tokens
    params = SamplingParams(N, (int(free[0, 3]),), c.generation_pad_id, num_samples=2)
    want = run(Sampler, model, inputs, params)
    assert want.lengths.tolist()[:2] == [4, 4] and want.lengths[2] == N, want.lengths
    assert_same(run(ContinuousEngine, model, inputs, params, slots=3, page=PAGE), want)


def test_target_lengths_end_rows_and_size_the_reads(model):
    """Rows also end at given target lengths (the bench's forced guard lengths); the tokens up
    to there are the free run's. The cache figures count one prompt copy per prompt."""
    c = model.config
    inputs = text_inputs(c)
    params = SamplingParams(N, (255,), c.generation_pad_id, num_samples=2)
    graphdef, state = nnx.split(model)
    eng = ContinuousEngine(graphdef, params, slots=3, page=PAGE, shrinks=0)
    batch = jax.device_put(model.prepare_inputs(**inputs))
    free = SampleOutput(*(np.asarray(a) for a in eng(state, batch, jax.random.key(0))))
    targets = np.asarray([1, 8, 2, 3, 8, 5, 1, 1], np.int32)
    out = SampleOutput(*(np.asarray(a) for a in eng(state, batch, jax.random.key(0),
                                                     target_lengths=targets)))
    np.testing.assert_array_equal(out.lengths, targets)
    assert not out.finished.any()
    keep = out.completion_mask
    np.testing.assert_array_equal(out.tokens[keep], free.tokens[keep])
    assert (out.tokens[~keep] == c.generation_pad_id).all()
    # 21 decode steps of work (targets - 1) for a fixed pool of 3 slots: 8 iterations, the
    # longest row's 7 and one behind it
    assert int(out.steps) == 8 and eng.row_steps() == 3 * 8
    t = c.text
    token = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * 4
    # 4 prompts of 3 pages (11 tokens) + 3 slots x own_pages(8, 4) = 3 pages, of 4 keys
    assert own_pages(N, PAGE) == 3
    assert eng.kv_cache_bytes(4, 11, num_samples=2) == token * PAGE * (4 * 3 + 3 * 3)
    # a step reads every slot's blocks up to the longest row's keys: prompt 0's 11 + 1 at the
    # first step (3 blocks), 11 + 7 at the last (5 blocks)
    read = eng.kv_bytes_read_per_step()
    assert token * 3 * 12 < read < token * 3 * 20, read


def schedule(work, slots, shrinks):
    """A host model of the decode pool: rows (decode steps each, in queue order) through
    `slots`, the pool moving to its next size once the rows left fit in it -> (steps,
    slot-steps)."""
    sizes = pool_sizes(slots, shrinks)
    queue, live, steps, slot_steps, size = [w for w in work if w > 0], [], 0, 0, 0
    for size, smaller in zip(sizes, sizes[1:] + [0]):
        while len(live) + len(queue) > smaller:
            while len(live) < size and queue:
                live.append(queue.pop(0))
            steps, slot_steps = steps + 1, slot_steps + size
            live = [w - 1 for w in live if w > 1]
    return steps, slot_steps


def test_pool_shrinks_as_rows_run_out(model):
    """4 prompts x G 4 through 8 slots with one long row per prompt: the pool shrinks to 6, 4,
    3, 2 and 1 slots as the rows run out (the slot-steps of a host model of the schedule), and
    the output equals that of a pool that never shrinks."""
    c = model.config
    inputs = text_inputs(c)
    params = SamplingParams(N, (255,), c.generation_pad_id, num_samples=4)
    graphdef, state = nnx.split(model)
    batch = jax.device_put(model.prepare_inputs(**inputs))
    targets = np.asarray([8, 2, 1, 3] * 2 + [2, 8, 2, 2] * 2, np.int32)
    assert pool_sizes(8, 7) == [8, 6, 4, 3, 2, 1] and pool_sizes(8, 2) == [8, 6, 4]
    assert pool_sizes(64, 7, shards=4) == [64, 48, 36, 24, 16, 12, 8, 4]
    assert pool_sizes(4, 7, shards=4) == [4]
    outs = {}
    for shrinks in (0, 7):
        eng = ContinuousEngine(graphdef, params, slots=8, page=PAGE, shrinks=shrinks)
        out = SampleOutput(*(np.asarray(a) for a in eng(state, batch, jax.random.key(0),
                                                         target_lengths=targets)))
        outs[shrinks] = out
        steps, slot_steps = schedule((targets - 1).tolist(), 8, shrinks)
        assert (int(out.steps), eng.row_steps()) == (steps, slot_steps), shrinks
    assert_same(outs[7], outs[0])
    fixed, shrunk = (schedule((targets - 1).tolist(), 8, h)[1] for h in (0, 7))
    assert shrunk < fixed * 0.8, (shrunk, fixed)


def test_prompt_pages_are_not_tiled(model):
    """The prefill keeps one copy of each prompt's keys and values, padding removed, in pages."""
    c = model.config
    host = model.prepare_inputs(**text_inputs(c))
    params = SamplingParams(N, (1,), c.generation_pad_id, num_samples=8)
    prompts, logits = jax.eval_shape(lambda b: prefill_prompts(model, b, params, PAGE), host)
    t = c.text
    assert prompts.k.shape == (t.num_hidden_layers, t.num_key_value_heads, 4 * 3, PAGE,
                               t.head_dim)
    assert prompts.length.shape == (4,) and logits.shape == (4, t.vocab_size)
    got = prefill_prompts(model, jax.device_put(host), params, PAGE)[0]
    np.testing.assert_array_equal(np.asarray(got.length), [11, 6, 9, 3])


def test_registered_by_name(model):
    graphdef = nnx.split(model)[0]
    params = SamplingParams(N, (1,), 0)
    assert isinstance(engines.make_engine("continuous", graphdef, params), ContinuousEngine)
    with pytest.raises(ValueError, match="unknown rollout engine 'paged'.*continuous"):
        engines.make_engine("paged", graphdef, params)


# ---------------------------------------------------------------------------- live prefix
@pytest.mark.parametrize("kernel", ["xla", "pallas_interpret"])
def test_paged_attention_reads_only_live_blocks(kernel):
    """Pages past the live blocks (the longest slot's length, rounded up to a block) hold NaN:
    a kernel that read them would return NaN. Inside, keys past a slot's length hold large
    values that would dominate an unmasked softmax. Through a shuffled page table the result
    equals a dense softmax over each slot's first `length` keys; an idle slot (length 0) is
    never read. The Pallas kernel (TPU interpret mode) reads keys and values in bfloat16, so
    they are bfloat16 values here."""
    rng = np.random.default_rng(0)
    s, kvh, g, d, page, width = 3, 2, 2, 8, 4, 4
    pages = s * width + 2
    k, v = (rng.standard_normal((kvh, pages, page, d)).astype(jnp.bfloat16).astype(np.float32)
            for _ in "kv")
    table = rng.permutation(pages)[:s * width].reshape(s, width).astype(np.int32)
    lengths = np.asarray([3, 7, 0], np.int32)  # the longest: 2 pages = 1 block of 2 pages
    for i, n in enumerate(lengths):
        for j in range(width):
            fill = 50.0 if j < 2 else np.nan
            k[:, table[i, j], max(0, n - j * page):] = fill
            v[:, table[i, j], max(0, n - j * page):] = fill
    q = rng.standard_normal((s, kvh * g, d)).astype(np.float32)
    got = np.asarray(jax.jit(lambda *a: paged_attention(*a, kernel=kernel, pages_per_block=2))(
        q, k, v, lengths, table))
    assert np.isfinite(got[:2]).all()
    for i in range(2):
        keys = k[:, table[i]].reshape(kvh, -1, d)[:, :lengths[i]]
        vals = v[:, table[i]].reshape(kvh, -1, d)[:, :lengths[i]]
        for h in range(kvh * g):
            sc = keys[h // g] @ q[i, h] / np.sqrt(d)
            w = np.exp(sc - sc.max())
            np.testing.assert_allclose(got[i, h], (w / w.sum()) @ vals[h // g], atol=1e-5)


def test_pallas_kernel_rollout_equals_static(model):
    """Decoding through the Pallas paged-attention kernel (TPU interpret mode): with a bfloat16
    cache (what the kernel reads) greedy rows equal the static engine's on the same model and
    cache dtype. `auto` picks the kernel where the model's attention is the Pallas one."""
    c = model.config
    assert kernel_for("splash_interpret", 128, 64) == "pallas_interpret"
    assert kernel_for("splash", 128, 64) == "pallas"
    assert kernel_for("splash", 16, 64) == "xla"  # Mosaic tiles head_dim by 128
    assert kernel_for("splash", 128, 8) == "xla"  # and a page by 16 (bfloat16)
    assert kernel_for("xla", 128, 64) == "xla"
    assert resolve_kernel("auto", model, PAGE) == "xla"
    with pytest.raises(ValueError, match="Pallas decode kernel cannot run this model: head_dim "
                       "16 is not a multiple of 128"):
        resolve_kernel("pallas", model, 16)
    inputs = text_inputs(c, lengths=(7, 3))
    params = SamplingParams(2, (255,), c.generation_pad_id, num_samples=2,
                            cache_dtype="bfloat16")
    want = run(Sampler, model, inputs, params)
    got = run(ContinuousEngine, model, inputs, params, slots=2, page=PAGE, shrinks=0,
              kernel="pallas_interpret")
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)


# ---------------------------------------------------------------------------- sampling
def test_first_token_frequencies_match_softmax(model):
    c = model.config
    ids = np.random.default_rng(0).integers(2, 248, (1, 9))
    temperature, g = 0.02, 4096
    logits = np.asarray(model(ids), np.float64)[0, -1]
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    assert 0.1 < p.max() < 0.7 and (p > 0.01).sum() >= 6, np.sort(p)[-8:]  # spread out
    params = SamplingParams(1, (c.eos_token_id,), c.generation_pad_id, temperature=temperature,
                            num_samples=g)
    out = run(ContinuousEngine, model, dict(input_ids=ids, attention_mask=np.ones_like(ids)),
              params, rng=7)
    first = out.tokens[:, 0]
    assert_frequencies(np.bincount(first, minlength=p.size) / g, p, g)
    np.testing.assert_allclose(out.logprobs[:, 0], np.log(p)[first], atol=2e-3)


@pytest.fixture(scope="module")
def sampled(model):
    """A sampled run (T 1.5, top-k 50) of 4 prompts x G 4 through 16 slots (no refills)."""
    c = model.config
    params = SamplingParams(N, (3, 7, 11, 19, 23), c.generation_pad_id, temperature=1.5,
                            top_k=50, num_samples=4)
    inputs = text_inputs(c, seed=1)
    return inputs, params, run(ContinuousEngine, model, inputs, params, rng=3, slots=16,
                               page=PAGE)


def test_sampled_rows_do_not_depend_on_the_pool(model, sampled):
    """Each row draws with its own keys, so 3 slots (many refills) give the 16-slot output."""
    inputs, params, wide = sampled
    assert len(set(wide.lengths.tolist())) >= 3, wide.lengths  # rows end at different steps
    assert len({tuple(r) for r in wide.tokens}) == 16  # the G samples of a prompt differ
    assert_same(run(ContinuousEngine, model, inputs, params, rng=3, slots=3, page=PAGE), wide)


def test_sharded_equals_unsharded(model, sampled):
    """data 2 x fsdp 2 x tensor 2 fake devices: slots and prompts split over data x fsdp, heads
    over tensor."""
    inputs, params, plain = sampled
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    got = run(ContinuousEngine, model, inputs, params, rng=3, mesh=mesh, page=PAGE)
    assert_same(got, plain)


def test_pool_and_block_are_checked(model):
    graphdef = nnx.split(model)[0]
    params = SamplingParams(N, (1,), 0)
    with pytest.raises(ValueError, match="slots=0"):
        ContinuousEngine(graphdef, params, slots=0)
    assert ContinuousEngine(graphdef, params).pool_size(12) == 6
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert ContinuousEngine(graphdef, params, mesh=mesh).pool_size(10) == 8
    assert ContinuousEngine(graphdef, params, mesh=mesh).pool_size(40) == 20
    with pytest.raises(ValueError, match="slots=4: the static engine"):
        engines.make_engine("static", graphdef, params, slots=4)
    assert engines.make_engine("continuous", graphdef, params, slots=4).pool_size(40) == 4


# ---------------------------------------------------------------------------- GRPO, TPU
def test_grpo_step_with_continuous_equals_static(task, tmp_path):  # noqa: F811
    """One GRPO step (2 prompts x G 4 through the default 2 slots, 16 new tokens) with top_k 1,
    where both engines draw the argmax: the same rollouts, rewards, loss and parameters. The
    continuous run also projects only the filled positions (grpo.compact_head), the static
    one all of them."""
    runs = {}
    for engine in ("static", "continuous"):
        _train(task, tmp_path / engine, **{"train.steps": 1, "train.checkpoint_every": 1,
                                           "grpo.top_k": 1, "grpo.rollout_engine": engine,
                                           "grpo.compact_head": engine == "continuous"})
        runs[engine] = _metrics(tmp_path / engine)[0], _params(tmp_path / engine, 1)
    (want, want_p), (got, got_p) = runs["static"], runs["continuous"]
    for key in ("reward/total/mean", "reward/total/std", "response_length/mean",
                "response_length/clip_ratio", "loss", "actor/entropy", "grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert want_p.keys() == got_p.keys()
    for k in want_p:
        np.testing.assert_allclose(got_p[k], want_p[k], atol=1e-6, err_msg=k)


def test_grpo_engine_knobs_are_checked(task):  # noqa: F811
    from guard_jax.errors import InputError
    with pytest.raises(InputError, match=r"grpo.rollout_engine='paged'; choose one of \('static', "
                       r"'continuous'\)"):
        _run_config(task, **{"grpo.rollout_engine": "paged"})
    with pytest.raises(InputError, match="grpo.rollout_slots=4 must be >= 0, and 0 with "
                       "rollout_engine='static'"):
        _run_config(task, **{"grpo.rollout_slots": 4})
    run = _run_config(task, **{"grpo.rollout_slots": 4, "grpo.rollout_engine": "continuous"})
    assert run.grpo.rollout_slots == 4


def test_pallas_decode_kernel_compiles_for_tpu():
    """The engine with the Pallas paged-attention kernel compiles for a v5p 2x2x1 topology
    (4 devices: data 2 x tensor 2) with the TPU compiler on this CPU host: a model whose
    head_dim (128) and pages (64 keys) tile for Mosaic, bfloat16, 2 prompts x G 4 through 4
    slots, compiled as `guard-jax plan` compiles a GRPO run's rollout. The kernel (a Mosaic
    custom call) runs under shard_map: slots over data, KV heads over tensor."""
    import dataclasses

    from guard_jax import aot
    from guard_jax.models.qwen2_5_vl import abstract_model

    t = tiny().text
    c = tiny().replace(text=dataclasses.replace(t, hidden_size=256, num_attention_heads=2,
                                                num_key_value_heads=2, intermediate_size=256,
                                                mrope_section=(16, 24, 24)),
                       vision=dataclasses.replace(tiny().vision, out_hidden_size=256),
                       attention_impl="auto", dtype="bfloat16", param_dtype="bfloat16")
    assert c.text.head_dim == 128
    devices = aot.tpu_devices(aot.parse_tpu_target("v5p-8"))
    mesh = make_mesh({"data": len(devices) // 2, "fsdp": 1, "tensor": 2}, devices=devices)
    graphdef, params = nnx.split(abstract_model(c), nnx.Param)
    engine = ContinuousEngine(graphdef, SamplingParams(64, (1,), 0, num_samples=4), mesh=mesh,
                              slots=4)
    fields = {"input_ids": jax.ShapeDtypeStruct((2, 128), np.int32),
              "attention_mask": jax.ShapeDtypeStruct((2, 128), np.int32),
              "position_ids": jax.ShapeDtypeStruct((3, 2, 128), np.int32)}
    cache = jax.config.jax_enable_compilation_cache  # a TPU executable cannot be cached here
    jax.config.update("jax_enable_compilation_cache", False)
    try:  # through the planner's path for a one-program engine (`guard-jax plan`)
        (got,) = aot._sampler_programs("rollout", engine, params, fields, mesh)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    assert got.name == "rollout continuous" and got.error is None
    assert got.custom_calls >= 1 and got.peak > 0 and got.flops > 0
