"""The published guard benchmark suites (docs/recipes.md): names,
modalities, published sample counts, and the order the papers' tables list them in.

Benchmark names are matched loosely (case, `-`, `_`, spaces and dots ignored), and the released
GuardReasoner folder names are aliases (`XSTestReponseHarmful` is spelled that way there).
"""

from __future__ import annotations

import dataclasses
import re

MODALITIES = ("text", "image", "text-image", "video")  # video: any benchmark with videos


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    modality: str  # one of MODALITIES
    samples: int | None = None  # the published count (None: not published)


def _suite(*items) -> tuple[Benchmark, ...]:
    return tuple(Benchmark(*it) for it in items)


SUITES: dict[str, tuple[Benchmark, ...]] = {
    # GuardReasoner-VL Tables 1, 2 and 5 (docs/recipes.md#guardreasoner-vl); the order is the
    # tables' column order
    "guardreasoner_vl_prompt": _suite(
        ("ToxicChat", "text", 2853), ("HarmBenchPrompt", "text", 239),
        ("OpenAIModeration", "text", 1680), ("AegisSafetyTest", "text", 359),
        ("SimpleSafetyTests", "text", 100), ("WildGuardTest", "text", 1756),
        ("HarmImageTest", "image", 3295), ("SPA-VL-Eval", "text-image", 3282)),
    "guardreasoner_vl_response": _suite(
        ("HarmBenchResponse", "text", 602), ("SafeRLHF", "text", 2000),
        ("BeaverTails", "text", 3021), ("XSTestResponseHarmful", "text", 446),
        ("WildGuardTest", "text", 1768), ("SPA-VL-Eval", "text-image", 3282)),
    # the text GuardReasoner's refusal task (released evaluate.py)
    "guardreasoner_refusal": _suite(("XSTestResponseRefusal", "text"), ("WildGuardTest", "text")),
    # ProGuard's tables (docs/recipes.md#proguard); sizes are not published
    "proguard_prompt": _suite(
        ("Aegis2.0", "text"), ("HarmBench", "text"), ("OpenAIMod", "text"),
        ("SimpleSafetyTests", "text"), ("ToxicChat", "text"), ("WildGuard", "text"),
        ("XSTest", "text"), ("BeaverTails-V", "text-image"), ("LlavaGuard", "image")),
    "proguard_response": _suite(
        ("Aegis2.0", "text"), ("BeaverTails", "text"), ("WildGuard", "text"), ("XSTest", "text"),
        ("BeaverTails-V", "text-image")),
    "proguard_category": _suite(
        ("Aegis2.0", "text"), ("OpenAIMod", "text"), ("ProGuard-Text", "text"),
        ("BeaverTails-V", "text-image"), ("ProGuard-Text-Image", "text-image"),
        ("LlavaGuard", "image"), ("ProGuard-Image", "image")),
    "safeeditbench": _suite(("SafeEditBench", "image")),
    "unsafebench": _suite(("UnsafeBench", "image")),
    "llavaguard": _suite(("LlavaGuard", "image")),
}

ALIASES = {"xstestreponseharmful": "XSTestResponseHarmful"}


def key(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name).lower()


_BY_KEY: dict[str, Benchmark] = {}
for _suite_items in SUITES.values():
    for _b in _suite_items:
        _BY_KEY.setdefault(key(_b.name), _b)


def lookup(name: str) -> Benchmark | None:
    """The known benchmark called `name` (loosely), or None."""
    k = key(name)
    if k in _BY_KEY:
        return _BY_KEY[k]
    alias = ALIASES.get(k)
    return _BY_KEY.get(key(alias)) if alias else None


def modality_of(name: str) -> str | None:
    b = lookup(name)
    return b.modality if b else None


def table_order(names: list[str]) -> list[str]:
    """Known benchmarks in their suites' column order, unknown ones after them as given."""
    rank = {}
    for suite in SUITES.values():
        for b in suite:
            rank.setdefault(key(b.name), len(rank))
    known = [n for n in names if key(n) in rank]
    return sorted(known, key=lambda n: rank[key(n)]) + [n for n in names if key(n) not in rank]


def config_entries(suite: str, **fields) -> tuple[dict, ...]:
    """`eval.benchmarks` entries for a published suite: each benchmark's dataset is expected at
    `eval.data_root/NAME` (a `guard-jax data build --split test` output); `fields` (task,
    group, ...) are added to every entry."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {sorted(SUITES)}")
    return tuple(dict(name=b.name, path=b.name, split="test", modality=b.modality, **fields)
                 for b in SUITES[suite])
