"""Plain-Python reward references on decoded strings, one function per term.

These follow the released code as docs/recipes.md describes it; the device rewards
(`guardreasoner_vl.py`, `proguard.py`, `safeguard_vl.py`) are held equal to them by tests. Where the
reference leaves a regex flag open, the choice is written next to the pattern. Gold labels are
strings here; the device versions take them as ints (`encode_gold` in each recipe module).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

# ------------------------------------------------------------------------- GuardReasoner-VL
# Training-reward parser (docs/recipes.md#guardreasoner-vl): the first <result>...</result> block,
# case-insensitive, across lines; inside it the first `Request:` / `Response:` each followed by
# optional whitespace and a label; `none` counts as unharmful. The two label searches are
# independent.
GR_RESULT = re.compile(r"<result>(.*?)</result>", re.IGNORECASE | re.DOTALL)
GR_THINK = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
GR_LABEL = {key: re.compile(rf"{key}:\s*(harmful|unharmful|none)", re.IGNORECASE)
            for key in ("Request", "Response")}
GR_LABELS = ("harmful", "unharmful")
GR_MODES = ("paper", "code_faithful", "code_faithful_eco")


@dataclasses.dataclass(frozen=True)
class GuardReasonerVLParse:
    has_think: bool
    has_result: bool
    request: str | None    # "harmful" / "unharmful" (none -> unharmful), None if not found
    response: str | None


def guardreasoner_vl_parse(text: str) -> GuardReasonerVLParse:
    block = GR_RESULT.search(text)
    labels = {}
    for key, pat in GR_LABEL.items():
        m = pat.search(block.group(1)) if block else None
        label = m.group(1).lower() if m else None
        labels[key] = "unharmful" if label == "none" else label
    return GuardReasonerVLParse(GR_THINK.search(text) is not None, block is not None,
                                labels["Request"], labels["Response"])


def guardreasoner_vl_format(p: GuardReasonerVLParse) -> float:
    """The released code's logged format score: -1 + [has <result>] + [has <think>]."""
    return -1.0 + p.has_result + p.has_think


def guardreasoner_vl_accuracy(p: GuardReasonerVLParse, request_label: str,
                              response_label: str) -> tuple[float, float, float]:
    """(request correct, response correct, code-form acc in {-1, -0.5, 0})."""
    req = float(p.has_result and p.request == request_label)
    resp = float(p.has_result and p.response == response_label)
    acc = -1.0 if not p.has_result else -1.0 + 0.5 * req + 0.5 * resp
    return req, resp, acc


def guardreasoner_vl_length(text: str, n_tokens: int, cfg) -> float:
    """l of docs/recipes.md#guardreasoner-vl: tokens / max_response_tokens (paper) or characters /
    char_budget (code forms; the Eco form caps the characters at eco_chars)."""
    if cfg.mode == "paper":
        return n_tokens / cfg.max_response_tokens
    chars = len(text)
    if cfg.mode == "code_faithful_eco" and chars >= cfg.eco_chars:
        chars = cfg.eco_chars
    return chars / cfg.char_budget


def guardreasoner_vl_length_reward(numerator: float, length: float, cfg) -> float:
    """numerator / denominator**2 with the denominator clamped below by min_length; the paper
    form also caps it at beta: (r_safety - 1) / max(min(l, beta), l_min)**2."""
    denom = min(length, cfg.beta) if cfg.mode == "paper" else length
    return numerator / max(denom, cfg.min_length) ** 2


def guardreasoner_vl_terms(text: str, *, request_label: str, response_label: str,
                           n_tokens: int, cfg) -> dict[str, float]:
    p = guardreasoner_vl_parse(text)
    req, resp, acc = guardreasoner_vl_accuracy(p, request_label, response_label)
    length = guardreasoner_vl_length(text, n_tokens, cfg)
    if cfg.mode == "paper":
        i_format = float(p.has_think and p.has_result)
        acc = i_format * (0.5 * req + 0.5 * resp) - 1.0   # r_safety - 1
    return {"format": guardreasoner_vl_format(p), "request": req, "response": resp,
            "accuracy": acc, "length": length,
            "total": guardreasoner_vl_length_reward(acc, length, cfg)}


