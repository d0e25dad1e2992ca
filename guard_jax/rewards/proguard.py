"""ProGuard reward on device (docs/recipes.md#proguard, docs/rewards.md).

Terms ([B] float32): `format` (whole-string grammar and the modality's line rules), `request`
(image_label_weight for images, else 1, times [q correct]), `response` (text modalities),
`category` (1 exact ID / 0.5 partial on in-taxonomy samples; on OOD samples 0 for a forced ID,
else 0.5 plus the similarity bonus for a free-text name) and `similarity_bonus`, and `total`.

One machine matches the whole string (an NFA over the grammar, determinised on the host); the
answer lines leave their values in registers (request / response label, category kind or
taxonomy index) and the category line its character and byte span. The similarity of a
free-text name to the gold category name and its synonyms comes from outside (the sentence
encoder) as `similarities` [B, K] with `similarity_mask`; the device returns, per sequence,
`needs_similarity` and the name's span (characters, bytes, tokens) so that the trainer can
encode exactly the names that count, then it applies the 0.7 / 0.6 thresholds inside jit.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from guard_jax.rewards import reference
from guard_jax.rewards.alphabet import Alphabet
from guard_jax.rewards.automata import NFA, any_char, chars, pos, reset, value
from guard_jax.rewards.machines import full_match
from guard_jax.rewards.scan import Program, ScanResult

# ProGuard's taxonomy (docs/recipes.md#proguard): main categories and their subcategories, as the
# gold `category`.
SUBCATEGORIES = (3, 2, 3, 2, 2, 2, 3, 3, 3, 3, 2)
TAXONOMY = tuple(x for i, n in enumerate(SUBCATEGORIES, 1)
                 for x in (f"C{i}", *(f"C{i}S{j}" for j in range(1, n + 1))))

SAFE, UNSAFE = 0, 1
KIND_EMPTY, KIND_FREE, KIND_OTHER_ID, KIND_NONE, KIND_TAXONOMY = 0, 1, 2, 3, 4
MODALITY_CODES = {m: i for i, m in enumerate(reference.PG_MODALITIES)}
IMAGE = MODALITY_CODES["image"]
DIGITS = "0123456789"


@dataclasses.dataclass(frozen=True)
class ProGuardConfig:
    """think_tag: `thinking` as the released reward requires (the deploy prompts say `think`;
    keep the prompt and this in agreement, docs/recipes.md#proguard). category_mode `faithful` keeps
    the released 0.5 for a wrong `Request:safe` on an OOD unsafe image; `fixed` gives it no category
    term."""
    think_tag: str = "thinking"
    image_label_weight: float = 2.0
    category_mode: str = "faithful"
    ood_base: float = 0.5
    partial_category: float = 0.5
    bonus_scale: float = 0.5
    sim_max_threshold: float = 0.7
    sim_mean_threshold: float = 0.6
    taxonomy: tuple[str, ...] = TAXONOMY

    def __post_init__(self):
        if self.category_mode not in ("faithful", "fixed"):
            raise ValueError(f"proguard reward: category_mode {self.category_mode!r} is not "
                             "'faithful' or 'fixed'")
        if not self.think_tag or any(c in self.think_tag for c in "<>/\r\n"):
            raise ValueError(f"proguard reward: think_tag {self.think_tag!r} must be a bare "
                             "tag name")
        for k in ("sim_max_threshold", "sim_mean_threshold"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"proguard reward: {k} must be in [0, 1)")
        bad = [c for c in self.taxonomy if not reference.PG_ID.fullmatch(c)]
        if bad or len(set(self.taxonomy)) != len(self.taxonomy):
            raise ValueError(f"proguard reward: taxonomy entries must be distinct C<i>[S<j>] "
                             f"ids; bad: {bad}")
        if len(self.taxonomy) > 200:
            raise ValueError("proguard reward: at most 200 taxonomy ids")


def _grammar(think_tag: str, taxonomy: tuple[str, ...]) -> tuple[NFA, int, set[str]]:
    nfa = NFA()
    start = nfa.node()

    def not_newline(ch):
        return ch not in "\r\n"

    def newline(a, events=(), to=None):
        """`\n` or `\r\n` from `a` (to `to` when given); `events` fire on its first character."""
        b, r = to if to is not None else nfa.node(), nfa.node()
        nfa.edge(a, chars("\n"), b, events)
        nfa.edge(a, chars("\r"), r, events)
        nfa.edge(r, chars("\n"), b)
        return b

    def label(a, register, extra=()):
        """safe | unsafe; its last letter sets the register."""
        b = nfa.node()
        for word, code in (("safe", SAFE), ("unsafe", UNSAFE)):
            nfa.edge(nfa.literal(a, word[:-1]), chars(word[-1]), b,
                     ((register, value(code), 1), *extra))
        return b

    a = nfa.literal(start, f"<{think_tag}>")
    nfa.edge(a, any_char, a)
    a = newline(nfa.literal(a, f"</{think_tag}>"))
    a = nfa.literal(newline(nfa.literal(a, "<answer>")), "Request:")
    request_done = newline(label(a, "request", (("response", reset(), 1),)))
    response_done = newline(label(nfa.literal(request_done, "Response:"), "response"))
    cat = nfa.node()
    for a in (request_done, response_done):
        nfa.edge(nfa.literal(a, "Category"), chars(":"), cat,
                 (("cat_first", reset(), 1), ("cat_end", reset(), 1)))
    tail = nfa.node()                        # after the category line's line break
    nfa.accept[nfa.literal(tail, "</answer>")] = "ok"

    def category_end(node, kind_code, priority):
        # the line break records the kind (the highest priority among the live readings of the
        # line: None > taxonomy id > other id > free text > empty) and where the name ends
        newline(node, (("kind", value(kind_code), priority), ("cat_end", pos(), 1)), to=tail)

    first = (("cat_first", pos(), 1),)
    category_end(cat, KIND_EMPTY, 1)
    free = nfa.node()
    nfa.edge(cat, not_newline, free, first)
    nfa.edge(free, not_newline, free)
    category_end(free, KIND_FREE, 2)
    none = nfa.node()
    nfa.edge(cat, chars("N"), none, first)
    category_end(nfa.literal(none, "one"), KIND_NONE, 4)
    c_node, digits1, s_node, digits2 = (nfa.node() for _ in range(4))   # C<d+>[S<d+>]
    nfa.edge(cat, chars("C"), c_node, first)
    for a, b in ((c_node, digits1), (digits1, digits1), (s_node, digits2), (digits2, digits2)):
        nfa.edge(a, chars(DIGITS), b)
    nfa.edge(digits1, chars("S"), s_node)
    category_end(digits1, KIND_OTHER_ID, 3)
    category_end(digits2, KIND_OTHER_ID, 3)
    for k, cid in enumerate(taxonomy):
        x = nfa.node()
        nfa.edge(cat, chars(cid[0]), x, first)
        category_end(nfa.literal(x, cid[1:]), KIND_TAXONOMY + k, 4)

    words = (f"<{think_tag}>", f"</{think_tag}>", "<answer>", "</answer>", "Request:",
             "Response:", "Category:", "safe", "unsafe", "None", "CS", DIGITS, "\r\n")
    return nfa, start, {c for w in words for c in w}


def build_program(cfg: ProGuardConfig | None = None) -> Program:
    cfg = cfg or ProGuardConfig()
    return _build(cfg.think_tag, cfg.taxonomy)


@functools.lru_cache(maxsize=None)
def _build(think_tag: str, taxonomy: tuple[str, ...]) -> Program:
    nfa, start, named = _grammar(think_tag, taxonomy)
    regs = {"request": "last", "response": "last", "kind": "last", "cat_first": "last",
            "cat_end": "last"}
    return Program.build(Alphabet(named), [full_match("answer", nfa, start, regs)])


def encode_gold(records, cfg: ProGuardConfig) -> dict[str, np.ndarray]:
    """query_label / response_label (safe, unsafe) -> 0 / 1; modality -> 0 text, 1 text-image,
    2 image; category ("" for OOD, else a taxonomy id) -> taxonomy index or -1."""
    out = {"query_label": [], "response_label": [], "modality": [], "category": []}
    index = {c: i for i, c in enumerate(cfg.taxonomy)}
    for i, rec in enumerate(records):
        def field(name, allowed):
            v = rec.get(name)
            if v not in allowed:
                raise ValueError(f"proguard reward: record {i}, field {name!r}: {v!r} is not "
                                 f"one of {sorted(allowed)}")
            return v
        out["query_label"].append(field("query_label", ("safe", "unsafe")) == "unsafe")
        out["response_label"].append(field("response_label", ("safe", "unsafe")) == "unsafe")
        out["modality"].append(MODALITY_CODES[field("modality", MODALITY_CODES)])
        cat = rec.get("category")
        if cat != "" and cat not in index:
            raise ValueError(f"proguard reward: record {i}, field 'category': {cat!r} is "
                             "neither '' (OOD) nor an id of the configured taxonomy")
        out["category"].append(-1 if cat == "" else index[cat])
    return {k: np.asarray(v, np.int32) for k, v in out.items()}


def reference_terms(text: str, record: dict, cfg: ProGuardConfig, *,
                    similarity=None) -> dict[str, float]:
    return reference.proguard_terms(
        text, query_label=record["query_label"], response_label=record["response_label"],
        category=record["category"], original_category=record.get("original_category", ""),
        synonymous_phrase=record.get("synonymous_phrase", ()), modality=record["modality"],
        similarity=similarity or (lambda a, b: 0.0), cfg=cfg)


def parse_outputs(res: ScanResult, gold: dict, cfg: ProGuardConfig) -> dict:
    """Everything but the similarity: format, labels, category kind, the name's span, and
    whether this sample's reward needs a similarity (an OOD sample with a free-text name)."""
    out, regs, regb = res.outputs[0], res.registers[0], res.register_bytes[0]
    q, s, kind = regs["request"], regs["response"], regs["kind"]
    image = jnp.asarray(gold["modality"]) == IMAGE
    none = kind == KIND_NONE
    legal = jnp.where(image, (s < 0) & ((q == SAFE) == none),
                      (s >= 0) & (((q == SAFE) & (s == SAFE)) == none))
    fmt = (out["accept"] == 1) & legal
    gq, gs = jnp.asarray(gold["query_label"]), jnp.asarray(gold["response_label"])
    early = ((gq == SAFE) & (gs == SAFE)) | ((q == SAFE) & (s == SAFE))
    if cfg.category_mode == "fixed":
        early |= image & (q == SAFE)
    ood = jnp.asarray(gold["category"]) < 0
    free = kind == KIND_FREE
    start, end = regs["cat_first"], regs["cat_end"]
    has_name = fmt & free & (start >= 0)
    zero = jnp.zeros_like(start)
    name_chars = jnp.stack([jnp.where(has_name, start, zero), jnp.where(has_name, end, zero)], -1)
    b0, b1 = regb["cat_first"], regb["cat_end"]
    name_bytes = jnp.stack([jnp.where(has_name, b0, zero), jnp.where(has_name, b1, zero)], -1)
    # tokens holding the name's bytes: [token of its first byte, token of its last byte + 1)
    t0 = res.token_of_byte(jnp.where(has_name, b0, -1))
    t1 = res.token_of_byte(jnp.where(has_name, b1 - 1, -1)) + 1
    name_tokens = jnp.stack([jnp.where(has_name, t0, zero), jnp.where(has_name, t1, zero)], -1)
    return {"format": fmt, "request": q, "response": s, "kind": kind, "early": early,
            "ood": ood, "needs_similarity": fmt & ~early & ood & free,
            "name_chars": name_chars, "name_bytes": name_bytes, "name_tokens": name_tokens}


def similarity_bonus(similarities, similarity_mask, cfg: ProGuardConfig):
    sims = jnp.asarray(similarities, jnp.float32)
    m = jnp.asarray(similarity_mask, bool)
    mx = jnp.max(jnp.where(m, sims, -jnp.inf), axis=-1)
    mean = jnp.sum(jnp.where(m, sims, 0.0), -1) / jnp.maximum(m.sum(-1), 1)
    b1 = cfg.bonus_scale * (mx - cfg.sim_max_threshold) / (1.0 - cfg.sim_max_threshold)
    b2 = cfg.bonus_scale * (mean - cfg.sim_mean_threshold) / (1.0 - cfg.sim_mean_threshold)
    return jnp.where(((b1 > 0) | (b2 > 0)) & m.any(-1), jnp.maximum(b1, b2), 0.0)


def device_terms(res: ScanResult, gold: dict, cfg: ProGuardConfig, program: Program, *,
                 similarities=None, similarity_mask=None) -> dict:
    f32 = jnp.float32
    p = parse_outputs(res, gold, cfg)
    image = jnp.asarray(gold["modality"]) == IMAGE
    fmt = p["format"]
    q_ok = p["request"] == jnp.asarray(gold["query_label"])
    s_ok = p["response"] == jnp.asarray(gold["response_label"])
    r_q = jnp.where(fmt & q_ok, jnp.where(image, cfg.image_label_weight, 1.0), 0.0)
    r_s = jnp.where(fmt & ~image & s_ok, 1.0, 0.0)
    kind = p["kind"]
    is_id = (kind == KIND_OTHER_ID) | (kind >= KIND_TAXONOMY)
    exact = kind - KIND_TAXONOMY == jnp.asarray(gold["category"])
    bonus = jnp.zeros(kind.shape, f32)
    if similarities is not None:
        mask = jnp.ones(jnp.shape(similarities), bool) if similarity_mask is None \
            else similarity_mask
        bonus = jnp.where(p["needs_similarity"], similarity_bonus(similarities, mask, cfg), 0.0)
    r_ood = jnp.where(is_id, 0.0, cfg.ood_base + bonus)
    r_in = jnp.where(exact & (kind >= KIND_TAXONOMY), 1.0,
                     jnp.where(is_id, cfg.partial_category, 0.0))
    r_cat = jnp.where(fmt & ~p["early"], jnp.where(p["ood"], r_ood, r_in), 0.0)
    bonus = jnp.where(fmt & ~p["early"] & p["ood"] & ~is_id, bonus, 0.0)
    return {"format": fmt.astype(f32), "request": r_q.astype(f32), "response": r_s.astype(f32),
            "category": r_cat.astype(f32), "similarity_bonus": bonus.astype(f32),
            "total": (r_q + r_s + r_cat).astype(f32),
            "needs_similarity": p["needs_similarity"], "name_chars": p["name_chars"],
            "name_bytes": p["name_bytes"], "name_tokens": p["name_tokens"]}


GOLD_FIELDS = ("query_label", "response_label", "modality", "category")

__all__ = ["GOLD_FIELDS", "ProGuardConfig", "TAXONOMY", "build_program", "device_terms",
           "encode_gold", "parse_outputs", "reference_terms", "similarity_bonus"]
