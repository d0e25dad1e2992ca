"""Prefill and decode over a static KV cache: the pure functions and their jitted, sharded form.

Shapes (B prompts, G = num_samples, R = B * G rows, L prompt length, N = max_new_tokens):
  prefill: batch (as `Qwen25VL.prepare_inputs` makes it, prompts LEFT-padded) ->
    KVCache with R rows and L + N slots, and the float32 logits [R, V] of each row's next token.
    The vision tower and the prompt run once per prompt; the cache is then tiled G times,
    sample-major (rows p*G .. p*G+G-1 belong to prompt p).
  decode: one `lax.while_loop`; each iteration feeds the last token of every row through
    `TextModel.decode_step` and chooses the next. It stops after N tokens or as soon as every
    row has emitted one of the EOS ids.

`sample(model, batch, rng, params)` is both in one pure function, for use inside a trainer's
own `jit`. `Sampler` jits them separately with explicit shardings on a mesh and donates the
cache to decode, which hands it back (updated in place) next to the output.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from guard_jax.models.qwen2_5_vl.model import VISION_KEYS
from guard_jax.sampling import cache as cache_lib
from guard_jax.sampling.distribution import choose
from guard_jax.sharding import (
    SAMPLE_RULES, auto_mesh, logical_to_spec, param_shardings, use_rules)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Static settings of a rollout (hashable: one compilation per distinct value)."""

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    num_samples: int = 1  # G rows per prompt
    cache_dtype: str | None = None  # default: the model's compute dtype

    def __post_init__(self):
        eos = self.eos_token_ids
        eos = (eos,) if isinstance(eos, int) else tuple(int(e) for e in eos)
        object.__setattr__(self, "eos_token_ids", eos)
        errs = []
        if self.max_new_tokens < 1:
            errs.append(f"max_new_tokens={self.max_new_tokens}; must be >= 1")
        if not eos:
            errs.append("eos_token_ids is empty; give at least one id")
        if not self.temperature >= 0:
            errs.append(f"temperature={self.temperature}; must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            errs.append(f"top_p={self.top_p}; must be in (0, 1]")
        if self.top_k < 0:
            errs.append(f"top_k={self.top_k}; must be >= 0 (0 = off)")
        if self.num_samples < 1:
            errs.append(f"num_samples={self.num_samples}; must be >= 1")
        if errs:
            raise ValueError("invalid sampling parameters: " + "; ".join(errs))


class SampleOutput(NamedTuple):
    """R = prompts * num_samples rows (sample-major), N = max_new_tokens.

    tokens [R, N] int32: the new tokens, the EOS included, pad_token_id after it;
    lengths [R] int32: tokens up to and including the EOS (N when none came);
    completion_mask [R, N] bool: position < length;
    logprobs [R, N] float32: log_softmax(logits / T) of each token over the whole vocabulary
      (T = 1 when greedy), 0 on padding;
    sampling_logprobs [R, N] float32: the same under the distribution actually sampled from
      (after top-k / top-p; 0 when greedy), 0 on padding;
    finished [R] bool: the row emitted an EOS (False = truncated at N);
    steps [] int32: decode iterations run after the prefill (N - 1 at most)."""

    tokens: jax.Array
    lengths: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    finished: jax.Array
    steps: jax.Array


# ---------------------------------------------------------------------------- pure functions
def prompt_pass(model, batch: dict):
    """The prompts through the model once: (keys, values [layers, B, L, kv_heads, head_dim],
    next-token logits [B, V] float32)."""
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    vision = {k: batch[k] for k in VISION_KEYS if batch.get(k) is not None}
    x = model.embed(ids, **vision)
    h, (k, v) = model.text.decoder(x, pos, mask, return_kv=True)
    # left padding: the last column is every row's last real token
    return k, v, model.text.logits(h[:, -1:])[:, 0].astype(jnp.float32)


def prefill(model, batch: dict, params: SamplingParams):
    """-> (KVCache of R rows and L + N slots, next-token logits [R, V] float32)."""
    k, v, logits = prompt_pass(model, batch)
    cache = cache_lib.from_prompt(k, v, batch["attention_mask"], batch["position_ids"],
                                  k.shape[2] + params.max_new_tokens, params.cache_dtype)
    g = params.num_samples
    return cache_lib.tile(cache, g), jnp.repeat(logits, g, axis=0)


def decode(model, cache: cache_lib.KVCache, logits, rng, params: SamplingParams):
    """-> (SampleOutput, the cache after the last step). `logits` [R, V] are the prefill's."""
    r, n = logits.shape[0], params.max_new_tokens
    eos = jnp.asarray(params.eos_token_ids, jnp.int32)
    pick = functools.partial(choose, temperature=params.temperature, top_p=params.top_p,
                             top_k=params.top_k)
    token, lp, slp = pick(logits, jax.random.fold_in(rng, 0))
    tokens = jnp.full((r, n), params.pad_token_id, jnp.int32).at[:, 0].set(token)
    logprobs = jnp.zeros((r, n), jnp.float32).at[:, 0].set(lp)
    sampling_logprobs = jnp.zeros((r, n), jnp.float32).at[:, 0].set(slp)
    init = dict(cache=cache, tokens=tokens, logprobs=logprobs,
                sampling_logprobs=sampling_logprobs, last=token,
                done=jnp.isin(token, eos), lengths=jnp.ones((r,), jnp.int32),
                step=jnp.asarray(1, jnp.int32))

    def cond(s):
        return (s["step"] < n) & ~jnp.all(s["done"])

    def body(s):
        c = s["cache"]
        x = model.text.embed_tokens(s["last"][:, None])
        pos = jnp.broadcast_to(c.position[None, :, None], (3, r, 1))
        h, k, v = model.text.decode_step(x, pos, c.k, c.v, c.index, c.key_mask)
        logits = model.text.logits(h)[:, 0].astype(jnp.float32)
        token, lp, slp = pick(logits, jax.random.fold_in(rng, s["step"]))
        live = ~s["done"]
        token = jnp.where(live, token, params.pad_token_id)
        col = s["step"]

        def put(buf, val):
            return jax.lax.dynamic_update_slice(buf, val[:, None].astype(buf.dtype), (0, col))

        return dict(cache=cache_lib.advance(c, k, v), tokens=put(s["tokens"], token),
                    logprobs=put(s["logprobs"], jnp.where(live, lp, 0.0)),
                    sampling_logprobs=put(s["sampling_logprobs"], jnp.where(live, slp, 0.0)),
                    last=token, done=s["done"] | jnp.isin(token, eos),
                    lengths=s["lengths"] + live.astype(jnp.int32), step=s["step"] + 1)

    # one new token needs no decode step (and no loop to compile)
    s = jax.lax.while_loop(cond, body, init) if n > 1 else init
    out = SampleOutput(tokens=s["tokens"], lengths=s["lengths"],
                       completion_mask=jnp.arange(n)[None, :] < s["lengths"][:, None],
                       logprobs=s["logprobs"], sampling_logprobs=s["sampling_logprobs"],
                       finished=s["done"], steps=s["step"] - 1)
    return out, s["cache"]


def sample(model, batch: dict, rng, params: SamplingParams) -> SampleOutput:
    """Prefill + decode in one pure function (call it under `jit`/`nnx.jit`; on a mesh, trace
    it inside `guard_jax.sharding.use_rules(mesh, SAMPLE_RULES)`)."""
    cache, logits = prefill(model, batch, params)
    return decode(model, cache, logits, rng, params)[0]


# ---------------------------------------------------------------------------- jitted form
_OUTPUT_AXES = SampleOutput(tokens=("act_batch", None), lengths=("act_batch",),
                            completion_mask=("act_batch", None), logprobs=("act_batch", None),
                            sampling_logprobs=("act_batch", None), finished=("act_batch",),
                            steps=())


class Sampler:
    """Jitted prefill and decode for one model graph and one SamplingParams.

    `sampler(state, batch, rng) -> SampleOutput` where state is `nnx.split(model)[1]` (or the
    Param state) and batch the device batch. With a mesh, the state and batch must already
    be placed (`place_state`, and `sharding.put_batch` with `batch_shardings`);
    every jit then has explicit in/out shardings under `rules`, and decode donates the cache.
    Compilations are cached per batch shape."""

    def __init__(self, graphdef, params: SamplingParams, *, mesh=None, rules=SAMPLE_RULES):
        mesh = None if mesh is None else auto_mesh(mesh)  # jax.make_mesh's are Explicit
        self.graphdef, self.params, self.mesh, self.rules = graphdef, params, mesh, rules
        self._jitted: dict = {}

    def _trace(self, fn):
        """fn traced with activation constraints from the rules when on a mesh."""
        if self.mesh is None:
            return fn

        def wrapped(*args):
            with use_rules(self.mesh, self.rules):
                return fn(*args)
        return wrapped

    def _prefill(self, state, batch):
        return prefill(nnx.merge(self.graphdef, state), batch, self.params)

    def _decode(self, state, cache, logits, rng):
        return decode(nnx.merge(self.graphdef, state), cache, logits, rng, self.params)

    def _named(self, axes, shape):
        return NamedSharding(self.mesh, logical_to_spec(axes, self.rules, shape, self.mesh,
                                                        strict=False))

    def _compile(self, state, batch):
        prefill_fn, decode_fn = self._trace(self._prefill), self._trace(self._decode)
        if self.mesh is None:
            return jax.jit(prefill_fn), jax.jit(decode_fn, donate_argnums=(1,))
        from guard_jax.sharding import batch_shardings
        state_sh = param_shardings(state, self.mesh, self.rules)
        batch_sh = batch_shardings(batch, self.mesh, self.rules)
        with use_rules(self.mesh, self.rules):
            cache_shape, logits_shape = jax.eval_shape(self._prefill, state, batch)
        cache_sh = cache_lib.shardings(cache_shape, self.mesh, self.rules)
        logits_sh = self._named(("act_batch", "act_vocab"), logits_shape.shape)
        r, n = logits_shape.shape[0], self.params.max_new_tokens
        out_sh = SampleOutput(*(self._named(ax, (r, n)[:len(ax)]) for ax in _OUTPUT_AXES))
        replicated = NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return (jax.jit(prefill_fn, in_shardings=(state_sh, batch_sh),
                        out_shardings=(cache_sh, logits_sh)),
                jax.jit(decode_fn, in_shardings=(state_sh, cache_sh, logits_sh, replicated),
                        out_shardings=(out_sh, cache_sh), donate_argnums=(1,)))

    def functions(self, state, batch):
        """(jitted prefill(state, batch), jitted decode(state, cache, logits, rng))."""
        key = tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))
        if key not in self._jitted:
            self._jitted[key] = self._compile(state, batch)
        return self._jitted[key]

    def place_state(self, state):
        """The model state in this sampler's parameter shardings (a no-op without a mesh)."""
        if self.mesh is None:
            return state
        return jax.device_put(state, param_shardings(state, self.mesh, self.rules))

    def __call__(self, state, batch, rng) -> SampleOutput:
        prefill_fn, decode_fn = self.functions(state, batch)
        cache, logits = prefill_fn(state, batch)
        return decode_fn(state, cache, logits, rng)[0]


__all__ = ["SamplingParams", "SampleOutput", "Sampler", "prompt_pass", "prefill", "decode",
           "sample"]
