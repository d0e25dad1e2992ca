"""The `continuous` rollout engine: a shared prompt cache, attention over the live prefix and
continuous batching over a fixed pool of decode slots (docs/sampling.md#engines).

Shapes (P prompts, G = num_samples, R = P * G rows, S decode slots, L prompt length,
N = max_new_tokens, Nc = N - 1 rounded up to the attention block):
  prefill: the prompts run once -> a prompt cache `[layers, P, L, kv_heads, head_dim]` (one copy
    per prompt, never tiled) and each prompt's next-token logits [P, V]. Every row's first token
    is drawn from its prompt's logits with its own key.
  decode: one `lax.while_loop` over a pool of S slots with a completion cache
    `[layers, S, Nc, kv_heads, head_dim]`. Each slot holds one row (sample): it feeds the row's
    last token, attends to its prompt's keys and to the filled part of its own completion
    cache (live_attention.py), and draws the row's next token. When a row ends (an EOS id, or
    N tokens), its slot takes the next row still to decode, on the device, in the same
    iteration; the loop ends when no slot holds a row. Shapes are static throughout (the pool,
    the caches, the outputs); only the number of iterations and of attended blocks vary.
Row r's token i is drawn with the key `fold_in(fold_in(rng, r), i)`, whichever slot runs it,
so the output does not depend on the pool size or the mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from guard_jax.models.qwen2_5_vl.model import (
    ACT_BLE, CACHE_AXES, _attention_out_and_mlp, _cast, _project_qkv, mrope_cos_sin, rms_norm)
from guard_jax.sampling import cache as cache_lib
from guard_jax.sampling.distribution import choose
from guard_jax.sampling.live_attention import live_attention, pad_to_block
from guard_jax.sampling.sampler import (
    _OUTPUT_AXES, SampleOutput, Sampler, SamplingParams, prompt_pass)
from guard_jax.sharding import (
    SAMPLE_RULES, batch_shardings, param_shardings, shard_activation, use_rules)

BLOCK = 64  # keys per attention block (prompt and completion caches are multiples of it)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PromptCache:
    """k, v [layers, P, L, kv_heads, head_dim] (L padded to the block); mask [P, L] bool, real
    prompt tokens; position [P] int32, the M-RoPE position of each prompt's first new token."""

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    position: jax.Array


def prefill_prompts(model, batch: dict, params: SamplingParams, block: int):
    """-> (PromptCache, next-token logits [P, V] float32): one pass per prompt."""
    k, v, logits = prompt_pass(model, batch)
    c = cache_lib.from_prompt(k, v, batch["attention_mask"], batch["position_ids"], k.shape[2],
                              params.cache_dtype)
    pad = pad_to_block(k.shape[2], block) - k.shape[2]

    def padded(a):
        return shard_activation(jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0))),
                                CACHE_AXES)

    mask = jnp.pad(c.key_mask, ((0, 0), (0, pad)))  # the block padding is never attended to
    return PromptCache(padded(c.k), padded(c.v), mask, c.position), logits


def decode_layers(text, x, position_ids, prompts: PromptCache, prompt_of, ck, cv, fill, seen,
                  block: int):
    """One token per slot through the decoder (the layer code of `TextModel.decode_step`).

    x [S, 1, E]; position_ids (3, S, 1); ck, cv [layers, S, Nc, kv_heads, head_dim]; fill [S]:
    the completion-cache slot that takes this token's keys and values; seen [S]: completion
    keys each slot attends to (fill + 1, 0 for an idle slot). -> (hidden [S, 1, E], ck, cv)."""
    dtype = x.dtype
    cos, sin = mrope_cos_sin(position_ids, text.config, dtype)
    eps = text.config.text.rms_norm_eps
    slots = jnp.arange(x.shape[0])

    def layer(carry, xs):
        x, ck, cv = carry
        p, i = xs
        p = _cast(p, dtype)
        q, k, v = _project_qkv(rms_norm(x, p["input_norm"], eps), p, cos, sin)
        ck = shard_activation(ck.at[i, slots, fill].set(k[:, 0].astype(ck.dtype)), CACHE_AXES)
        cv = shard_activation(cv.at[i, slots, fill].set(v[:, 0].astype(cv.dtype)), CACHE_AXES)
        a = live_attention(q[:, 0], i, prompts.k, prompts.v, prompts.mask, prompt_of, ck, cv,
                           seen, block=block)
        return (_attention_out_and_mlp(x, a[:, None].astype(dtype), p, eps), ck, cv), None

    n = text.config.text.num_hidden_layers
    x = shard_activation(x, ACT_BLE)
    (x, ck, cv), _ = jax.lax.scan(layer, (x, ck, cv), (text.layers.arrays(), jnp.arange(n)))
    return rms_norm(x, text.norm[...], eps), ck, cv


