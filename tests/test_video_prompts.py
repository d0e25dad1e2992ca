"""Recipes on samples with videos (docs/recipes.md): ProGuard refuses them (its three modality
prompts and its reward have no video form), GuardReasoner-VL's RL `blank_image` adds its
placeholder only to samples with no visual input at all."""

from __future__ import annotations

import pytest

from data_pipeline.prompts import render
from data_pipeline.schema import ImageRef, Label, Sample, SampleError, Task, VideoRef


def sample(*, images=0, videos=1, text="what happens here", **extras):
    return Sample(id="v1", source="x", task=Task.PROMPT_HARMFULNESS, user_text=text,
                  prompt_label=Label.HARMFUL, images=tuple(ImageRef(path=f"{i}.png")
                                                           for i in range(images)),
                  videos=tuple(VideoRef(path=f"{i}.mp4") for i in range(videos)), extras=extras)


@pytest.mark.parametrize("kw", [dict(), dict(images=1), dict(text=""), dict(modality="image")],
                         ids=["video", "video+image", "video-only", "marked-image"])
def test_proguard_refuses_video_samples(kw):
    with pytest.raises(SampleError) as e:
        render("proguard", sample(**kw))
    assert (e.value.record, e.value.field, e.value.reason) == ("v1", "videos", "bad_sample")
    assert "text, image and text-image" in str(e.value)
    assert render("proguard", sample(videos=0)).labels["modality"] == "text"  # unchanged


def parts(rendered) -> list[str]:
    return [p["type"] for p in rendered.messages[-1]["content"] if isinstance(p, dict)]


def test_guardreasoner_blank_image_only_without_any_visual_input():
    video = render("guardreasoner_vl", sample(), mode="rl", blank_image=True)
    assert (len(video.images), len(video.videos)) == (0, 1)
    assert parts(video).count("image") == 0 and parts(video).count("video") == 1
    text = render("guardreasoner_vl", sample(videos=0), mode="rl", blank_image=True)
    assert len(text.images) == 1 and parts(text).count("image") == 1  # the placeholder stays
    # a stored transcript (the released RL data's) likewise
    stored = sample(transcript="Human user:\nhi\n\nAI assistant:\nNone\n")
    got = render("guardreasoner_vl", stored, mode="rl", blank_image=True)
    assert (len(got.images), len(got.videos)) == (0, 1)
    both = render("guardreasoner_vl", sample(images=1), mode="rl", blank_image=True)
    assert [r.path for r in both.images] == ["0.png"]
