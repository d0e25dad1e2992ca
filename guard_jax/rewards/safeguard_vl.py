"""SafeGuard-VL reward on device (docs/recipes.md#safeguard-vl).

Terms ([B] float32): `think_ok` (a first <think> block whose stripped content has at least
min_think_chars characters), `accuracy` (plugin.py's asymmetric yes/no reward: 1.7 for a correct
"yes" (safe), 2.0 for a correct "no", 1.0 wrong but well formed, 0.5 off without the think,
0.5 for no valid answer with a think; clamped to [0, 2]), `format` (ms-swift's whole-string
`<think>...</think>\\s*<answer>...</answer>`) and `total` (weighted sum, 1:1 by default).

The think rule needs the stripped length of the block, which no finite state holds: the think
machine records, in registers, the index of the first non-blank character of the content and of
the last one; characters of a partial `</think>` count as content only once the tag breaks.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from guard_jax.rewards import reference
from guard_jax.rewards.alphabet import WHITESPACE, Alphabet, lower_preimage
from guard_jax.rewards.automata import (
    NFA, Machine, any_char, literal_pattern, literal_search_step, pattern_chars, pos, pos_prev)
from guard_jax.rewards.machines import Content, first_block, full_match
from guard_jax.rewards.scan import Program, ScanResult

YES, NO = 1, 2


@dataclasses.dataclass(frozen=True)
class SafeGuardVLConfig:
    min_think_chars: int = 50
    correct_safe: float = 1.7
    correct_unsafe: float = 2.0
    wrong: float = 1.0
    no_think_penalty: float = 0.5
    invalid_with_think: float = 0.5
    accuracy_max: float = 2.0
    accuracy_weight: float = 1.0
    format_weight: float = 1.0

    def __post_init__(self):
        if self.min_think_chars < 0:
            raise ValueError("safeguard_vl reward: min_think_chars must be >= 0")
        if self.accuracy_max < 0:
            raise ValueError("safeguard_vl reward: accuracy_max must be >= 0")


def _think_machine() -> tuple[Machine, set[str]]:
    open_p = literal_pattern("<think>", ignorecase=False)
    close_p = literal_pattern("</think>", ignorecase=False)

    def step(state, ch):
        if state[0] == "open":
            live, matched = literal_search_step(state[1], ch, open_p)
            return (("in", frozenset()) if matched else ("open", live)), {}
        if state[0] == "closed":
            return state, {}
        live = state[1]
        new_live, matched = literal_search_step(live, ch, close_p)
        if matched:
            return ("closed",), {}
        events = {}
        continued = any(k + 1 in new_live for k in live)
        if live and not continued:
            events["last"] = pos_prev()      # the broken tag's characters were content
        if 1 in new_live:
            events["first"] = pos()          # tentative '<': content unless the tag completes
        elif not continued and ch not in WHITESPACE:
            events["first"] = pos()
            events["last"] = pos()
        return ("in", new_live), events

    m = Machine("think", ("open", frozenset()), step,
                outputs={"found": lambda s: s[0] == "closed"},
                registers={"first": "first", "last": "last"})
    return m, pattern_chars(open_p, close_p)


def _yes_no() -> Content:
    pre = {c: lower_preimage(c) for c in "yesno"}
    words = {"": {"y": "y", "n": "n"}, "y": {"e": "ye"}, "ye": {"s": "yes"}, "n": {"o": "no"}}

    def step(state, ch):
        if state == "bad":
            return state
        if isinstance(state, tuple) or state in ("yes", "no"):   # after the word: blanks only
            return (state if isinstance(state, tuple) else ("after", state)) \
                if ch in WHITESPACE else "bad"
        if state == "" and ch in WHITESPACE:
            return ""
        for letter, nxt in words[state].items():
            if ch in pre[letter]:
                return nxt
        return "bad"

    def outcome(state):
        word = state[1] if isinstance(state, tuple) else state
        return {"yes": YES, "no": NO}.get(word, 0)

    return Content("", step, outcome, frozenset().union(*pre.values()))


def _format_nfa() -> tuple[NFA, int]:
    nfa = NFA()
    start = nfa.node()
    a = nfa.literal(start, "<think>")
    nfa.edge(a, any_char, a)
    b = nfa.literal(a, "</think>")
    nfa.edge(b, WHITESPACE.__contains__, b)
    c = nfa.literal(b, "<answer>")
    nfa.edge(c, any_char, c)
    nfa.accept[nfa.literal(c, "</answer>")] = "ok"
    return nfa, start


def build_program(cfg: SafeGuardVLConfig | None = None) -> Program:
    """The machines do not depend on the knobs: one program serves every config."""
    return _build()


@functools.lru_cache(maxsize=None)
def _build() -> Program:
    think, named = _think_machine()
    answer, chars = first_block("answer", "<answer>", "</answer>", _yes_no())
    nfa, start = _format_nfa()
    return Program.build(Alphabet(named | chars), [think, answer, full_match("format", nfa,
                                                                                start)])


def encode_gold(records, cfg: SafeGuardVLConfig | None = None) -> dict[str, np.ndarray]:
    """`solution` (e.g. "<answer>safe</answer>") -> `label`: 0 safe (gold "yes"), 1 unsafe."""
    out = []
    for i, rec in enumerate(records):
        sol = rec.get("solution")
        if not isinstance(sol, str):
            raise ValueError(f"safeguard_vl reward: record {i}, field 'solution': expected a "
                             f"string such as '<answer>safe</answer>', got {sol!r}")
        out.append(0 if reference.safeguard_vl_gold(sol) == "yes" else 1)
    return {"label": np.asarray(out, np.int32)}


def reference_terms(text: str, record: dict, cfg: SafeGuardVLConfig, **_) -> dict[str, float]:
    return reference.safeguard_vl_terms(text, solution=record["solution"], cfg=cfg)


def device_terms(res: ScanResult, gold: dict, cfg: SafeGuardVLConfig, program: Program) -> dict:
    f32 = jnp.float32
    think_m, answer_m, format_m = (program.machine(n) for n in ("think", "answer", "format"))
    first, last = res.registers[think_m]["first"], res.registers[think_m]["last"]
    think_len = jnp.where((first >= 0) & (last >= first), last - first + 1, 0)
    think_ok = (res.outputs[think_m]["found"] == 1) & (think_len >= cfg.min_think_chars)
    pred = jnp.where(res.outputs[answer_m]["found"] == 1, res.outputs[answer_m]["outcome"], 0)
    valid = pred > 0
    gold_yes = jnp.asarray(gold["label"]) == 0
    correct = valid & ((pred == YES) == gold_yes)
    base = jnp.where(gold_yes, cfg.correct_safe, cfg.correct_unsafe)
    pen = jnp.where(think_ok, 0.0, cfg.no_think_penalty)
    acc = jnp.where(correct, base - pen,
                    jnp.where(valid, cfg.wrong - pen,
                              jnp.where(think_ok, cfg.invalid_with_think, 0.0)))
    acc = jnp.clip(acc, 0.0, cfg.accuracy_max).astype(f32)
    fmt = (res.outputs[format_m]["accept"] == 1).astype(f32)
    return {"think_ok": think_ok.astype(f32), "accuracy": acc, "format": fmt,
            "total": cfg.accuracy_weight * acc + cfg.format_weight * fmt}


GOLD_FIELDS = ("label",)

__all__ = ["GOLD_FIELDS", "SafeGuardVLConfig", "build_program", "device_terms",
           "encode_gold", "reference_terms"]
