"""GuardReasoner-VL reward on device (docs/recipes.md#guardreasoner-vl).

Terms (keys of the returned dict, each [B] float32): `format` (the released code's logged
-1 + [<result>] + [<think>], not part of the reward), `request` / `response` (label correct,
0 or 1), `accuracy` (paper: r_safety - 1 with r_safety = I_format * (0.5 req + 0.5 resp);
code forms: acc in {-1, -0.5, 0}), `length` (l) and `total` (the length-aware reward).
Machines: the first <result> block with a Request: search, the same with Response:, and the
first <think> block, all case-insensitive as in the released parser.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from guard_jax.rewards import reference
from guard_jax.rewards.alphabet import WHITESPACE, Alphabet, ignorecase_variants
from guard_jax.rewards.automata import NFA
from guard_jax.rewards.machines import first_block, first_match
from guard_jax.rewards.scan import Program, ScanResult

LABEL_CODES = {"harmful": 1, "unharmful": 2, "none": 3}   # device outcome of a label search


@dataclasses.dataclass(frozen=True)
class GuardReasonerVLConfig:
    """mode: `paper` (tokens / max_response_tokens, capped at beta), `code_faithful`
    (characters / char_budget, the released models' reward) or `code_faithful_eco` (characters
    capped at eco_chars). min_length clamps l from below so that an empty or tiny response
    cannot divide by ~0 (0.02 is about 61 characters of 3072; docs/recipes.md#guardreasoner-vl)."""
    mode: str = "paper"
    beta: float = 1.0
    max_response_tokens: int = 3072
    char_budget: int = 3072
    eco_chars: int = 500
    min_length: float = 0.02

    def __post_init__(self):
        if self.mode not in reference.GR_MODES:
            raise ValueError(f"guardreasoner_vl reward: mode {self.mode!r} is not one of "
                             f"{reference.GR_MODES}")
        for k in ("beta", "min_length"):
            if not getattr(self, k) > 0:
                raise ValueError(f"guardreasoner_vl reward: {k} must be > 0, got "
                                 f"{getattr(self, k)}")
        for k in ("max_response_tokens", "char_budget", "eco_chars"):
            if not getattr(self, k) >= 1:
                raise ValueError(f"guardreasoner_vl reward: {k} must be >= 1")


def _label_search(keyword: str):
    nfa = NFA()
    start = nfa.node()
    after = nfa.literal(start, keyword + ":", ignorecase=True)
    nfa.edge(after, WHITESPACE.__contains__, after)
    for label, code in LABEL_CODES.items():
        nfa.accept[nfa.literal(after, label, ignorecase=True)] = label
    return first_match(nfa, start, LABEL_CODES)


def build_program(cfg: GuardReasonerVLConfig | None = None) -> Program:
    """The machines do not depend on the knobs: one program serves every config."""
    return _build()


@functools.lru_cache(maxsize=None)
def _build() -> Program:
    named: set[str] = set()
    machines = []
    for name, content, (open_tag, close_tag) in (
            ("request", _label_search("Request"), ("<result>", "</result>")),
            ("response", _label_search("Response"), ("<result>", "</result>")),
            ("think", None, ("<think>", "</think>"))):
        kw = {} if content is None else {"content": content}
        m, chars = first_block(name, open_tag, close_tag, ignorecase=True, **kw)
        machines.append(m)
        named |= chars
    for word in ("request:", "response:", *LABEL_CODES):
        for ch in word:
            named |= ignorecase_variants(ch)
    return Program.build(Alphabet(named), machines)


def encode_gold(records, cfg: GuardReasonerVLConfig | None = None) -> dict[str, np.ndarray]:
    """`request_label` / `response_label` strings (harmful, unharmful; none -> unharmful) ->
    int arrays (1 harmful, 0 unharmful)."""
    out = {"request_label": [], "response_label": []}
    for i, rec in enumerate(records):
        for field in out:
            v = rec.get(field)
            v = "unharmful" if v == "none" else v
            if v not in reference.GR_LABELS:
                raise ValueError(f"guardreasoner_vl reward: record {i}, field {field!r}: "
                                 f"{v!r} is not one of harmful, unharmful, none")
            out[field].append(int(v == "harmful"))
    return {k: np.asarray(v, np.int32) for k, v in out.items()}


def reference_terms(text: str, record: dict, cfg: GuardReasonerVLConfig, *,
                    n_tokens: int) -> dict[str, float]:
    norm = {k: "unharmful" if record[k] == "none" else record[k]
            for k in ("request_label", "response_label")}
    return reference.guardreasoner_vl_terms(text, n_tokens=n_tokens, cfg=cfg, **norm)


def device_terms(res: ScanResult, gold: dict, cfg: GuardReasonerVLConfig,
                 program: Program) -> dict:
    f32 = jnp.float32
    req_m, resp_m, think_m = (program.machine(n) for n in ("request", "response", "think"))
    has_result = res.outputs[req_m]["found"] == 1
    has_think = res.outputs[think_m]["found"] == 1

    def correct(code, gold_label):
        pred_harmful = code == LABEL_CODES["harmful"]
        return has_result & (code > 0) & (pred_harmful == (jnp.asarray(gold_label) == 1))

    req = correct(res.outputs[req_m]["outcome"], gold["request_label"]).astype(f32)
    resp = correct(res.outputs[resp_m]["outcome"], gold["response_label"]).astype(f32)
    if cfg.mode == "paper":
        i_format = (has_think & has_result).astype(f32)
        numer = i_format * (0.5 * req + 0.5 * resp) - 1.0
        length = res.num_tokens.astype(f32) / cfg.max_response_tokens
        denom = jnp.minimum(length, cfg.beta)
    else:
        numer = jnp.where(has_result, -1.0 + 0.5 * req + 0.5 * resp, -1.0).astype(f32)
        chars = res.num_chars
        if cfg.mode == "code_faithful_eco":
            chars = jnp.where(chars >= cfg.eco_chars, cfg.eco_chars, chars)
        length = chars.astype(f32) / cfg.char_budget
        denom = length
    denom = jnp.maximum(denom, cfg.min_length)
    return {"format": -1.0 + has_result.astype(f32) + has_think.astype(f32),
            "request": req, "response": resp, "accuracy": numer, "length": length,
            "total": numer / (denom * denom)}


GOLD_FIELDS = ("request_label", "response_label")

__all__ = ["GOLD_FIELDS", "GuardReasonerVLConfig", "build_program", "device_terms",
           "encode_gold", "reference_terms"]
