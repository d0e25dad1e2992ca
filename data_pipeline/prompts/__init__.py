"""Prompt rendering per recipe: `RECIPES[name](sample, **options) -> RenderedPrompt`.

Each module's docstring says which texts are exact (from the published recipes, docs/recipes.md) and
which are ours.
"""

from __future__ import annotations

from collections.abc import Callable

from data_pipeline.prompts import guardreasoner_vl, llavaguard, proguard, safeguard_vl, vlmguard_r1
from data_pipeline.prompts.base import RenderedPrompt, place_videos
from data_pipeline.schema import Sample

RECIPES: dict[str, Callable[..., RenderedPrompt]] = {
    "guardreasoner_vl": guardreasoner_vl.render,
    "proguard": proguard.render,
    "safeguard_vl": safeguard_vl.render,
    "llavaguard": llavaguard.render,
    "vlmguard_r1": vlmguard_r1.render,
}


def render(recipe: str, sample: Sample, **options) -> RenderedPrompt:
    try:
        fn = RECIPES[recipe]
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}") from None
    return place_videos(fn(sample, **options), sample.videos)


__all__ = ["RECIPES", "RenderedPrompt", "render"]
