"""preprocess_videos equals transformers' Qwen2-VL video processor; bad videos are named.

Two references (docs/data.md#videos): tests/fixtures/video_reference.npz holds transformers'
outputs, made once in a separate environment with torchvision (tests/fixtures/
make_video_reference.py); and a NumPy reference below, written from the processor's algorithm
(frame sampling, torch's fixed-point antialiased bicubic, fused normalisation, temporal padding,
the 10-axis patch permutation) independently of data_pipeline's vectorised code.
"""

import json
import math
import pathlib

import av
import numpy as np
import pytest

from data_pipeline import preprocess_videos
from data_pipeline.image_processing import CLIP_MEAN, CLIP_STD
from data_pipeline.video_processing import (EMPTY_VIDEO, UNREADABLE_VIDEO, VIDEO_TOO_LARGE,
                                            VIDEO_TOO_LONG, VIDEO_TOO_SHORT, Sampling, Video,
                                            VideoLimits,
                                            VideoProblem, decode_video)
from video_files import audio_only, encode, random_frames

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = np.load(FIXTURES / "video_reference.npz")
CASES = sorted({k.split("/")[0] for k in REFERENCE.files if "/" in k} - {"file"})


# ---- transformers' outputs (fixture) ------------------------------------------------------------

def check_against_fixture(name, pv, grid, seconds):
    rows = REFERENCE[f"{name}/rows"]
    assert len(pv) == int(REFERENCE[f"{name}/n_rows"])
    np.testing.assert_array_equal(grid, REFERENCE[f"{name}/video_grid_thw"])
    np.testing.assert_array_equal(pv[rows], REFERENCE[f"{name}/pixel_values_videos"])
    np.testing.assert_allclose(seconds, REFERENCE[f"{name}/second_per_grid_ts"], rtol=1e-15)


@pytest.mark.parametrize("name", CASES)
def test_frames_equal_transformers(name):
    kw = json.loads(str(REFERENCE[f"{name}/kwargs"]))
    check_against_fixture(name, *preprocess_videos(REFERENCE[f"{name}/frames"], **kw))


def test_file_equals_transformers():
    # transformers' PyAV reader + the processor's fps sampling on the same mpeg4 file
    kw = json.loads(str(REFERENCE["file/kwargs"]))
    path = FIXTURES / "video_reference.mp4"
    check_against_fixture("file", *preprocess_videos(path, **kw))
    video = decode_video(path, Sampling(fps=kw["fps"]))
    assert video.total_frames == 12 and video.fps == 6.0
    assert len(video.frames) == len(REFERENCE["file/indices"])


# ---- NumPy reference ----------------------------------------------------------------------------

def ref_indices(total, video_fps, fps=None, num_frames=None, min_frames=4, max_frames=768, tps=2):
    """Qwen2VLVideoProcessor.sample_frames: torch.arange(0, total, total / n) (float32), .int()."""
    if num_frames is not None:
        n = round(num_frames / tps) * tps
    elif fps is not None:
        max_frames = math.floor(min(max_frames, total) / tps) * tps
        n = min(max(total / video_fps * fps, min_frames), max_frames, total)
        n = math.floor(n / tps) * tps
    else:
        return list(range(total))
    out, i, step = [], 0, total / n
    while i * step < total:
        out.append(int(np.float32(i * step)))
        i += 1
    return out


def ref_smart_resize(h, w, factor, min_pixels, max_pixels):
    h_bar, w_bar = round(h / factor) * factor, round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        return (max(factor, math.floor(h / beta / factor) * factor),
                max(factor, math.floor(w / beta / factor) * factor))
    if h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        return math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return h_bar, w_bar


def ref_keys(x):
    a, x = -0.5, abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def ref_resize_1d(line, out_size):
    """torch's uint8 antialiased bicubic along one axis, one output sample at a time."""
    in_size = len(line)
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1 else 2.0
    kmax = math.ceil(support) * 2 + 1
    inv = 1 / scale if scale >= 1 else 1.0
    taps = []
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), kmax)
        ws = [ref_keys((j + xmin - center + 0.5) * inv) for j in range(xsize)]
        total = 0.0
        for v in ws:
            total += v
        taps.append((xmin, [v / total for v in ws]))
    wt_max = max(max(ws) for _, ws in taps)
    prec = 0
    while prec < 22 and int(0.5 + wt_max * (1 << (prec + 1))) < (1 << 15):
        prec += 1
    out = []
    for xmin, ws in taps:
        acc = 1 << (prec - 1)
        for j, v in enumerate(ws):
            v *= 1 << prec
            acc += int(line[xmin + j]) * int(v - 0.5 if v < 0 else v + 0.5)
        out.append(min(max(acc >> prec, 0), 255))
    return out


def ref_resize(frame, h, w):
    if frame.shape[1] != w:
        frame = np.asarray([[ref_resize_1d(frame[y, :, c], w) for c in range(3)]
                            for y in range(frame.shape[0])]).transpose(0, 2, 1)
    if frame.shape[0] != h:
        frame = np.asarray([[ref_resize_1d(frame[:, x, c], h) for c in range(3)]
                            for x in range(frame.shape[1])]).transpose(2, 0, 1)
    return frame.astype(np.uint8)