def _row_key(rng, row, index):
    return jax.random.fold_in(jax.random.fold_in(rng, row), index)


def _choose_rows(pick, logits, keys):
    """pick for each row of logits [S, V] with its own key: (token, logprob, sampling_logprob)."""
    out = jax.vmap(lambda lg, k: pick(lg[None], k))(logits, keys)
    return tuple(a[:, 0] for a in out)


def _first_tokens(pick, logits, rng, g: int):
    """Each row's first token from its prompt's logits [P, V]: rows p*G .. p*G+G-1 draw with
    their own keys from prompt p's logits (prompt by prompt, never an [R, V] copy)."""
    p = logits.shape[0]

    def one(args):
        lg, rows = args
        keys = jax.vmap(lambda r: _row_key(rng, r, 0))(rows)
        return _choose_rows(pick, jnp.broadcast_to(lg, (g,) + lg.shape), keys)

    out = jax.lax.map(one, (logits, jnp.arange(p * g, dtype=jnp.int32).reshape(p, g)))
    return tuple(a.reshape(p * g) for a in out)


def rollout(model, batch: dict, rng, params: SamplingParams, *, slots: int,
            block: int = BLOCK, target_lengths=None) -> tuple[SampleOutput, jax.Array]:
    """Prefill + continuous decode in one pure function (trace it under `jit`; on a mesh inside
    `use_rules(mesh, SAMPLE_RULES)`). `slots`: the decode pool size S. `target_lengths` [R]
    (optional, for benchmarks): row r also ends after that many tokens. -> (SampleOutput, the
    completion-cache blocks the decode steps attended to, summed over steps)."""
    g, n = params.num_samples, params.max_new_tokens
    prompts, logits = prefill_prompts(model, batch, params, block)
    r = logits.shape[0] * g
    pick = functools.partial(choose, temperature=params.temperature, top_p=params.top_p,
                             top_k=params.top_k)
    eos = jnp.asarray(params.eos_token_ids, jnp.int32)
    token, lp, slp = _first_tokens(pick, logits, rng, g)
    finished = jnp.isin(token, eos)
    init = dict(tokens=jnp.full((r, n), params.pad_token_id, jnp.int32).at[:, 0].set(token),
                logprobs=jnp.zeros((r, n), jnp.float32).at[:, 0].set(lp),
                sampling_logprobs=jnp.zeros((r, n), jnp.float32).at[:, 0].set(slp),
                lengths=jnp.ones((r,), jnp.int32), finished=finished,
                step=jnp.asarray(0, jnp.int32), blocks=jnp.asarray(0, jnp.int32))
    limit = jnp.full((r,), n, jnp.int32)
    if target_lengths is not None:
        limit = jnp.clip(jnp.asarray(target_lengths, jnp.int32), 1, n)
    if n > 1:
        init = _decode(model, prompts, init, rng, params, pick, slots, block, limit)
    lengths = init["lengths"]
    return SampleOutput(tokens=init["tokens"], lengths=lengths,
                        completion_mask=jnp.arange(n)[None, :] < lengths[:, None],
                        logprobs=init["logprobs"], sampling_logprobs=init["sampling_logprobs"],
                        finished=init["finished"], steps=init["step"]), init["blocks"]


