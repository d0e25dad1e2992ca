"""GRPO: the loop that wires loader, sampler, rewards, the clipped loss, checkpoints, metrics.

One rollout step (docs/grpo.md#algorithm):
  1. rollout: prompts (left-padded, static length grpo.max_prompt_len) in chunks of
     grpo.rollout_chunk_prompts -> the KV-cache sampler with num_samples = G (the vision tower
     and the prompt run once per prompt) -> [R = P x G, max_new_tokens] tokens;
  2. rewards inside jit from the token ids (guard_jax.rewards); dynamic sampling keeps every
     shape static (docs/grpo.md#dynamic-sampling): `mask` zeroes degenerate groups, `overgenerate` rolls out
     ceil(k P) prompts and selects P groups valid-first, `regenerate` rolls out more batches
     until P groups are valid or grpo.max_regenerations is reached, then trains on what exists
     with the degenerate rest masked, and logs it;
  3. old log-probs (and the reference's, when a KL term is on) with the training forward;
     the old-log-prob forward is skipped when the update is strictly on-policy
     (`skips_old_logprob`, docs/grpo.md#old-log-probs);
  4. advantages by grpo.adv_estimator (KL-in-reward first subtracted from the reward), and the
     rollout correction's weights (grpo.rollout_is);
  5. num_epochs x mini-batches (train.global_batch rollouts) of the policy loss, each
     accumulated over train.micro_batch micro-batches (optax.MultiSteps), the token-mean
     normalised over the whole mini-batch; the clip ratios come from the schedule as traced
     scalars.
The training forward also runs each prompt once: a micro-batch holds whole groups (or part of
one), so the prompt's embeddings (image features included) are computed once and repeated
over its samples before the completion tokens are appended.

Every phase is timed (`timing_s/*`, verl's keys) and written with the reward statistics to
metrics.jsonl / TensorBoard; checkpoints (parameters, optimizer, step, loader position, rng
seed) resume exactly, as SFT's do. The rng of step s is fold_in(key(train.seed), s), so a
resumed run samples what the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from guard_jax.distributed import host_array
from guard_jax.sharding import row_shards
from guard_jax.training import filled_head, grpo_loss as L
from guard_jax.training.grpo_rewards import with_overlong_penalty
from guard_jax.training.head_loss import head_token_logprobs
from guard_jax.training.rl.advantages import compute_advantages
from guard_jax.training.rl.kl import KLController, mean_sequence_kl
from guard_jax.training.rl.rollout_correction import rollout_correction

log = logging.getLogger(__name__)

PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "pos_hw",
               "win_idx", "full_idx")


# ---------------------------------------------------------------------------- host batches
def left_pad(raw: dict) -> dict:
    """A right-padded loader batch with its token rows moved to end at the last column (the
    sampler writes every row's next token to the same cache slot)."""
    mask = np.asarray(raw["attention_mask"])
    length = mask.shape[1]
    shift = length - mask.sum(1)
    idx = (np.arange(length)[None, :] - shift[:, None]) % length
    out = dict(raw)
    for k in ("input_ids", "attention_mask", "loss_mask"):
        out[k] = np.take_along_axis(np.asarray(raw[k]), idx, axis=1)
    return out


def take_prompts(raw: dict, rows) -> dict:
    rows = np.asarray(rows)
    return {k: ([v[i] for i in rows] if isinstance(v, list) else np.asarray(v)[rows])
            for k, v in raw.items()}


def concat_prompts(parts: list[dict]) -> dict:
    return {k: (sum((p[k] for p in parts), []) if isinstance(parts[0][k], list)
                else np.concatenate([p[k] for p in parts])) for k in parts[0]}


def prompt_inputs(raw: dict, mc) -> dict:
    """Left-padded raw prompts -> the model's prompt inputs (M-RoPE positions, vision
    windows), numpy. A prompt's video patches join its image patches in its vision row
    (`to_model_batch`), so the sampler's prefill and the update's forward embed them too."""
    from guard_jax.training.batch import to_model_batch
    batch = to_model_batch(raw, mc)
    return {k: batch[k] for k in PROMPT_KEYS if k in batch}


# ---------------------------------------------------------------------------- the forward
def completion_logprobs(model, batch: dict, *, temperature: float, with_entropy: bool,
                        entropy_grad: bool = True, fused: bool = True):
    """log p [B, N] (and entropy) of the completions under the model, through the fused
    output projection + log-softmax (head_loss.head_token_logprobs: one float32
    [tokens, vocab] buffer for the backward pass). `entropy_grad=False`: the entropy is a
    value only (a loss without an entropy term). `fused=False`: autodiff of the plain
    logits + grpo_loss.token_logprobs instead (the reference, and `bench grpo`'s peer).

    batch: prompt inputs for the micro-batch's n_p prompts (input_ids [n_p, L] left-padded,
    attention_mask, position_ids (3, n_p, L), vision arrays) and `completion` /
    `completion_mask` [B, N] with B = n_p x rep (sample-major). The prompts run through the
    embedding (and the vision tower) once and are repeated; completion positions continue
    after each prompt's largest M-RoPE position, as in the sampler's cache."""
    from guard_jax.models.qwen2_5_vl.model import VISION_KEYS
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    comp, cmask = batch["completion"], batch["completion_mask"]
    rep = comp.shape[0] // ids.shape[0]
    n, length = comp.shape[1], ids.shape[1]
    x = model.embed(ids, **{k: batch[k] for k in VISION_KEYS if k in batch})
    last = jnp.max(jnp.where(mask[None] > 0, pos, -1), axis=(0, 2))
    cpos = jnp.repeat(last[:, None] + 1 + jnp.arange(n)[None], rep, axis=0).astype(pos.dtype)
    x = jnp.concatenate([jnp.repeat(x, rep, axis=0), model.text.embed_tokens(comp)], axis=1)
    pos = jnp.concatenate([jnp.repeat(pos, rep, axis=1),
                           jnp.broadcast_to(cpos[None], (3,) + comp.shape)], axis=2)
    mask = jnp.concatenate([jnp.repeat(mask, rep, axis=0), cmask.astype(mask.dtype)], axis=1)
    h = model.text.decoder(x, pos, mask)
    # the hidden state at position i predicts token i + 1: the last prompt token predicts comp[0]
    h = h[:, length - 1:length + n - 1]
    if not fused:
        return L.token_logprobs(model.text.logits(h), comp, temperature=temperature,
                                with_entropy=with_entropy)
    weight, vocab_major = model.text.head_weight(h.dtype)
    index = batch.get("head_index")
    if index is None:
        return head_token_logprobs(h, weight, comp,
                                   vocab_major=vocab_major, temperature=temperature,
                                   with_entropy=with_entropy, entropy_grad=entropy_grad)
    # only the filled positions (grpo.compact_head, training/filled_head.py)
    h, comp_k = filled_head.gather_filled(h, comp, index)
    logp, entropy = head_token_logprobs(h, weight, comp_k, vocab_major=vocab_major,
                                        temperature=temperature, with_entropy=with_entropy,
                                        entropy_grad=entropy_grad)
    return (filled_head.scatter_filled(logp, index, comp.shape),
            None if entropy is None else filled_head.scatter_filled(entropy, index, comp.shape))


def micro_slices(start: int, stop: int, size: int, g: int):
    """(rollout slice, prompt slice) of each micro-batch of `size` rollouts in [start, stop)
    (sizes are multiples or divisors of G, so a micro-batch is whole groups or part of one)."""
    for a in range(start, stop, size):
        yield slice(a, a + size), slice(a // g, (a + size - 1) // g + 1)


class PromptInputs:
    """The model's prompt inputs of a step's prompts, prepared once per prompt range (the
    old-log-prob, reference and update passes and every epoch reuse them)."""

    def __init__(self, raw: dict, mc):
        self.raw, self.mc, self._cache = raw, mc, {}

    def __call__(self, ps: slice) -> dict:
        key = (ps.start, ps.stop)
        if key not in self._cache:
            self._cache[key] = prompt_inputs(
                take_prompts(self.raw, np.arange(ps.start, ps.stop)), self.mc)
        return self._cache[key]


# ---------------------------------------------------------------------------- jitted pieces
_COMPILED: dict = {}
_REWARD: dict = {}


def _compile_key(run) -> tuple:
    """What the jitted functions depend on: the model, mesh, optimizer and its schedule length,
    the sampling settings and the loss's static knobs (a frozen grpo_loss.LossSettings), so
    that a resumed run, or one that changes only data, dynamic sampling or reward knobs, reuses
    them in this process."""
    d = json.loads(run.to_json())
    g = d["grpo"]
    updates = g["num_epochs"] * g["prompts_per_step"] * g["num_generations"]
    keep = {"model": d["model"], "mesh": d["mesh"], "optim": d["optim"], "lora": d["lora"],
            "batches": [d["train"][k] for k in ("global_batch", "micro_batch", "steps")],
            "updates": updates}
    sampling = tuple(g[k] for k in ("num_generations", "max_new_tokens", "top_p", "top_k",
                                    "rollout_engine", "rollout_slots"))
    return json.dumps(keep, sort_keys=True), sampling, L.LossSettings.from_config(g)


def _merged_params(lora, state):
    from guard_jax.training import lora as lora_lib
    if lora is None:
        return state["params"]
    return lora_lib.merge(state["params"], state["lora"], lora)


def _logprobs(graphdef, mesh, temperature, params, batch):
    from flax import nnx

    from guard_jax.sharding import TRAIN_RULES, use_rules
    with use_rules(mesh, TRAIN_RULES):
        return completion_logprobs(nnx.merge(graphdef, params), batch, temperature=temperature,
                                   with_entropy=False)[0]


def skips_old_logprob(run) -> bool:
    """True when a step needs no old-log-prob forward (docs/grpo.md#old-log-probs): one
    optimizer update of one epoch per rollout batch (train.global_batch = prompts_per_step x
    G, num_epochs 1: every micro-batch sees the parameters that sampled), nothing reads the old
    log-probs before the update (no KL in the reward, no rollout correction), and
    grpo.skip_old_logprob is "auto". The loss then takes old = stop_gradient(current)."""
    g = run.grpo
    return bool(g.skip_old_logprob == "auto" and g.num_epochs == 1
                and run.train.global_batch == g.prompts_per_step * g.num_generations
                and not g.rollout_is and not g.kl_in_reward_coef)


def _loss(settings: L.LossSettings, accum: int, model, batch, fused: bool = True):
    """(loss x accum, metrics) of one micro-batch. Without `old_logp` in the batch the update
    is on-policy (skips_old_logprob); `sampler_logp` with `n_completion` (the mini-batch's
    completion tokens) adds the metric `rollout_logprob_diff`, the mean |trainer - sampler|
    log-prob that the skipped forward would otherwise have measured."""
    logp, entropy = completion_logprobs(model, batch, temperature=settings.temperature,
                                        with_entropy=True,
                                        entropy_grad=bool(settings.entropy_coeff), fused=fused)
    loss, metrics = L.policy_loss(
        logp, batch.get("old_logp"), batch["advantages"], batch["weights"], settings,
        eps_low=batch["eps_low"], eps_high=batch["eps_high"], ref_logp=batch.get("ref_logp"),
        entropy=entropy, denom=batch["denom"], n_tokens=batch.get("n_tokens"),
        is_weights=batch.get("rollout_is_weights"))
    if "sampler_logp" in batch:
        diff = jnp.abs(jax.lax.stop_gradient(logp) - batch["sampler_logp"])
        metrics["rollout_logprob_diff"] = (
            jnp.sum(diff * batch["completion_mask"]) / jnp.maximum(batch["n_completion"], 1))
    # optax.MultiSteps averages the micro-batch gradients; each micro-batch loss is already a
    # share of the mini-batch loss (normalised by the mini-batch denominator)
    return loss * accum, metrics


def _jitted(run, graphdef, tx, lora, mesh, state_sh):
    """(sampler, merge(state), logprobs(params, batch), update(state, batch)). The last two
    declare their in_shardings: the parameters' or the state's, and the batch's logical axes
    (`sharding.BATCH_AXES`: rollout rows split like the batch), docs/sharding.md."""
    import functools

    from guard_jax.run_config import model_config
    from guard_jax.sampling import SamplingParams
    from guard_jax.sampling.engines import make_engine
    from guard_jax.training.train_step import jit_with_batch, make_train_step

    g, mc = run.grpo.to_dict(), model_config(run)
    settings = L.LossSettings.from_config(g)
    sampler = make_engine(g["rollout_engine"], graphdef, SamplingParams(
        max_new_tokens=g["max_new_tokens"], eos_token_ids=mc.generation_eos_ids,
        pad_token_id=mc.generation_pad_id, temperature=g["temperature"], top_p=g["top_p"],
        top_k=g["top_k"], num_samples=g["num_generations"]), mesh=mesh,
        slots=g["rollout_slots"])
    accum = run.train.global_batch // run.train.micro_batch
    merge = jax.jit(functools.partial(_merged_params, lora), out_shardings=state_sh["params"])
    logprobs = jit_with_batch(functools.partial(_logprobs, graphdef, mesh, g["temperature"]),
                              mesh, state_sh["params"])
    update = make_train_step(graphdef, tx, mesh=mesh,
                             loss_fn=functools.partial(_loss, settings, accum),
                             state_shardings=state_sh, lora=lora)
    return sampler, merge, logprobs, update


# ---------------------------------------------------------------------------- the trainer
class GRPOTrainer:
    """Holds what a run builds once (mesh, model graph, sampler, reward, jitted functions);
    `train()` below drives it."""

    def __init__(self, run, workdir: str):
        from flax import nnx

        from data_pipeline.local_files import load_tokenizer
        from guard_jax.run_config import model_config
        from guard_jax.sharding import make_mesh
        from guard_jax.training.grpo_rewards import RolloutReward
        from guard_jax.training.lora import from_run, lora_shapes
        from guard_jax.training.optim import make_optimizer
        from guard_jax.training.sft import tokenizer_key
        from guard_jax.training.train_step import init_train_state

        self.run, self.g = run, run.grpo
        self.order: dict = {}  # the last step's prompt ids (rolled out, trained)
        self.G = self.g.num_generations
        self.mc = mc = model_config(run)
        self.mesh = make_mesh(dict(run.mesh))
        self.tokenizer_dir = run.data.tokenizer_dir or run.model.hf_dir
        if not self.tokenizer_dir:
            raise ValueError("no tokenizer: set data.tokenizer_dir (or model.hf_dir)")
        model = self._initial_model()
        self.graphdef, params = nnx.split(model, nnx.Param)
        self.lora = from_run(run)
        self.accum = run.train.global_batch // run.train.micro_batch
        rollouts = self.g.prompts_per_step * self.G
        self.updates_per_step = self.g.num_epochs * rollouts // run.train.global_batch
        self.tx, self.schedule = make_optimizer(
            run.optim, total_steps=run.train.steps * self.updates_per_step,
            accumulation=self.accum,
            params=params if self.lora is None else lora_shapes(params, self.lora))
        _, self.state = init_train_state(model, self.tx, self.mesh, lora=self.lora,
                                         seed=run.train.seed)
        del model, params
        self.needs_ref = self.g.kl_coef > 0 or self.g.kl_in_reward_coef > 0
        self.skip_old_logprob = skips_old_logprob(run)
        # the KL-in-reward coefficient; its value is saved with each checkpoint (train below)
        self.kl_ctrl = KLController(self.g.kl_in_reward_coef, self.g.kl_ctrl_type,
                                    self.g.kl_target, self.g.kl_horizon)
        self.ref_params = None
        if self.needs_ref and self.lora is None:  # with LoRA the frozen base is the reference
            self.ref_params = nnx.split(self._initial_model(), nnx.Param)[1]
        reward_args = (self.g.reward or run.data.recipe, self.tokenizer_dir, mc.text.vocab_size,
                       self.G, self.g.reward_knobs, self.g.similarity_model)
        if _REWARD.get("args") != reward_args:  # its jitted parse, too, survives a resume
            name, tok_dir, vocab, g, knobs, sim = reward_args
            tokenizer = load_tokenizer(tok_dir, key=tokenizer_key(run))
            _REWARD.update(args=reward_args, reward=RolloutReward(
                name, tokenizer, vocab_size=vocab, num_generations=g, knobs=knobs,
                similarity_model=sim))
        self.reward = _REWARD["reward"]
        key = _compile_key(run)
        if key not in _COMPILED:  # a resumed or repeated run in this process reuses them
            _COMPILED.clear()
            _COMPILED[key] = _jitted(run, self.graphdef, self.tx, self.lora, self.mesh,
                                     jax.tree.map(lambda x: x.sharding, self.state))
        self.sampler, self._merge, self._logp, self._update = _COMPILED[key]

    # -- pieces
    def _initial_model(self):
        from guard_jax.models.qwen2_5_vl import init_model, load_hf
        mc, run = self.mc, self.run
        if run.model.hf_dir:
            return load_hf(run.model.hf_dir, dtype=mc.param_dtype, compute_dtype=mc.dtype,
                           mesh=self.mesh, remat=mc.remat, attention_impl=mc.attention_impl)
        return init_model(mc, seed=run.train.seed, mesh=self.mesh)

    def _put(self, batch: dict, rules=None) -> dict:
        from guard_jax.sharding import TRAIN_RULES, batch_shardings, put_batch
        return put_batch(batch, batch_shardings(batch, self.mesh, rules or TRAIN_RULES))

    # -- phases
    def rollout_chunk(self, raw: dict, params, rng) -> dict:
        """One chunk of prompts -> G samples each, their reward terms."""
        from guard_jax.sharding import SAMPLE_RULES
        raw = left_pad(raw)
        batch = self._put(prompt_inputs(raw, self.mc), SAMPLE_RULES)
        out = jax.block_until_ready(self.sampler(params, batch, rng))
        return {"raw": raw, "tokens": out.tokens, "mask": out.completion_mask,
                "finished": out.finished, "sampler_logp": out.logprobs}

    def rollout(self, loader, step: int, timing: dict) -> tuple[dict, dict]:
        """Rollouts of a step after dynamic sampling: P groups, every array static."""
        g, G, P, C = self.g, self.G, self.g.prompts_per_step, self.g.rollout_chunk_prompts
        t = time.perf_counter()
        params = self.sampler.place_state(self._merge(self.state))
        key = jax.random.fold_in(jax.random.key(self.run.train.seed), step)
        chunks, valid, stats = [], np.zeros((0,), bool), {}
        fkey = "total" if g.filter_key == "final" else g.filter_key  # "final": see step()
        reward_s = 0.0
        first = P
        if g.dynamic_sampling == "overgenerate":
            first = math.ceil(g.overgenerate_factor * P / C) * C
        want, tries = first, 0
        while True:
            for _ in range(want // C):
                chunk = self.rollout_chunk(next(loader), params,
                                           jax.random.fold_in(key, len(chunks)))
                t_r = time.perf_counter()
                chunk["terms"] = self.reward(chunk["tokens"], chunk["mask"],
                                             chunk["raw"]["reward_labels"],
                                             ids=chunk["raw"].get("ids"))
                if g.overlong_buffer_len:
                    chunk["terms"] = with_overlong_penalty(
                        chunk["terms"], chunk["mask"], max_len=g.max_new_tokens,
                        buffer_len=g.overlong_buffer_len, factor=g.overlong_penalty_factor)
                zero = ~host_array(L.valid_groups(chunk["terms"][fkey], G, by=g.filter_by,
                                                  low=g.filter_low, high=g.filter_high))
                reward_s += time.perf_counter() - t_r
                chunks.append(chunk)
                valid = np.concatenate([valid, ~zero])
            if (g.dynamic_sampling != "regenerate" or valid.sum() >= P
                    or tries >= g.max_regenerations):
                break
            tries, want = tries + 1, P
        if g.dynamic_sampling in ("off", "mask"):
            take = np.arange(P)
            weight = valid.astype(np.float32) if g.dynamic_sampling == "mask" else np.ones(P)
        else:
            take, weight = (np.asarray(a) for a in L.select_groups(valid, P))
        rows = np.asarray(L.rows_of_groups(take, G))
        data = {k: jnp.take(jnp.concatenate([c[k] for c in chunks]), rows, axis=0)
                for k in ("tokens", "mask", "finished", "sampler_logp")}
        terms = {k: jnp.take(jnp.concatenate([c["terms"][k] for c in chunks]), rows, axis=0)
                 for k in chunks[0]["terms"]}
        data["raw"] = take_prompts(concat_prompts([c["raw"] for c in chunks]), take)
        # the step's prompts (every process holds all of them) for data_order.jsonl
        self.order = {"ids": [str(i) for c in chunks for i in c["raw"].get("ids", ())],
                      "trained": [str(i) for i in data["raw"].get("ids", ())]}
        data["group_weight"] = jnp.asarray(np.repeat(weight, G), jnp.float32)
        jax.block_until_ready(data["tokens"])
        timing["timing_s/reward"] = reward_s
        timing["timing_s/gen"] = time.perf_counter() - t - reward_s
        all_terms = {k: jnp.concatenate([c["terms"][k] for c in chunks]) for k in terms}
        stats.update({"frac_reward_zero_std": float(np.mean(host_array(
                          L.zero_std_groups(all_terms[fkey], G)))),
                      "dyn/rollout_prompts": float(valid.size), "dyn/valid_groups":
                      float(valid.sum()), "dyn/trained_groups": float(np.sum(weight > 0)),
                      "dyn/regenerations": float(tries),
                      "dyn/bound_hit": float(g.dynamic_sampling in ("overgenerate", "regenerate")
                                             and valid.sum() < P)})
        for k, v in all_terms.items():
            stats[f"reward/{k}/frac_zero_std"] = float(np.mean(host_array(
                L.zero_std_groups(v, G))))
        if stats["dyn/bound_hit"]:
            log.warning("step %d: %d of %d groups have reward spread after %d regenerations; "
                        "training on them, the rest masked", step, int(valid.sum()), P, tries)
        return dict(data, terms=terms), stats

    def logprobs(self, params, data: dict, prompts: PromptInputs) -> jax.Array:
        size = self.g.logprob_micro_batch or self.run.train.micro_batch
        slices = list(micro_slices(0, data["tokens"].shape[0], size, self.G))
        index = self._head_indices(data, [rs for rs, _ in slices])
        out = []
        for i, (rs, ps) in enumerate(slices):
            batch = dict(prompts(ps), completion=data["tokens"][rs],
                         completion_mask=data["mask"][rs], **index[i])
            out.append(self._logp(params, batch))
        return jnp.concatenate(out)

    def _head_indices(self, data: dict, slices: list) -> list[dict]:
        """Each micro-batch's `head_index` field (grpo.compact_head), or empty dicts."""
        if not self.g.compact_head:
            return [{} for _ in slices]
        rows = slices[0].stop - slices[0].start
        return [{"head_index": i} for i in filled_head.pass_indices(
            host_array(data["mask"]), slices, row_shards(rows, self.mesh))]

    def update(self, data: dict, prompts: PromptInputs, step: int) -> dict:
        g, run = self.g, self.run
        eps_low, eps_high = L.clip_ratios(g.clip_schedule, g.clip_ratio_low, g.clip_ratio_high,
                                          step, run.train.steps)
        rows, mb, micro = data["tokens"].shape[0], run.train.global_batch, run.train.micro_batch
        sums, count, skipped = {}, 0, 0
        slices = [rs for rs, _ in micro_slices(0, rows, micro, self.G)]
        index = dict(zip((rs.start for rs in slices), self._head_indices(data, slices)))
        for _ in range(g.num_epochs):
            for m in range(rows // mb):
                lo = m * mb
                w = data["weights"][lo:lo + mb]
                denom = L.loss_denominator(w, g.loss_agg_mode, g.loss_scale_factor)
                if float(host_array(jnp.sum(w))) == 0:  # all masked: an update would only decay
                    skipped += 1
                    continue
                mini = {}
                n_completion = jnp.sum(data["mask"][lo:lo + mb].astype(jnp.float32))
                for rs, ps in micro_slices(lo, lo + mb, micro, self.G):
                    batch = dict(prompts(ps), completion=data["tokens"][rs],
                                 completion_mask=data["mask"][rs],
                                 weights=data["weights"][rs],
                                 advantages=data["advantages"][rs], eps_low=eps_low,
                                 eps_high=eps_high, denom=denom, n_tokens=jnp.sum(w),
                                 **index[rs.start])
                    if "old_logp" not in data:  # on-policy: the loss measures the mismatch
                        batch.update(sampler_logp=data["sampler_logp"][rs],
                                     n_completion=n_completion)
                    for k in ("old_logp", "ref_logp", "rollout_is_weights"):
                        if k in data:
                            batch[k] = data[k][rs]
                    self.state, metrics = self._update(self.state, batch)
                    # each micro-batch's value is its share of the mini-batch's: add up
                    # (the gradient norm, of one micro-batch's gradient, is averaged)
                    for k, v in metrics.items():
                        mini[k] = mini.get(k, 0.0) + (v / self.accum if k == "grad_norm"
                                                      else v)
                for k, v in mini.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        out = {("actor/" + k if k not in ("loss", "grad_norm") else k): float(v) / count
               for k, v in sums.items()}
        if not count:  # nothing trained this step: log zeros, not gaps
            out = {"loss": 0.0, "grad_norm": 0.0}
        out.update({"clip/eps_low": float(eps_low), "clip/eps_high": float(eps_high),
                    "actor/skipped_minibatches": float(skipped)})
        return out

    def step(self, loader, step: int) -> dict:
        g, G = self.g, self.G
        timing = {}
        t0 = time.perf_counter()
        data, stats = self.rollout(loader, step, timing)
        prompts = PromptInputs(data["raw"], self.mc)
        t = time.perf_counter()
        if not self.skip_old_logprob:  # skipped: the loss takes stop_gradient(current)
            params = self._merge(self.state)
            data["old_logp"] = self.logprobs(params, data, prompts)
            jax.block_until_ready(data["old_logp"])
        timing["timing_s/old_log_prob"] = time.perf_counter() - t
        mask_f = data["mask"].astype(jnp.float32)
        if self.needs_ref:
            t = time.perf_counter()
            ref = self.ref_params if self.ref_params is not None else self.state["params"]
            data["ref_logp"] = self.logprobs(ref, data, prompts)
            jax.block_until_ready(data["ref_logp"])
            timing["timing_s/ref"] = time.perf_counter() - t
        t = time.perf_counter()
        reward, penalty = self._kl_in_reward(data, mask_f, stats)
        if g.filter_key == "final" and g.kl_in_reward_coef and g.dynamic_sampling == "mask":
            # the groups' spread (or mean) after the KL penalty (docs/grpo.md#dynamic-sampling)
            valid = L.valid_groups(reward, G, by=g.filter_by, low=g.filter_low,
                                   high=g.filter_high)
            data["group_weight"] = jnp.repeat(valid.astype(jnp.float32), G)
            stats["dyn/trained_groups"] = float(jnp.sum(valid))
        data["advantages"] = compute_advantages(
            g.adv_estimator, reward, G, mask=mask_f, penalty=penalty,
            norm_by_std=g.norm_adv_by_std, eps=g.adv_eps)
        keep = data["group_weight"][:, None] * mask_f
        if g.mask_truncated:
            keep = keep * data["finished"][:, None].astype(jnp.float32)
        if g.rollout_is:
            is_weights, is_keep, corr = rollout_correction(
                data["old_logp"], data["sampler_logp"], mask_f, level=g.rollout_is,
                mode=g.rollout_is_mode, threshold=g.rollout_is_threshold,
                threshold_lower=g.rollout_is_threshold_lower)
            data["rollout_is_weights"] = is_weights
            keep = keep * is_keep
            stats.update({f"rollout_corr/{k}": float(v) for k, v in corr.items()})
        data["weights"] = keep
        jax.block_until_ready(data["advantages"])
        timing["timing_s/adv"] = time.perf_counter() - t
        if g.num_epochs > 1 or self.updates_per_step > 1:
            data["old_logp"] = data["old_logp"] * mask_f  # junk after EOS never reaches exp()
        t = time.perf_counter()
        metrics = self.update(data, prompts, step)
        timing["timing_s/update"] = time.perf_counter() - t
        if "actor/rollout_logprob_diff" in metrics:
            metrics["rollout/logprob_diff"] = metrics.pop("actor/rollout_logprob_diff")
        timing["timing_s/step"] = time.perf_counter() - t0
        metrics.update(stats, **timing, **self._rollout_stats(data))
        metrics["actor/lr"] = float(self.schedule(max(int(self.state["step"]) // self.accum
                                                      - 1, 0)))
        tokens = (np.asarray(data["raw"]["attention_mask"]).sum() * self.G
                  + host_array(data["mask"]).sum())
        metrics["tokens_per_sec"] = float(tokens) / timing["timing_s/step"]
        return metrics

    def _kl_in_reward(self, data: dict, mask_f, stats: dict):
        """(reward [R] less coef x the response's summed KL, the per-token penalty [R, T] or
        None): verl's KL in the reward with the estimator grpo.kl_in_reward_penalty and the
        coefficient of the fixed or adaptive controller, which then updates (rl/kl.py)."""
        g, reward = self.g, data["terms"]["total"]
        stats["actor/kl_coef"] = float(g.kl_coef)
        if not g.kl_in_reward_coef:
            return reward, None
        kind, coef = g.kl_in_reward_penalty, self.kl_ctrl.value
        seq_kl = L.sequence_kl(data["old_logp"], data["ref_logp"], mask_f, kind)
        current = mean_sequence_kl(data["old_logp"], data["ref_logp"], mask_f, kind)
        stats.update({"kl_in_reward/mean": float(jnp.mean(seq_kl)),
                      "actor/reward_kl_penalty": current,
                      "actor/reward_kl_penalty_coeff": coef})
        penalty = coef * L.kl_penalty(data["old_logp"], data["ref_logp"], kind) * mask_f
        self.kl_ctrl.update(current, n_steps=int(reward.shape[0]))
        return reward - coef * seq_kl, penalty

    def _rollout_stats(self, data: dict) -> dict:
        lengths = host_array(data["mask"]).sum(1)
        out = {"response_length/mean": float(lengths.mean()),
               "response_length/max": float(lengths.max()),
               "response_length/min": float(lengths.min()),
               "response_length/clip_ratio": float(1.0 - host_array(data["finished"]).mean()),
               "prompt_length/mean": float(np.asarray(data["raw"]["attention_mask"]).sum(1)
                                           .mean())}
        for k, v in data["terms"].items():
            out[f"reward/{k}/mean"] = float(jnp.mean(v))
            out[f"reward/{k}/std"] = float(jnp.std(v))
        out["reward/mean"] = out["reward/total/mean"]
        out["advantages/abs_mean"] = float(jnp.mean(jnp.abs(data["advantages"])))
        if "old_logp" in data:  # else the update measures it (_loss)
            mask = host_array(data["mask"]).astype(bool)
            diff = np.abs(host_array(data["sampler_logp"]) - host_array(data["old_logp"]))[mask]
            out["rollout/logprob_diff"] = float(diff.mean()) if diff.size else 0.0
        return out


# ---------------------------------------------------------------------------- the loop
def build_loader(run, model_config, *, tokenizer_dir: str):
    """The SFT loader in RL form: generation prompts of one static length with their reward
    labels, grpo.rollout_chunk_prompts per batch over all processes."""
    from data_pipeline.build import open_source
    from data_pipeline.loader import make_loader
    from guard_jax.errors import InputError
    from guard_jax.training.global_loader import GlobalLoader
    from guard_jax.training.sft import tokenizer_key

    if not run.data.path:
        raise ValueError("data.path is empty: point it at a dataset built by `guard-jax data "
                         "build` (--config.data.path=DIR)")
    n = jax.process_count()
    if run.grpo.rollout_chunk_prompts % n:
        raise InputError(f"grpo.rollout_chunk_prompts={run.grpo.rollout_chunk_prompts} does "
                         f"not split over the job's {n} processes: make it a multiple of {n}")
    source = open_source(run.data.path, run.data.split)

    def make(index, count):
        return make_loader(source, loader_config(run, pad_id=model_config.generation_pad_id,
                                                 shard_index=index, shard_count=count),
                           tokenizer_dir=tokenizer_dir, tokenizer_key=tokenizer_key(run))
    # each process reads its share; every chunk is gathered into the global one, the same on
    # every process (docs/grpo-multihost.md)
    return GlobalLoader(make, n, jax.process_index())


def loader_config(run, *, pad_id: int, shard_index: int = 0, shard_count: int = 1):
    """The GRPO loader's settings for `run`: generation prompts without targets, one static
    length, a fresh permutation per epoch (docs/data.md). `guard-jax data build
    --check-config` checks records against the same."""
    from data_pipeline.loader import LoaderConfig, video_options
    return LoaderConfig(
        recipe=run.data.recipe,
        recipe_options=(("mode", run.data.recipe_mode),) if run.data.recipe_mode else (),
        buckets=(run.grpo.max_prompt_len,),
        batch_size=run.grpo.rollout_chunk_prompts // shard_count,
        images_per_sample=run.data.images_per_sample, min_pixels=run.data.min_pixels,
        max_pixels=run.data.max_pixels, seed=run.train.seed, num_epochs=None,
        worker_count=run.data.worker_count, on_error=run.data.on_error,
        quarantine_path=os.path.join(run.workdir, "quarantine.jsonl"),
        shard_index=shard_index, shard_count=shard_count, pad_id=pad_id, rl=True,
        **video_options(run.data))


def train(run, workdir: str, *, allow_config_change=()) -> dict:
    """Runs (or resumes) the GRPO job `run` (a locked run config) in `workdir`. Returns the
    last logged metrics with "step" (rollout steps done). A resume refuses config changes that
    alter the checkpoint's meaning unless their keys are in `allow_config_change`."""
    from guard_jax.training import checkpoint as ckpt_lib
    from guard_jax.training import resume
    from guard_jax.training.metrics import MetricsWriter, check_finite

    os.makedirs(workdir, exist_ok=True)
    run.workdir = str(workdir)
    resume.check_config(run, workdir, allow=allow_config_change)  # before any device work
    trainer = GRPOTrainer(run, workdir)
    loader = build_loader(run, trainer.mc, tokenizer_dir=trainer.tokenizer_dir)
    ckpt = ckpt_lib.Checkpointer(workdir, keep=run.train.keep_checkpoints,
                                 every_steps=run.train.checkpoint_every,
                                 config=json.loads(run.to_json()), seed=run.train.seed)
    ckpt_lib.install_sigterm_handler()
    trainer.state, start = resume.restore(ckpt, trainer.state, loader)
    if start:  # the adaptive KL coefficient continues from the checkpoint's
        extra = ckpt.read_meta(start).get("extra") or {}
        trainer.kl_ctrl.value = extra.get("kl_ctrl", trainer.kl_ctrl.value)
    writer = MetricsWriter(workdir, process_index=jax.process_index(),
                           total_steps=run.train.steps, initial_step=start)
    # Every prompt each step rolled out ("ids") and those it trained on ("trained"), over all
    # processes; steps re-run after a crash appear again, the later line wins.
    order = (open(os.path.join(workdir, "data_order.jsonl"), "a", encoding="utf-8")
             if jax.process_index() == 0 else None)
    last: dict = {}
    step = start
    try:
        for step in range(start, run.train.steps):
            metrics = trainer.step(loader, step)
            done = step + 1
            check_finite(done, metrics)  # never log-and-continue or save a diverged state
            if order is not None:
                order.write(json.dumps({"step": done, **trainer.order}) + "\n")
                order.flush()
            if done % run.train.log_every == 0 or done == run.train.steps:
                writer.write(done, metrics)
            last = metrics
            if ckpt.maybe_save(done, trainer.state, data_state=loader.get_state(),
                               rng=jax.random.key(run.train.seed),
                               extra={"kl_ctrl": trainer.kl_ctrl.value},
                               force=done == run.train.steps):
                log.warning("preempted: saved step %d, exiting", done)
                step = done
                break
            step = done
    finally:
        ckpt.close()
        writer.close()
        if order is not None:
            order.close()
        loader.close()
    return {"step": step, **last}


__all__ = ["GRPOTrainer", "build_loader", "completion_logprobs", "left_pad",
           "skips_old_logprob", "train"]
