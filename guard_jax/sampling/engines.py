"""Rollout engines by name (docs/sampling.md). Every engine is built as
`ENGINES[name](graphdef, SamplingParams, mesh=mesh)` and called as
`engine(params, batch, rng) -> SampleOutput` with the batch `Qwen25VL.prepare_inputs` makes
(prompts LEFT-padded): rows p*G .. p*G+G-1 are prompt p's G samples. `static` is the reference:
one static batch, the prompt cache tiled G times, every row decoding until the longest ends.
`continuous` (continuous.py): one copy of each prompt's cache, attention over the filled part of
the completion cache only, and a fixed pool of decode slots that finished rows hand on to the
rows still to decode."""

from __future__ import annotations

from guard_jax.sampling.continuous import ContinuousEngine
from guard_jax.sampling.sampler import Sampler

ENGINES: dict[str, type] = {"static": Sampler, "continuous": ContinuousEngine}


def register(name: str):
    def deco(cls):
        ENGINES[name] = cls
        return cls
    return deco


def make_engine(name: str, graphdef, sampling, *, mesh=None, slots: int = 0):
    """The engine `name` (one of ENGINES) for `sampling` (a SamplingParams). slots: the decode
    pool of an engine that has one (0 = its default; the static engine has none)."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known: {sorted(ENGINES)}")
    if not slots:
        return ENGINES[name](graphdef, sampling, mesh=mesh)
    if name == "static":
        raise ValueError(f"slots={slots}: the static engine decodes every row at once; slots "
                         "are for an engine with a decode pool (continuous)")
    return ENGINES[name](graphdef, sampling, mesh=mesh, slots=slots)