def _decode(model, prompts: PromptCache, out: dict, rng, params, pick, slots: int, block: int,
            limit):
    """The slot loop: `out` (tokens, log-probs, lengths, finished of every row, the first token
    in) -> the same with every row decoded; `limit` [R]: each row's most tokens."""
    g, n = params.num_samples, params.max_new_tokens
    r = out["tokens"].shape[0]
    eos = jnp.asarray(params.eos_token_ids, jnp.int32)
    # rows whose first token ended them need no slot; the others queue in row order
    ended = out["finished"] | (limit <= 1)
    queue = jnp.argsort(ended, stable=True).astype(jnp.int32)
    pending = r - jnp.sum(ended).astype(jnp.int32)
    layers, _, _, kvh, hd = prompts.k.shape
    shape = (layers, slots, pad_to_block(n - 1, block), kvh, hd)
    empty = shard_activation(jnp.zeros(shape, prompts.k.dtype), CACHE_AXES)
    idle = jnp.full((slots,), r, jnp.int32)  # slot -> row; r = no row
    zeros = jnp.zeros((slots,), jnp.int32)

    def refill(s):
        free = s["row"] >= r
        nxt = s["next"] + jnp.cumsum(free, dtype=jnp.int32) - 1
        take = free & (nxt < pending)
        new = queue[jnp.minimum(nxt, r - 1)]
        return dict(s, row=jnp.where(take, new, s["row"]), fill=jnp.where(take, 0, s["fill"]),
                    last=jnp.where(take, s["tokens"][new, 0], s["last"]),
                    next=s["next"] + jnp.sum(take, dtype=jnp.int32))

    def cond(s):
        return jnp.any(s["row"] < r)

    def body(s):
        active = s["row"] < r
        row = jnp.minimum(s["row"], r - 1)
        prompt = row // g
        fill = s["fill"]
        x = model.text.embed_tokens(s["last"][:, None])
        pos = jnp.broadcast_to((prompts.position[prompt] + fill)[None, :, None], (3, slots, 1))
        seen = jnp.where(active, fill + 1, 0)
        h, ck, cv = decode_layers(model.text, x, pos, prompts, prompt, s["ck"], s["cv"], fill,
                                  seen, block)
        logits = model.text.logits(h)[:, 0].astype(jnp.float32)
        col = fill + 1  # the index of the token drawn now
        keys = jax.vmap(functools.partial(_row_key, rng))(row, col)
        token, lp, slp = _choose_rows(pick, logits, keys)
        ends = jnp.isin(token, eos)
        where = jnp.where(active, s["row"], r)  # idle slots write nowhere (dropped)

        def put(buf, val):
            return buf.at[where, col].set(val.astype(buf.dtype), mode="drop")

        s = dict(s, ck=ck, cv=cv, tokens=put(s["tokens"], token),
                 logprobs=put(s["logprobs"], lp),
                 sampling_logprobs=put(s["sampling_logprobs"], slp),
                 lengths=s["lengths"].at[where].set(col + 1, mode="drop"),
                 finished=s["finished"].at[where].set(ends, mode="drop"),
                 row=jnp.where(active & (ends | (col + 1 >= limit[row])), r, s["row"]),
                 fill=jnp.where(active, col, 0), last=token, step=s["step"] + 1,
                 blocks=s["blocks"] + (jnp.max(seen) + block - 1) // block)
        return refill(s)

    s = refill(dict(out, ck=empty, cv=empty, row=idle, fill=zeros, last=zeros,
                    next=jnp.asarray(0, jnp.int32)))
    s = jax.lax.while_loop(cond, body, s)
    return {k: s[k] for k in out}


def default_slots(rows: int, mesh=None) -> int:
    """A quarter of the rows (finished rows hand their slots on, so the pool stays busy),
    rounded up to a multiple of the mesh's data x fsdp size, at most the rows."""
    shards = 1 if mesh is None else mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    quarter = -(-rows // 4)
    return min(rows, -(-quarter // shards) * shards)


class ContinuousEngine(Sampler):
    """`engine(state, batch, rng) -> SampleOutput` as `Sampler`, through `rollout` in one jit.
    slots: the decode pool (default `default_slots`); block: keys per attention block."""

    def __init__(self, graphdef, params: SamplingParams, *, mesh=None, rules=SAMPLE_RULES,
                 slots: int | None = None, block: int = BLOCK):
        super().__init__(graphdef, params, mesh=mesh, rules=rules)
        if slots is not None and slots < 1:
            raise ValueError(f"slots={slots}; must be >= 1")
        if block < 1:
            raise ValueError(f"block={block}; must be >= 1")
        self.slots, self.block = slots, block

    def pool_size(self, rows: int) -> int:
        return min(rows, self.slots) if self.slots else default_slots(rows, self.mesh)

    def _rollout(self, state, batch, rng, targets):
        rows = batch["input_ids"].shape[0] * self.params.num_samples
        return rollout(nnx.merge(self.graphdef, state), batch, rng, self.params,
                       slots=self.pool_size(rows), block=self.block, target_lengths=targets)

    def _compile(self, state, batch):
        fn = self._trace(self._rollout)
        with self._rules():
            cache = jax.eval_shape(lambda st, b: prefill_prompts(
                nnx.merge(self.graphdef, st), b, self.params, self.block), state, batch)[0]
        layers, _, _, kvh, hd = cache.k.shape
        self._token_bytes = 2 * layers * kvh * hd * cache.k.dtype.itemsize
        if self.mesh is None:
            return jax.jit(fn)
        r = batch["input_ids"].shape[0] * self.params.num_samples
        out_sh = SampleOutput(*(self._named(ax, (r, self.params.max_new_tokens)[:len(ax)])
                                for ax in _OUTPUT_AXES))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.jit(fn, in_shardings=(param_shardings(state, self.mesh, self.rules),
                                         batch_shardings(batch, self.mesh, self.rules),
                                         replicated, replicated),
                       out_shardings=(out_sh, replicated))

    def _rules(self):
        return contextlib.nullcontext() if self.mesh is None else use_rules(self.mesh, self.rules)

    def __call__(self, state, batch, rng, target_lengths=None) -> SampleOutput:
        """target_lengths [R] (optional, for benchmarks): row r also ends after that many
        tokens, as though an EOS came there."""
        rows = batch["input_ids"].shape[0] * self.params.num_samples
        n = self.params.max_new_tokens
        targets = jnp.full((rows,), n, jnp.int32) if target_lengths is None else target_lengths
        out, blocks = self.functions(state, batch)(state, batch, rng,
                                                   jnp.asarray(targets, jnp.int32))
        self.last_run = dict(rows=rows, prompt_slots=pad_to_block(batch["input_ids"].shape[1],
                                                                  self.block),
                             blocks=blocks, steps=out.steps)
        return out

    # -- what the caches hold and what a decode step reads (guard-jax bench rollout)
    def kv_cache_bytes(self, prompts: int, prompt_len: int, *, num_samples: int) -> int:
        """Keys + values of the prompt cache and the completion cache for `prompts` prompts of
        `prompt_len` tokens and G = num_samples (after a first call, which sizes a token)."""
        n = self.params.max_new_tokens
        completion = self.pool_size(prompts * num_samples) * pad_to_block(n - 1, self.block)
        return self._token_bytes * (prompts * pad_to_block(prompt_len, self.block)
                                    + (completion if n > 1 else 0))

    def kv_bytes_read_per_step(self, out=None) -> float:
        """Cache bytes one decode step of the last call read, on average: every slot its
        prompt's blocks (through its prompt index) and the live completion blocks."""
        run = self.last_run
        steps = max(int(run["steps"]), 1)
        slots = self.pool_size(run["rows"])
        live = int(run["blocks"]) / steps * self.block
        return self._token_bytes * slots * (run["prompt_slots"] + live)


__all__ = ["ContinuousEngine", "PromptCache", "rollout", "prefill_prompts", "decode_layers",
           "default_slots", "BLOCK"]