def numpy_reference(frames, video_fps=None, min_pixels=3136, max_pixels=784 * 16, **sampling):
    idx = ref_indices(len(frames), video_fps, **sampling)
    sampled_fps = len(idx) / len(frames) * video_fps if video_fps else 24.0
    frames = frames[idx]
    h, w = ref_smart_resize(frames.shape[1], frames.shape[2], 28, min_pixels, max_pixels)
    x = np.stack([ref_resize(f, h, w) for f in frames]).transpose(0, 3, 1, 2)  # T C H W
    mean = np.asarray(CLIP_MEAN, np.float32) * np.float32(255)
    std = np.asarray(CLIP_STD, np.float32) * np.float32(255)
    x = (x.astype(np.float32) - mean[:, None, None]) / std[:, None, None]
    if len(x) % 2:
        x = np.concatenate([x, x[-1:]])
    t = len(x)
    x = x.reshape(1, t // 2, 2, 3, h // 28, 2, 14, w // 28, 2, 14)
    x = x.transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    grid = [t // 2, h // 14, w // 14]
    return x.reshape(grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14), grid, 2 / sampled_fps


@pytest.mark.parametrize("t,h,w,kw", [
    (5, 56, 84, {}),  # odd frame count: the last frame repeated
    (4, 30, 45, {"min_pixels": 3136}),  # up
    (3, 90, 50, {"max_pixels": 784 * 4}),  # down, both sides
    (2, 28, 100, {"max_pixels": 784 * 2}),  # down, the width only
    (12, 28, 28, {"video_fps": 6.0, "fps": 2.0}),
    (11, 28, 56, {"video_fps": 29.97, "num_frames": 5}),
    (40, 28, 28, {"video_fps": 30.0, "fps": 8.0, "max_frames": 10}),
])
def test_frames_equal_numpy_reference(t, h, w, kw):
    frames = random_frames(t, h, w, seed=t * h + w)
    want_pv, want_grid, want_sec = numpy_reference(frames, **kw)
    pv, grid, sec = preprocess_videos(frames, **{"min_pixels": 3136, "max_pixels": 784 * 16,
                                                 **kw})
    assert grid.tolist() == [want_grid]
    np.testing.assert_array_equal(pv, want_pv)
    assert sec.tolist() == [want_sec]


def test_file_written_here_equals_numpy_reference(tmp_path):
    smooth = np.linspace(0, 255, 42 * 70 * 3).reshape(42, 70, 3)
    frames = np.stack([np.roll(smooth, 5 * t, axis=1) for t in range(9)]).astype(np.uint8)
    path = tmp_path / "clip.mp4"
    path.write_bytes(encode(frames, fps=5))
    with av.open(str(path)) as c:  # every frame, decoded here without data_pipeline
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert len(decoded) == 9
    want_pv, want_grid, want_sec = numpy_reference(decoded, video_fps=5.0, fps=2.0)
    for source in (path, str(path), path.read_bytes()):
        pv, grid, sec = preprocess_videos(source, fps=2.0, min_pixels=3136,
                                          max_pixels=784 * 16)
        assert grid.tolist() == [want_grid] and sec.tolist() == [want_sec]
        np.testing.assert_array_equal(pv, want_pv)


def test_several_videos_concatenate_in_order():
    a, b = random_frames(3, 28, 56, 1), random_frames(4, 56, 28, 2)
    pv, grid, sec = preprocess_videos([a, Video(b, fps=4.0)], min_pixels=784, max_pixels=3136)
    pa, ga, _ = preprocess_videos(a, min_pixels=784, max_pixels=3136)
    pb, gb, sb = preprocess_videos(Video(b, fps=4.0), min_pixels=784, max_pixels=3136)
    np.testing.assert_array_equal(pv, np.concatenate([pa, pb]))
    assert grid.tolist() == [ga[0].tolist(), gb[0].tolist()] and sec.tolist() == [2 / 24, 0.5]


# ---- bad videos ---------------------------------------------------------------------------------

def test_bad_videos_are_named(tmp_path):
    good = encode(random_frames(10, 32, 48))
    one = encode(random_frames(1, 32, 48))
    cases = [
        (b"", {}, UNREADABLE_VIDEO, "not a readable video"),
        (b"not a video" * 50, {}, UNREADABLE_VIDEO, "not a readable video"),
        (good[:len(good) // 2], {}, UNREADABLE_VIDEO, "not a readable video"),
        (str(tmp_path / "missing.mp4"), {}, UNREADABLE_VIDEO, "no such file .*missing.mp4"),
        (audio_only(), {}, EMPTY_VIDEO, "the file has no video stream"),
        (np.zeros((0, 28, 28, 3), np.uint8), {}, EMPTY_VIDEO, "the video has no frames"),
        (one, {"fps": 2.0}, VIDEO_TOO_SHORT, "1 frame"),
        (good, {"limits": VideoLimits(max_seconds=0.5)}, VIDEO_TOO_LONG,
         r"1.0 s \(10 frames at 10 fps\), longer than the limit of 0.5 s"),
        (good, {"limits": VideoLimits(max_frame_pixels=1000)}, VIDEO_TOO_LARGE,
         "frames of 48x32 = 1536 pixels, above the cap of 1000"),
    ]
    for source, kw, reason, words in cases:
        with pytest.raises(VideoProblem, match=f"video 1: {words}") as e:
            preprocess_videos([Video(random_frames(8, 28, 28), fps=10.0), source], **kw)
        assert e.value.reason == reason
    # a one-frame video without sampling is one temporal patch (the frame repeated)
    assert preprocess_videos(one, min_pixels=784, max_pixels=3136)[1].tolist() == [[1, 2, 4]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="exclusive"):
        preprocess_videos(random_frames(4, 28, 28), fps=1.0, num_frames=2)
    with pytest.raises(ValueError, match=r"video 0: expected frames \[T, H, W, 3\] uint8"):
        preprocess_videos([np.zeros((2, 28, 28, 4), np.uint8)])
    with pytest.raises(VideoProblem, match="frame rate") as e:
        preprocess_videos(random_frames(4, 28, 28), fps=1.0)  # frames without a frame rate
    assert e.value.reason == UNREADABLE_VIDEO