# ------------------------------------------------------------------------- ProGuard
# Strict full-string grammar (docs/recipes.md#proguard): no spaces after the colons, \n or \r\n line
# ends, the think tag a config value, the category a single line ([^\r\n]*, may be empty).
# Case-sensitive.
PG_MODALITIES = ("text", "text-image", "image")
PG_ID = re.compile(r"C[0-9]+S[0-9]+|C[0-9]+")


def proguard_pattern(think_tag: str) -> re.Pattern:
    nl = r"\r?\n"
    tag = re.escape(think_tag)
    return re.compile(
        rf"<{tag}>.*</{tag}>{nl}<answer>{nl}Request:(safe|unsafe){nl}"
        rf"(?:Response:(safe|unsafe){nl})?Category:([^\r\n]*){nl}</answer>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class ProGuardParse:
    query: str         # safe / unsafe
    response: str      # safe / unsafe, "" for images
    category: str      # "" for Category:None


def proguard_parse(text: str, modality: str, think_tag: str = "thinking") -> ProGuardParse | None:
    """None unless the whole string matches and obeys the modality's line rules."""
    m = proguard_pattern(think_tag).fullmatch(text)
    if m is None:
        return None
    q, s, cat = m.group(1), m.group(2), m.group(3)
    if modality == "image":
        if s is not None:
            return None
        legal = (q == "safe") == (cat == "None")
    else:
        if s is None:
            return None
        legal = (q == "safe" and s == "safe") == (cat == "None")
    if not legal:
        return None
    return ProGuardParse(q, s or "", "" if cat == "None" else cat)


def proguard_label_terms(p: ProGuardParse, *, query_label: str, response_label: str,
                         modality: str, cfg) -> tuple[float, float]:
    weight = cfg.image_label_weight if modality == "image" else 1.0
    r_q = weight * (p.query == query_label)
    r_s = 0.0 if modality == "image" else float(p.response == response_label)
    return r_q, r_s


def proguard_similarity_bonus(sims: Sequence[float], cfg) -> float:
    """max(b1, b2) when either is positive, else 0; b1 from the max similarity, b2 from the
    mean, with the hard-coded 0.7 / 0.6 thresholds of the released code."""
    b1 = cfg.bonus_scale * (max(sims) - cfg.sim_max_threshold) / (1.0 - cfg.sim_max_threshold)
    b2 = cfg.bonus_scale * (sum(sims) / len(sims) - cfg.sim_mean_threshold) / (
        1.0 - cfg.sim_mean_threshold)
    return max(b1, b2) if (b1 > 0 or b2 > 0) else 0.0


def proguard_category_terms(p: ProGuardParse, *, query_label: str, response_label: str,
                            category: str, original_category: str,
                            synonymous_phrase: Sequence[str], modality: str,
                            similarity: Callable[[str, str], float], cfg) -> tuple[float, float]:
    """(r_cat including the bonus, the bonus alone)."""
    if (query_label == "safe" and response_label == "safe") or (
            p.query == "safe" and p.response == "safe"):
        return 0.0, 0.0
    if cfg.category_mode == "fixed" and modality == "image" and p.query == "safe":
        return 0.0, 0.0
    is_id = PG_ID.fullmatch(p.category) is not None
    if category == "":
        if is_id:
            return 0.0, 0.0
        bonus = 0.0
        if p.category != "":
            sims = [similarity(p.category, original_category)] + [
                similarity(p.category, s) for s in synonymous_phrase]
            bonus = proguard_similarity_bonus(sims, cfg)
        return cfg.ood_base + bonus, bonus
    if is_id:
        return (1.0 if p.category == category else cfg.partial_category), 0.0
    return 0.0, 0.0


def proguard_terms(text: str, *, query_label: str, response_label: str, category: str,
                   original_category: str, synonymous_phrase: Sequence[str], modality: str,
                   similarity: Callable[[str, str], float], cfg) -> dict[str, float]:
    zero = {"format": 0.0, "request": 0.0, "response": 0.0, "category": 0.0,
            "similarity_bonus": 0.0, "total": 0.0}
    p = proguard_parse(text, modality, cfg.think_tag)
    if p is None:
        return zero
    r_q, r_s = proguard_label_terms(p, query_label=query_label, response_label=response_label,
                                    modality=modality, cfg=cfg)
    r_cat, bonus = proguard_category_terms(
        p, query_label=query_label, response_label=response_label, category=category,
        original_category=original_category, synonymous_phrase=synonymous_phrase,
        modality=modality, similarity=similarity, cfg=cfg)
    return {"format": 1.0, "request": r_q, "response": r_s, "category": r_cat,
            "similarity_bonus": bonus, "total": r_q + r_s + r_cat}


# ------------------------------------------------------------------------- SafeGuard-VL
# plugin.py accuracy: first <think>...</think> and first <answer>...</answer> (case-sensitive;
# DOTALL, the reading that accepts an answer on its own line); ms-swift's `format` ORM pattern.
SG_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
SG_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
SG_FORMAT = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>(?![\s\S])",
                       re.DOTALL | re.MULTILINE)


