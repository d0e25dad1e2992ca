"""The grain loader: static-shape batches, process sharding, resume, workers, bad samples."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from data_pipeline.loader import LoaderConfig, make_loader, quarantine_summary
from data_pipeline.schema import ImageRef, Label, Sample, SampleError, Task
from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return str(write_qwen2_5_vl_tokenizer_dir(tmp_path_factory.mktemp("tok") / "qwen"))


def _png(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _samples(n, *, long_at=None, bad_image_at=None):
    out = []
    for i in range(n):
        text = f"question number {i} about a picture" * (200 if i == long_at else 1)
        data = b"not a png" if i == bad_image_at else _png(i)
        out.append(Sample(
            id=f"s{i}", source="test", task=Task.PROMPT_HARMFULNESS, user_text=text,
            images=(ImageRef(data=data),) if i % 2 == 0 else (),
            prompt_label=Label.HARMFUL if i % 3 == 0 else Label.UNHARMFUL,
            target=f"<think>sample {i}</think><result>Request: harmful</result>"))
    return out


def _config(**kw):
    base = dict(recipe="guardreasoner_vl", buckets=(192, 256), batch_size=2,
                images_per_sample=1, max_pixels=84 * 84, seed=3)
    base.update(kw)
    return LoaderConfig(**base)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_static_shapes_and_masks(tok_dir):
    it = make_loader(_samples(6), _config(), tokenizer_dir=tok_dir)
    batches = list(it)
    assert len(batches) == 3
    for b in batches:
        L = b["input_ids"].shape[1]
        assert L in (192, 256)
        assert b["pixel_values"].shape == (2, 36, 1176)  # 84x84 -> 36 patches budget
        assert b["loss_mask"].sum() > 0 and (b["loss_mask"] <= b["attention_mask"]).all()
        # padding is on the right and uses the pad id
        for row, m in zip(b["input_ids"], b["attention_mask"]):
            n = int(m.sum())
            assert (m[:n] == 1).all() and (row[n:] == 151643).all()
    ids = sorted(i for b in batches for i in b["ids"])
    assert ids == sorted(f"s{i}" for i in range(6))


def test_shuffle_is_seeded_and_shards_are_disjoint(tok_dir):
    order = lambda cfg: [i for b in make_loader(_samples(8), cfg, tokenizer_dir=tok_dir)
                         for i in b["ids"]]
    a, b = order(_config(seed=1)), order(_config(seed=1))
    assert a == b and order(_config(seed=2)) != a
    s0 = order(_config(shard_index=0, shard_count=2))
    s1 = order(_config(shard_index=1, shard_count=2))
    assert not set(s0) & set(s1) and len(s0) + len(s1) == 8


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_identical_batches(tok_dir, workers):
    cfg = _config(num_epochs=None, worker_count=workers)
    it = make_loader(_samples(6), cfg, tokenizer_dir=tok_dir)
    _take(it, 2)
    state = it.get_state()
    expected = _take(it, 3)
    if workers:
        it.close()
    again = make_loader(_samples(6), cfg, tokenizer_dir=tok_dir)
    again.set_state(state)
    got = _take(again, 3)
    if workers:
        again.close()
    for x, y in zip(expected, got):
        _same(x, y)


def test_bad_samples_fail_or_are_counted(tok_dir, tmp_path):
    samples = _samples(6, long_at=1, bad_image_at=2)
    with pytest.raises(SampleError, match=r"record s[12].*field '(input_ids|images\[0\])'"):
        list(make_loader(samples, _config(shuffle=False), tokenizer_dir=tok_dir))
    q = str(tmp_path / "quarantine.jsonl")
    batches = list(make_loader(samples, _config(on_error="skip", quarantine_path=q,
                                                shuffle=False), tokenizer_dir=tok_dir))
    assert sum(len(b["ids"]) for b in batches) == 4
    assert quarantine_summary(q) == {"too_long": 1, "bad_image": 1}
    lines = [json.loads(x) for x in open(q + ".shard0")]
    assert {ln["record"] for ln in lines} == {"s1", "s2"}


# ---- videos -----------------------------------------------------------------------------------

def _video_samples(tmp_path):
    from data_pipeline.schema import VideoRef
    from video_files import encode, random_frames
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encode(random_frames(10, 32, 48), fps=5))
    base = dict(source="test", task=Task.PROMPT_HARMFULNESS, prompt_label=Label.HARMFUL,
                target="<think>t</think><result>Request: harmful</result>")
    return [
        Sample(id="v0", user_text="what happens?", videos=(VideoRef(path="clip.mp4"),),
               images=(ImageRef(data=_png(0)),), **base),
        Sample(id="v1", user_text="and here?",
               videos=(VideoRef(data=encode(random_frames(3, 28, 56, 1), fps=1)),), **base),
        Sample(id="v2", user_text="no video", **base),
        Sample(id="v3", user_text="broken", videos=(VideoRef(data=b"junk" * 30),), **base),
    ]


def test_video_samples_batch_with_bounded_video_patches(tok_dir, tmp_path):
    from data_pipeline.video_processing import preprocess_videos
    samples = _video_samples(tmp_path)
    cfg = _config(shuffle=False, batch_size=3, buckets=(256, 512), videos_per_sample=1,
                  video_fps=2.0, max_frames=4, video_min_pixels=784, video_max_pixels=784 * 4,
                  video_patch_buckets=(16, 32), on_error="skip",
                  quarantine_path=str(tmp_path / "q.jsonl"))
    (batch,) = list(make_loader(samples, cfg, tokenizer_dir=tok_dir, image_root=str(tmp_path)))
    assert list(batch["ids"]) == ["v0", "v1", "v2"]
    assert quarantine_summary(str(tmp_path / "q.jsonl")) == {"unreadable_video": 1}
    (line,) = [json.loads(x) for x in open(str(tmp_path / "q.jsonl") + ".shard0")]
    assert (line["record"], line["field"]) == ("v3", "videos[0]")
    # v0: 10 frames at 5 fps sampled at 2 fps (min_frames 4) -> 4 frames, 32x48 -> 28x56
    pv0, g0, s0 = preprocess_videos(tmp_path / "clip.mp4", fps=2.0, max_frames=4,
                                    min_pixels=784, max_pixels=784 * 4)
    assert g0.tolist() == [[2, 2, 4]] and s0.tolist() == [2 / (4 / 10 * 5)]
    assert batch["pixel_values_videos"].shape == (3, 16, 1176)  # the 16 bucket fits 16 and 8
    np.testing.assert_array_equal(batch["pixel_values_videos"][0, :16], pv0)
    assert batch["video_grid_thw"].tolist() == [[[2, 2, 4]], [[1, 2, 4]], [[0, 0, 0]]]
    assert batch["num_videos"].tolist() == [1, 1, 0]
    # v1: 3 frames at 1 fps -> 2 frames kept, sampled at 2/3 fps -> 3 s per temporal patch
    np.testing.assert_allclose(batch["second_per_grid_ts"][:, 0], [1.0, 3.0, 0.0])
    # the video pads: t*h*w/4 tokens per video, inside <|vision_start|> ... <|vision_end|>
    counts = (batch["input_ids"] == 151656).sum(1)
    assert counts.tolist() == [4, 2, 0]
    row = batch["input_ids"][0].tolist()
    start = row.index(151656)
    assert row[start - 1] == 151652 and row[start + 4] == 151653
    assert row[start + 5] == 151652 and row[start + 6] == 151655  # the image right after it


def test_video_samples_refused_beyond_the_budget(tok_dir, tmp_path):
    samples = _video_samples(tmp_path)[:1]
    for kw, reason in (({"videos_per_sample": 0}, "too_many_videos"),
                       ({"videos_per_sample": 1, "video_fps": 0.0, "max_frames": 4,
                         "video_min_pixels": 784, "video_max_pixels": 784 * 4},
                        "too_many_video_patches")):
        with pytest.raises(SampleError) as e:
            list(make_loader(samples, _config(shuffle=False, batch_size=1, **kw),
                             tokenizer_dir=tok_dir, image_root=str(tmp_path)))
        assert e.value.reason == reason and e.value.record == "v0"
    with pytest.raises(ValueError, match="video_patch_buckets"):
        _config(videos_per_sample=1, video_patch_buckets=(10**9,))
