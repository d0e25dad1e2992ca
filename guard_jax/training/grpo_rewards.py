"""The GRPO trainer's side of the rewards: labels from the loader -> the recipe's reward terms.

The recipe renderers (data_pipeline.prompts) emit each sample's ground truth as a `labels`
dict; the device rewards (guard_jax.rewards) read `encode_gold` records. This maps the one to
the other per recipe, repeats each prompt's gold over its G samples, and runs the jitted reward
on the generated token ids. ProGuard's out-of-taxonomy name similarity (docs/recipes.md#proguard,
docs/rewards.md#sentence-encoder) is the one host step: the device parse says which rows need a similarity and where the
name's bytes are; only those names are encoded (the on-device sentence encoder) against the
gold category name and its synonyms, and the thresholds are applied back inside jit.
"""

from __future__ import annotations

import ast
import logging

import jax
import numpy as np

from guard_jax.errors import InputError

log = logging.getLogger(__name__)


def parse_knobs(text: str, where: str = "grpo.reward_knobs") -> dict:
    """"mode=paper,beta=1.0" -> {"mode": "paper", "beta": 1.0} (values as Python literals,
    else strings)."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        if "=" not in item:
            raise InputError(f"{where}: {item!r} is not key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def gold_record(recipe: str, labels: dict, where: str) -> dict:
    """A renderer's `labels` -> the reward's gold record. GuardReasoner-VL's renderer names the
    request label `prompt_label` (the schema's word); its reward reads `request_label`."""
    if recipe == "guardreasoner_vl":
        try:
            return {"request_label": labels["prompt_label"],
                    "response_label": labels["response_label"]}
        except KeyError as e:
            raise InputError(f"{where}: reward labels lack {e.args[0]!r}; got "
                             f"{sorted(labels)}") from None
    return dict(labels)


def overlong_penalty(lengths, *, max_len: int, buffer_len: int, factor: float = 1.0):
    """DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13) for response lengths [R]: 0 up
    to max_len - buffer_len tokens, then falling linearly to -factor at max_len (and below
    it beyond), i.e. min(0, -(|y| - (max_len - buffer_len)) / buffer_len) x factor, as verl's
    overlong_buffer (len, penalty_factor) computes it."""
    import jax.numpy as jnp
    exceed = jnp.asarray(lengths, jnp.float32) - float(max_len - buffer_len)
    return jnp.minimum(-exceed / float(buffer_len) * factor, 0.0)


def with_overlong_penalty(terms: dict, mask, *, max_len: int, buffer_len: int,
                          factor: float) -> dict:
    """The reward terms plus `overlong` (the penalty of each response's length, the number of
    tokens in its completion mask) added into `total`."""
    import jax.numpy as jnp
    pen = overlong_penalty(jnp.sum(jnp.asarray(mask, jnp.float32), axis=-1), max_len=max_len,
                           buffer_len=buffer_len, factor=factor)
    return dict(terms, overlong=pen, total=terms["total"] + pen)


class RolloutReward:
    """`reward(tokens [R, N], mask [R, N], labels: list of P dicts) -> {term: [R] float32}`
    for R = P x G rollouts (sample-major)."""

    def __init__(self, name: str, tokenizer, *, vocab_size: int, num_generations: int,
                 knobs: str = "", similarity_model: str = ""):
        from guard_jax.rewards import make_reward
        self.name, self.g = name, num_generations
        self.reward = make_reward(name, tokenizer, vocab_size=vocab_size, **parse_knobs(knobs))
        self.encoder = None
        if similarity_model:
            if name != "proguard":
                raise InputError(f"grpo.similarity_model is for the proguard reward, not {name!r}")
            from guard_jax.models.sentence_encoder import SentenceEncoder
            self.encoder = SentenceEncoder.load(similarity_model)
        elif name == "proguard":
            log.warning("proguard reward without grpo.similarity_model: out-of-taxonomy names "
                        "get no similarity bonus (the released code's failed-call behaviour)")

    def gold(self, labels: list[dict], ids=None) -> tuple[list[dict], dict]:
        records = []
        want_tag = getattr(self.reward.cfg, "think_tag", None)
        for i, lab in enumerate(labels):
            where = f"sample {ids[i] if ids is not None else i}"
            # docs/recipes.md#pitfalls-the-code-handles: a prompt asking for <think> under a reward that parses
            # <thinking> scores 0 on everything without an error; refuse it up front
            if want_tag and lab.get("think_tag", want_tag) != want_tag:
                raise InputError(f"{where}: the prompt asks for <{lab['think_tag']}> but the "
                                 f"{self.name} reward parses <{want_tag}>; set the same tag in "
                                 "the renderer and grpo.reward_knobs (think_tag=...)")
            records.append(gold_record(self.name, lab, where))
        try:
            gold = self.reward.encode_gold(records)
        except ValueError as e:
            named = f" (samples {list(ids)})" if ids is not None else ""
            raise InputError(f"reward labels{named}: {e}") from None
        return records, {k: np.repeat(v, self.g, axis=0) for k, v in gold.items()}

    def __call__(self, tokens, mask, labels: list[dict], ids=None) -> dict:
        records, gold = self.gold(labels, ids)
        if self.encoder is None:
            terms = self.reward(tokens, mask, gold)
        else:
            res = self.reward.scan(tokens, mask)
            first = self.reward.terms_from_scan(res, gold)
            sims, sim_mask = self._similarities(first, tokens, mask, records)
            terms = self.reward.terms_from_scan(res, gold, similarities=sims,
                                                similarity_mask=sim_mask)
        return {k: v for k, v in terms.items()
                if getattr(v, "ndim", 0) == 1 and jax.numpy.issubdtype(v.dtype, np.floating)}

    def _similarities(self, first: dict, tokens, mask, records):
        """Cosine of each flagged row's generated name with the gold name and its synonyms."""
        from guard_jax.distributed import host_array
        needs = host_array(first["needs_similarity"])
        phrases = [[r.get("original_category", ""), *r.get("synonymous_phrase", ())]
                   for r in records]
        k = max(len(p) for p in phrases)
        sims = np.zeros((needs.shape[0], k), np.float32)
        sim_mask = np.zeros((needs.shape[0], k), bool)
        rows = np.flatnonzero(needs)
        if not len(rows):
            return sims, sim_mask
        tokens, mask = host_array(tokens), host_array(mask).astype(bool)
        spans = host_array(first["name_bytes"])
        table = self.reward.table
        names = []
        for i in rows:
            b0, b1 = spans[i]
            names.append(table.of(tokens[i][mask[i]])[b0:b1].decode("utf-8", errors="replace"))
        wanted = [p for i in rows for p in phrases[i // self.g] if p]
        texts = list(dict.fromkeys(names + wanted))
        emb = self.encoder.encode(texts)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        index = {t: j for j, t in enumerate(texts)}
        for i, name in zip(rows, names):
            for j, p in enumerate(phrases[i // self.g]):
                if p:
                    sims[i, j] = float(emb[index[name]] @ emb[index[p]])
                    sim_mask[i, j] = True
        return sims, sim_mask


__all__ = ["RolloutReward", "gold_record", "overlong_penalty", "parse_knobs",
           "with_overlong_penalty"]