def safeguard_vl_think_ok(text: str, cfg) -> bool:
    m = SG_THINK.search(text)
    return m is not None and len(m.group(1).strip()) >= cfg.min_think_chars


def safeguard_vl_answer(text: str) -> str | None:
    """"yes" / "no", or None when there is no answer block or it holds anything else."""
    m = SG_ANSWER.search(text)
    pred = m.group(1).strip().lower() if m else None
    return pred if pred in ("yes", "no") else None


def safeguard_vl_gold(solution: str) -> str:
    """yes (= safe under the policy) iff the stripped gold answer is exactly "safe"."""
    m = SG_ANSWER.search(solution)
    return "yes" if (m.group(1) if m else solution).strip() == "safe" else "no"


def safeguard_vl_accuracy(text: str, gold: str, cfg) -> float:
    think_ok = safeguard_vl_think_ok(text, cfg)
    pred = safeguard_vl_answer(text)
    if pred is not None and pred == gold:
        r = cfg.correct_safe if gold == "yes" else cfg.correct_unsafe
        r = r if think_ok else r - cfg.no_think_penalty
    elif pred is not None:
        r = cfg.wrong if think_ok else cfg.wrong - cfg.no_think_penalty
    else:
        r = cfg.invalid_with_think if think_ok else 0.0
    return min(max(r, 0.0), cfg.accuracy_max)


def safeguard_vl_format(text: str) -> float:
    return 1.0 if SG_FORMAT.match(text) else 0.0


def safeguard_vl_terms(text: str, *, solution: str, cfg) -> dict[str, float]:
    acc = safeguard_vl_accuracy(text, safeguard_vl_gold(solution), cfg)
    fmt = safeguard_vl_format(text)
    return {"think_ok": float(safeguard_vl_think_ok(text, cfg)), "accuracy": acc,
            "format": fmt, "total": cfg.accuracy_weight * acc + cfg.format_weight * fmt}


__all__ = [
    "GR_LABELS", "GR_MODES", "GuardReasonerVLParse", "PG_ID", "PG_MODALITIES", "ProGuardParse",
    "guardreasoner_vl_accuracy", "guardreasoner_vl_format", "guardreasoner_vl_length",
    "guardreasoner_vl_length_reward", "guardreasoner_vl_parse", "guardreasoner_vl_terms",
    "proguard_category_terms", "proguard_label_terms", "proguard_parse", "proguard_pattern",
    "proguard_similarity_bonus", "proguard_terms", "safeguard_vl_accuracy",
    "safeguard_vl_answer", "safeguard_vl_format", "safeguard_vl_gold", "safeguard_vl_terms",
    "safeguard_vl_think_ok",
]
