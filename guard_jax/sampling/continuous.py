"""The `continuous` rollout engine: a paged KV cache whose prompt pages the G samples of a prompt
share, attention over the live prefix, and continuous batching over a pool of decode slots that
shrinks as the step's rows run out (docs/sampling.md#engines).

Shapes (P prompts, G = num_samples, R = P * G rows, S decode slots, L prompt length, N =
max_new_tokens, pages of `page` keys):
  prefill: the prompts run once; each prompt's keys and values, padding removed, fill
    ceil(L / page) pages of a page pool `[layers, kv_heads, pages, page, head_dim]` (one copy per
    prompt, never tiled), and each prompt's next-token logits [P, V] draw every row's first
    token with the row's own key.
  decode: `lax.while_loop`s over the slots. A slot holds one row (sample): its page table lists
    its prompt's full pages, then `own` pages of its own: the first starts with a copy of the
    prompt's last, partly filled page, and the row's completion keys follow. A step feeds each
    slot's last token, writes its keys and values at the row's next position and attends to the
    row's first `length` positions through the table (paged_attention.py: XLA, or the TPU Pallas
    kernel). When a row ends (an EOS id, or N tokens) its slot takes the next row still to
    decode, in the same iteration. When the rows left (decoding or pending) fit in the next
    smaller pool (about 3/4 of the size), the live slots move to the front of it (only their
    small per-slot state moves; the pages stay where they are), up to `shrinks` times, so the
    end of a step does not run a full pool for a few long rows. Shapes are static within each
    loop.
Row r's token i is drawn with the key `fold_in(fold_in(rng, r), i)`, whichever slot runs it,
so the output does not depend on the pool, its sizes or the mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from guard_jax.models.qwen2_5_vl.attention import resolve_impl
from guard_jax.models.qwen2_5_vl.model import (
    ACT_BLE, _attention_out_and_mlp, _cast, _project_qkv, mrope_cos_sin, rms_norm)
from guard_jax.sampling import cache as cache_lib
from guard_jax.sampling.distribution import choose
from guard_jax.sampling.paged_attention import (
    KERNELS, kernel_fits, kernel_for, pad_to_block, paged_attention)
from guard_jax.sampling.sampler import (
    _OUTPUT_AXES, SampleOutput, Sampler, SamplingParams, prompt_pass)
from guard_jax.sharding import (
    SAMPLE_RULES, batch_shardings, param_shardings, shard_activation, use_rules)

PAGE = 64  # keys per page
SHRINKS = 7  # times the decode pool may shrink (to about 3/4) as a step's rows run out
KERNEL_BLOCK_KEYS = 512  # keys per block of the Pallas kernel (XLA: one page per block)
# prompt pages [layers, kv_heads, pages, page, head_dim] and the decode page pool
# [kv_heads, layers * pages, page, head_dim] (layer i's pages at i * pages ..: one array the
# kernel reads through offset page tables, no per-layer slice): KV heads over `tensor`, the
# pages replicated over the batch axes (any slot may read any prompt's pages)
PROMPT_AXES = ("layers", "cache_kv_heads", None, None, "cache_head_dim")
POOL_AXES = ("cache_kv_heads", None, None, "cache_head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PagedPrompts:
    """k, v [layers, kv_heads, P * pages_per_prompt, page, head_dim]: prompt p's keys and values
    (padding removed) in its pages p * pages_per_prompt ..; length [P] int32, its real tokens;
    position [P] int32, the M-RoPE position of its first new token."""

    k: jax.Array
    v: jax.Array
    length: jax.Array
    position: jax.Array

    @property
    def pages_per_prompt(self) -> int:
        return self.k.shape[2] // self.length.shape[0]


def prefill_prompts(model, batch: dict, params: SamplingParams, page: int):
    """-> (PagedPrompts, next-token logits [P, V] float32): one pass per prompt."""
    k, v, logits = prompt_pass(model, batch)
    mask = batch["attention_mask"].astype(bool)
    c = cache_lib.from_prompt(k, v, mask, batch["position_ids"], k.shape[2], params.cache_dtype)
    order = jnp.argsort(~mask, axis=1, stable=True)  # each prompt's real tokens first, in order
    width = pad_to_block(k.shape[2], page)

    def pages(a):  # [layers, P, L, K, D] -> [layers, K, P * width / page, page, D]
        a = jnp.take_along_axis(a, order[None, :, :, None, None], axis=2)
        a = jnp.pad(a, ((0, 0), (0, 0), (0, width - a.shape[2]), (0, 0), (0, 0)))
        layers, p, _, kvh, d = a.shape
        a = a.reshape(layers, p, width // page, page, kvh, d).transpose(0, 4, 1, 2, 3, 5)
        return shard_activation(a.reshape(layers, kvh, p * (width // page), page, d), PROMPT_AXES)

    length = jnp.sum(mask, axis=1, dtype=jnp.int32)
    return PagedPrompts(pages(c.k), pages(c.v), length, c.position), logits


def own_pages(max_new_tokens: int, page: int) -> int:
    """Pages a slot owns: the prompt's last partial page (< page keys) and the N - 1 fed
    completion tokens (the last drawn token is never fed)."""
    return max(1, -(-(page - 1 + max_new_tokens - 1) // page))


def pool_sizes(slots: int, shrinks: int, shards: int = 1) -> list[int]:
    """The decode pool's sizes: `slots`, then each the largest multiple of `shards` (the mesh's
    batch devices) at most 3/4 of the one before and smaller than it, at most `shrinks` times
    and never below `shards`. (A pool of size s runs while more rows than the next size are
    left, so each loop's slots are over 3/4 busy until its last rows, where halving would
    leave them half busy.)"""
    sizes = [slots]
    while len(sizes) <= shrinks:
        nxt = min(sizes[-1] * 3 // 4, sizes[-1] - 1) // shards * shards
        if nxt < max(shards, 1):
            break
        sizes.append(nxt)
    return sizes


def decode_layers(text, x, position_ids, k_pool, v_pool, table, write_page, write_offset,
                  lengths, *, pages_per_layer: int, kernel: str, pages_per_block: int):
    """One token per slot through the decoder (the layer code of `TextModel.decode_step`).

    x [S, 1, E]; position_ids (3, S, 1); k_pool, v_pool [kv_heads, layers * pages_per_layer,
    page, head_dim]; table [S, W]: each slot's pages (within a layer); write_page, write_offset
    [S]: where this token's keys and values go (a page >= pages_per_layer drops them: idle
    slots); lengths [S]: keys each slot attends to, this token's included (0 for an idle slot).
    -> (hidden [S, 1, E], k_pool, v_pool)."""
    dtype = x.dtype
    cos, sin = mrope_cos_sin(position_ids, text.config, dtype)
    eps = text.config.text.rms_norm_eps
    heads = jnp.arange(k_pool.shape[0])[:, None]
    dropped = k_pool.shape[1]

    def layer(carry, xs):
        x, kp, vp = carry
        p, i = xs
        p = _cast(p, dtype)
        q, k, v = _project_qkv(rms_norm(x, p["input_norm"], eps), p, cos, sin)
        at = jnp.where(write_page < pages_per_layer, i * pages_per_layer + write_page, dropped)
        kp = kp.at[heads, at[None], write_offset[None]].set(
            k[:, 0].swapaxes(0, 1).astype(kp.dtype), mode="drop")
        vp = vp.at[heads, at[None], write_offset[None]].set(
            v[:, 0].swapaxes(0, 1).astype(vp.dtype), mode="drop")
        kp, vp = shard_activation(kp, POOL_AXES), shard_activation(vp, POOL_AXES)
        a = paged_attention(q[:, 0], kp, vp, lengths, table + i * pages_per_layer,
                            kernel=kernel, pages_per_block=pages_per_block)
        return (_attention_out_and_mlp(x, a[:, None].astype(dtype), p, eps), kp, vp), None

    n = text.config.text.num_hidden_layers
    x = shard_activation(x, ACT_BLE)
    (x, kp, vp), _ = jax.lax.scan(layer, (x, k_pool, v_pool),
                                  (text.layers.arrays(), jnp.arange(n)))
    return rms_norm(x, text.norm[...], eps), kp, vp


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


def rollout(model, batch: dict, rng, params: SamplingParams, *, slots: int, page: int = PAGE,
            shrinks: int = SHRINKS, shards: int = 1, kernel: str = "auto",
            target_lengths=None):
    """Prefill + continuous decode in one pure function (trace it under `jit`; on a mesh inside
    `use_rules(mesh, SAMPLE_RULES)`). `slots`: the decode pool's first size S; it shrinks
    at most `shrinks` times (`pool_sizes`), staying a multiple of `shards`. `target_lengths` [R] (optional, for
    benchmarks): row r also ends after that many tokens. `kernel`: the decode attention
    (paged_attention.KERNELS; auto: the Pallas kernel where the model's attention resolves to
    the Pallas splash kernel, i.e. on a TPU, else XLA). -> (SampleOutput, slot-steps (the pool
    size summed over decode steps), slot-blocks (the blocks of `block_keys` keys the decode
    steps read per slot, summed like slot-steps))."""
    g, n = params.num_samples, params.max_new_tokens
    prompts, logits = prefill_prompts(model, batch, params, page)
    r = logits.shape[0] * g
    pick = functools.partial(choose, temperature=params.temperature, top_p=params.top_p,
                             top_k=params.top_k)
    token, lp, slp = _first_tokens(pick, logits, rng, g)
    init = dict(tokens=jnp.full((r, n), params.pad_token_id, jnp.int32).at[:, 0].set(token),
                logprobs=jnp.zeros((r, n), jnp.float32).at[:, 0].set(lp),
                sampling_logprobs=jnp.zeros((r, n), jnp.float32).at[:, 0].set(slp),
                lengths=jnp.ones((r,), jnp.int32),
                finished=jnp.isin(token, jnp.asarray(params.eos_token_ids, jnp.int32)),
                step=jnp.asarray(0, jnp.int32), slot_steps=jnp.asarray(0, jnp.int32),
                slot_blocks=jnp.asarray(0, jnp.int32))
    limit = jnp.full((r,), n, jnp.int32)
    if target_lengths is not None:
        limit = jnp.clip(jnp.asarray(target_lengths, jnp.int32), 1, n)
    if n > 1:
        kernel = resolve_kernel(kernel, model, page)
        init = _decode(model, prompts, init, rng, params, pick, pool_sizes(slots, shrinks, shards),
                       page, limit, kernel)
    lengths = init["lengths"]
    return SampleOutput(tokens=init["tokens"], lengths=lengths,
                        completion_mask=jnp.arange(n)[None, :] < lengths[:, None],
                        logprobs=init["logprobs"], sampling_logprobs=init["sampling_logprobs"],
                        finished=init["finished"], steps=init["step"]), \
        init["slot_steps"], init["slot_blocks"]


def resolve_kernel(kernel: str, model, page: int) -> str:
    """`kernel`, or for auto the Pallas kernel where the model's attention resolves to the
    Pallas splash kernel (a TPU) and the shapes fit it, else XLA."""
    head_dim = model.config.text.head_dim
    if kernel == "auto":
        return kernel_for(resolve_impl(model.config.attention_impl, model.config.dtype),
                          head_dim, page)
    why = None if kernel == "xla" else kernel_fits(head_dim, page)
    if why is not None and kernel == "pallas":
        raise ValueError(f"the Pallas decode kernel cannot run this model: {why}")
    return kernel


def block_pages(kernel: str, page: int) -> int:
    """Pages per attention block: one on XLA, about KERNEL_BLOCK_KEYS keys for the kernel."""
    return 1 if kernel == "xla" else max(1, KERNEL_BLOCK_KEYS // page)


def _decode(model, prompts: PagedPrompts, out: dict, rng, params, pick, sizes: list[int],
            page: int, limit, kernel: str):
    """The slot loops: `out` (tokens, log-probs, lengths, finished of every row, the first
    token in) -> the same with every row decoded; `limit` [R]: each row's most tokens."""
    g, n = params.num_samples, params.max_new_tokens
    r = out["tokens"].shape[0]
    eos = jnp.asarray(params.eos_token_ids, jnp.int32)
    # rows whose first token ended them need no slot; the others queue in row order
    ended = out["finished"] | (limit <= 1)
    queue = jnp.argsort(ended, stable=True).astype(jnp.int32)
    pending = r - jnp.sum(ended).astype(jnp.int32)
    per_prompt = prompts.pages_per_prompt
    own = own_pages(n, page)
    ppb = block_pages(kernel, page)
    width = pad_to_block(per_prompt + own, ppb)
    first = prompts.k.shape[2]  # the first slot's own pages
    layers, kvh, _, _, hd = prompts.k.shape
    per_layer = first + sizes[0] * own

    def pool(a):  # prompt pages + zeroed own pages -> [K, layers * pages, page, D]
        a = jnp.concatenate([a, jnp.zeros((layers, kvh, sizes[0] * own, page, hd), a.dtype)], 2)
        return shard_activation(a.swapaxes(0, 1).reshape(kvh, layers * per_layer, page, hd),
                                POOL_AXES)

    full = prompts.length // page  # a prompt's full pages (shared); then the slot's own pages
    heads = jnp.arange(kvh)[:, None]

    def copy_partial_pages(s, take, prompt):
        """Slots taking a row get their prompt's last partial page as their first own page."""
        src = jnp.minimum(prompt * per_prompt + full[prompt], first - 1)
        dst = jnp.where(take, s["base"], per_layer)
        rows = jnp.arange(layers)[:, None] * per_layer

        def move(buf):
            got = buf[:, (rows + src[None]).reshape(-1)]  # [K, layers * S, page, D]
            at = jnp.where(dst[None] < per_layer, rows + dst[None], layers * per_layer)
            return buf.at[heads, at.reshape(-1)[None]].set(got, mode="drop")

        return dict(s, kp=move(s["kp"]), vp=move(s["vp"]))

    def refill(s):
        free = s["row"] >= r
        nxt = s["next"] + jnp.cumsum(free, dtype=jnp.int32) - 1
        take = free & (nxt < pending)
        new = queue[jnp.minimum(nxt, r - 1)]
        row = jnp.where(take, new, s["row"])
        s = dict(s, row=row, fill=jnp.where(take, 0, s["fill"]),
                 last=jnp.where(take, s["tokens"][new, 0], s["last"]),
                 next=s["next"] + jnp.sum(take, dtype=jnp.int32))
        return jax.lax.cond(jnp.any(take), copy_partial_pages, lambda s, *_: s, s, take,
                            jnp.minimum(row, r - 1) // g)

    def body(s):
        slots = s["row"].shape[0]
        active = s["row"] < r
        row = jnp.minimum(s["row"], r - 1)
        prompt = row // g
        fill = s["fill"]
        x = model.text.embed_tokens(s["last"][:, None])
        pos = jnp.broadcast_to((prompts.position[prompt] + fill)[None, :, None], (3, slots, 1))
        at = prompts.length[prompt] + fill  # this token's position in the row's keys
        j = jnp.arange(width)[None, :]
        table = jnp.where(j < full[prompt][:, None], prompt[:, None] * per_prompt + j,
                          s["base"][:, None] + j - full[prompt][:, None])
        table = jnp.clip(table, 0, per_layer - 1)
        page_at = jnp.where(active, s["base"] + at // page - full[prompt], per_layer)
        seen = jnp.where(active, at + 1, 0)
        h, kp, vp = decode_layers(model.text, x, pos, s["kp"], s["vp"], table, page_at,
                                  at % page, seen, pages_per_layer=per_layer, kernel=kernel,
                                  pages_per_block=ppb)
        logits = model.text.logits(h)[:, 0].astype(jnp.float32)
        col = fill + 1  # the index of the token drawn now
        keys = jax.vmap(functools.partial(_row_key, rng))(row, col)
        token, lp, slp = _choose_rows(pick, logits, keys)
        ends = jnp.isin(token, eos)
        where = jnp.where(active, s["row"], r)  # idle slots write nowhere (dropped)

        def put(buf, val):
            return buf.at[where, col].set(val.astype(buf.dtype), mode="drop")

        block_keys = ppb * page
        s = dict(s, kp=kp, vp=vp, tokens=put(s["tokens"], token),
                 logprobs=put(s["logprobs"], lp),
                 sampling_logprobs=put(s["sampling_logprobs"], slp),
                 lengths=s["lengths"].at[where].set(col + 1, mode="drop"),
                 finished=s["finished"].at[where].set(ends, mode="drop"),
                 row=jnp.where(active & (ends | (col + 1 >= limit[row])), r, s["row"]),
                 fill=jnp.where(active, col, 0), last=token, step=s["step"] + 1,
                 slot_steps=s["slot_steps"] + slots,
                 slot_blocks=s["slot_blocks"]
                 + slots * ((jnp.max(seen) + block_keys - 1) // block_keys))
        return refill(s)

    def rows_left(s):
        return jnp.sum(s["row"] < r) + pending - s["next"]

    slot_keys = ("row", "fill", "last", "base")
    s = dict(out, kp=pool(prompts.k), vp=pool(prompts.v), row=jnp.full((sizes[0],), r, jnp.int32),
             fill=jnp.zeros((sizes[0],), jnp.int32), last=jnp.zeros((sizes[0],), jnp.int32),
             base=first + own * jnp.arange(sizes[0], dtype=jnp.int32),
             next=jnp.asarray(0, jnp.int32))
    s = refill(s)
    for size, smaller in zip(sizes, sizes[1:] + [0]):
        if size != s["row"].shape[0]:  # move the live slots to the front of a smaller pool
            keep = jnp.argsort(s["row"] >= r, stable=True)[:size]
            s = refill(dict(s, **{k: s[k][keep] for k in slot_keys}))
        s = jax.lax.while_loop(lambda s, smaller=smaller: rows_left(s) > smaller, body, s)
    return {k: s[k] for k in out}


def default_slots(rows: int, mesh=None) -> int:
    """Half the rows (finished rows hand their slots on, so the pool stays busy), rounded up to
    a multiple of the mesh's data x fsdp size, at most the rows. A decode step costs a fixed
    part (reading the weights) plus a part per slot: half the rows, shrinking as they run out,
    keeps the steps near the longest row's length and over 90% of the slot-steps useful on
    long-tailed lengths (docs/sampling.md#engines)."""
    shards = _shards(mesh)
    half = -(-rows // 2)
    return min(rows, -(-half // shards) * shards)


def _shards(mesh) -> int:
    return 1 if mesh is None else mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)


class ContinuousEngine(Sampler):
    """`engine(state, batch, rng) -> SampleOutput` as `Sampler`, through `rollout` in one jit.
    slots: the decode pool's first size (default `default_slots`); page: keys per page;
    shrinks: how often the pool may shrink as the rows run out (0: a fixed pool); kernel: the
    decode attention (as `rollout`'s)."""

    def __init__(self, graphdef, params: SamplingParams, *, mesh=None, rules=SAMPLE_RULES,
                 slots: int | None = None, page: int = PAGE, shrinks: int = SHRINKS,
                 kernel: str = "auto"):
        super().__init__(graphdef, params, mesh=mesh, rules=rules)
        if slots is not None and slots < 1:
            raise ValueError(f"slots={slots}; must be >= 1")
        if page < 1:
            raise ValueError(f"page={page}; must be >= 1")
        if shrinks < 0:
            raise ValueError(f"shrinks={shrinks}; must be >= 0")
        if kernel != "auto" and kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}; choose auto or one of {KERNELS}")
        self.slots, self.page, self.shrinks, self.kernel = slots, page, shrinks, kernel

    def pool_size(self, rows: int) -> int:
        return min(rows, self.slots) if self.slots else default_slots(rows, self.mesh)

    def _rollout(self, state, batch, rng, targets):
        rows = batch["input_ids"].shape[0] * self.params.num_samples
        return rollout(nnx.merge(self.graphdef, state), batch, rng, self.params,
                       slots=self.pool_size(rows), page=self.page, shrinks=self.shrinks,
                       shards=_shards(self.mesh), kernel=self.kernel, target_lengths=targets)

    def _compile(self, state, batch):
        fn = self._trace(self._rollout)
        with self._rules():
            model = nnx.merge(self.graphdef, state)
            prompts = jax.eval_shape(lambda st, b: prefill_prompts(
                nnx.merge(self.graphdef, st), b, self.params, self.page), state, batch)[0]
            kernel = resolve_kernel(self.kernel, model, self.page)
        layers, kvh, _, _, hd = prompts.k.shape
        self._token_bytes = 2 * layers * kvh * hd * prompts.k.dtype.itemsize
        self._block_keys = block_pages(kernel, self.page) * self.page
        if self.mesh is None:
            return jax.jit(fn)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        r = batch["input_ids"].shape[0] * self.params.num_samples
        out_sh = SampleOutput(*(self._named(ax, (r, self.params.max_new_tokens)[:len(ax)])
                                for ax in _OUTPUT_AXES))
        return jax.jit(fn, in_shardings=(param_shardings(state, self.mesh, self.rules),
                                         batch_shardings(batch, self.mesh, self.rules),
                                         replicated, replicated),
                       out_shardings=(out_sh, replicated, replicated))

    def _rules(self):
        return contextlib.nullcontext() if self.mesh is None else use_rules(self.mesh, self.rules)

    def __call__(self, state, batch, rng, target_lengths=None) -> SampleOutput:
        """target_lengths [R] (optional, for benchmarks): row r also ends after that many
        tokens, as though an EOS came there."""
        rows = batch["input_ids"].shape[0] * self.params.num_samples
        n = self.params.max_new_tokens
        targets = jnp.full((rows,), n, jnp.int32) if target_lengths is None else target_lengths
        out, slot_steps, slot_blocks = self.functions(state, batch)(
            state, batch, rng, jnp.asarray(targets, jnp.int32))
        self.last_run = dict(rows=rows, slot_steps=slot_steps, slot_blocks=slot_blocks,
                             steps=out.steps)
        return out

    # -- what the caches hold and what a decode step reads (guard-jax bench rollout)
    def kv_cache_bytes(self, prompts: int, prompt_len: int, *, num_samples: int) -> int:
        """Keys + values of the page pool for `prompts` prompts of `prompt_len` tokens and
        G = num_samples: the prompts' pages and the first pool's own pages (after a first
        call, which sizes a token)."""
        n = self.params.max_new_tokens
        own = self.pool_size(prompts * num_samples) * own_pages(n, self.page) if n > 1 else 0
        pages = prompts * (pad_to_block(prompt_len, self.page) // self.page) + own
        return self._token_bytes * self.page * pages

    def row_steps(self) -> int:
        """Decode slot-steps of the last call: the pool's size summed over its decode steps."""
        return int(self.last_run["slot_steps"])

    def kv_bytes_read_per_step(self, out=None) -> float:
        """Cache bytes one decode step of the last call read, on average: every slot the
        blocks up to the longest row's keys (its prompt's pages, then its own)."""
        run = self.last_run
        steps = max(int(run["steps"]), 1)
        return self._token_bytes * self._block_keys * int(run["slot_blocks"]) / steps


__all__ = ["ContinuousEngine", "PagedPrompts", "rollout", "prefill_prompts", "decode_layers",
           "default_slots", "own_pages", "pool_sizes", "PAGE", "SHRINKS"]
