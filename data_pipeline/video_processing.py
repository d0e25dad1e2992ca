"""Qwen2-VL video preprocessing with transformers' video processor semantics, in numpy.

`preprocess_videos` gives what transformers' `Qwen2VLVideoProcessor` gives for the same frames
(docs/data.md#videos): frame sampling by `fps` or `num_frames` (clamped by `min_frames` /
`max_frames`, whole temporal patches), one `smart_resize` for all frames of a video (bicubic),
rescale and CLIP normalisation as transformers fuses them, the last frame repeated up to a
multiple of `temporal_patch_size`, and the merge-block-major patch layout
`[grid_t * grid_h * grid_w, C * temporal_patch_size * patch * patch]`. `second_per_grid_ts` is
`temporal_patch_size / sampled fps`, as the Qwen2.5-VL processor computes it.

Files are decoded with PyAV. A video that cannot be used raises `VideoProblem` with a reason word
(unreadable, empty, too short, too long, too large); callers that know the record turn it into a
`SampleError` naming file, record and field.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from data_pipeline.image_processing import (CLIP_MEAN, CLIP_STD, MERGE_SIZE, PATCH_SIZE,
                                            TEMPORAL_PATCH_SIZE, smart_resize, to_rgb)
from data_pipeline.schema import DataInputError

# transformers' Qwen2VLVideoProcessor class defaults
DEFAULT_VIDEO_MIN_PIXELS = 128 * 28 * 28
DEFAULT_VIDEO_MAX_PIXELS = 768 * 28 * 28
DEFAULT_MIN_FRAMES = 4
DEFAULT_MAX_FRAMES = 768
UNKNOWN_FPS = 24.0  # what transformers assumes for frames given without a frame rate
# Our own limits on what a file may hold before any frame is decoded.
DEFAULT_MAX_SECONDS = 3600.0
DEFAULT_MAX_FRAME_PIXELS = 89_478_485  # PIL's decompression-bomb cap, per frame

# Reason words (also the keys of skip counts and quarantine lines).
UNREADABLE_VIDEO = "unreadable_video"
EMPTY_VIDEO = "empty_video"
VIDEO_TOO_SHORT = "video_too_short"
VIDEO_TOO_LONG = "video_too_long"
VIDEO_TOO_LARGE = "video_too_large"


class VideoProblem(DataInputError):
    """A video that cannot be used; `reason` is one of the reason words above."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class Video:
    """Frames [T, H, W, 3] uint8 RGB and the frame rate they were taken at (None: unknown).

    `total_frames` is the length of the video the frames were sampled from, and `fps` its frame
    rate; `sampled_fps` is the rate of the frames held here."""
    frames: np.ndarray
    fps: float | None = None
    total_frames: int | None = None

    @property
    def sampled_fps(self) -> float:
        if self.fps is None:
            return UNKNOWN_FPS
        total = self.total_frames or len(self.frames)
        return len(self.frames) / total * self.fps


@dataclasses.dataclass(frozen=True)
class VideoLimits:
    """What a video file may hold: its duration and each frame's pixel count."""
    max_seconds: float | None = DEFAULT_MAX_SECONDS
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Frame sampling: `fps` (frames per second) or `num_frames` (in total), or neither (every
    frame); `min_frames` / `max_frames` bound the `fps` case, as in transformers."""
    fps: float | None = None
    num_frames: int | None = None
    min_frames: int = DEFAULT_MIN_FRAMES
    max_frames: int = DEFAULT_MAX_FRAMES
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE

    def __post_init__(self):
        if self.fps is not None and self.num_frames is not None:
            raise ValueError("fps and num_frames are exclusive: give one of them")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")

    def indices(self, total: int, video_fps: float | None) -> np.ndarray | None:
        """Frame indices to keep out of `total` (None: all of them)."""
        tps = self.temporal_patch_size
        if self.num_frames is not None:
            n = round(self.num_frames / tps) * tps
        elif self.fps is not None:
            if video_fps is None:
                raise VideoProblem(UNREADABLE_VIDEO, "sampling by fps needs the video's frame "
                                   "rate, and none is known")
            cap = math.floor(min(self.max_frames, total) / tps) * tps
            n = min(max(total / video_fps * self.fps, self.min_frames), cap, total)
            n = math.floor(n / tps) * tps
        else:
            return None
        if n < 1:
            raise VideoProblem(VIDEO_TOO_SHORT, f"{total} frame(s): sampling needs at least "
                               f"{tps} (one temporal patch)")
        if n > total:
            raise VideoProblem(VIDEO_TOO_SHORT, f"{total} frame(s), fewer than the {n} to sample")
        # transformers: torch.arange(0, total, total / n) in float32, truncated
        step = total / n
        count = math.ceil(total / step)
        return (np.arange(count, dtype=np.float64) * step).astype(np.float32).astype(np.int64)


# ---- decoding ----------------------------------------------------------------------------------

def _open(source):
    import av
    try:
        return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray))
                       else os.fspath(source), mode="r")
    except FileNotFoundError:
        raise VideoProblem(UNREADABLE_VIDEO, f"no such file {os.fspath(source)}") from None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoProblem(UNREADABLE_VIDEO, f"not a readable video ({_why(e)})") from None


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _checked_stream(container, limits: VideoLimits):
    """(video stream, frame count, frame rate or None) after the limit checks, before any frame
    is decoded. The count and rate are the container's, as transformers' PyAV reader takes them
    (when the container has no frame count, the packets are counted)."""
    if not container.streams.video:
        raise VideoProblem(EMPTY_VIDEO, "the file has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    rate = float(stream.average_rate) if stream.average_rate else None
    if limits.max_frame_pixels is not None and width * height > limits.max_frame_pixels:
        raise VideoProblem(VIDEO_TOO_LARGE, f"frames of {width}x{height} = {width * height} "
                           f"pixels, above the cap of {limits.max_frame_pixels}")
    total = int(stream.frames)
    if total <= 0:
        total = sum(1 for p in container.demux(stream) if p.size)
        container.seek(0)
    if total <= 0:
        raise VideoProblem(EMPTY_VIDEO, "the video stream holds no frames")
    seconds = total / rate if rate else None
    if limits.max_seconds is not None and seconds is not None and seconds > limits.max_seconds:
        raise VideoProblem(VIDEO_TOO_LONG, f"{seconds:.1f} s ({total} frames at {rate:g} fps), "
                           f"longer than the limit of {limits.max_seconds:g} s")
    return stream, total, rate


def check_video(source, limits: VideoLimits = VideoLimits()) -> tuple[int, float | None]:
    """Opens a video file (path or bytes), applies the limits and decodes its first frame;
    returns (frame count, frame rate). What `data build` checks before writing a record."""
    import av
    with _open(source) as container:
        try:
            stream, total, rate = _checked_stream(container, limits)
            if next(iter(container.decode(stream)), None) is None:
                raise VideoProblem(EMPTY_VIDEO, "no frame of the video stream decodes")
        except av.error.FFmpegError as e:
            raise VideoProblem(UNREADABLE_VIDEO, f"cannot decode the video ({_why(e)})") from None
    return total, rate


def decode_video(source, sampling: Sampling = Sampling(),
                 limits: VideoLimits = VideoLimits()) -> Video:
    """A video file (path or encoded bytes) -> the sampled frames, decoded with PyAV."""
    import av
    with _open(source) as container:
        try:
            stream, total, rate = _checked_stream(container, limits)
            idx = sampling.indices(total, rate)
            wanted = set(range(total) if idx is None else idx.tolist())
            last = max(wanted)
            frames = {}
            for i, frame in enumerate(container.decode(stream)):
                if i > last:
                    break
                if i in wanted:
                    frames[i] = frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise VideoProblem(UNREADABLE_VIDEO, f"cannot decode the video ({_why(e)})") from None
    order = list(range(total)) if idx is None else idx.tolist()
    missing = [i for i in order if i not in frames]
    if missing:
        raise VideoProblem(UNREADABLE_VIDEO, f"the container says {total} frames but frame "
                           f"{missing[0]} could not be decoded (truncated file?)")
    return Video(np.stack([frames[i] for i in order]), rate, total)


# ---- frames -> patches -------------------------------------------------------------------------

def as_frames(frames) -> np.ndarray:
    """[T, H, W, 3] uint8 RGB from an array ([T, H, W, 3] / [T, H, W] uint8) or PIL images."""
    if isinstance(frames, np.ndarray):
        arr = frames
    else:
        frames = list(frames)
        if frames and all(isinstance(f, Image.Image) for f in frames):
            arr = np.stack([np.asarray(to_rgb(f)) for f in frames])
        else:
            arr = np.asarray(frames)
    if arr.ndim == 3:  # grayscale frames
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected frames [T, H, W, 3] uint8 (RGB), got shape {arr.shape} "
                         f"{arr.dtype}")
    if len(arr) == 0:
        raise VideoProblem(EMPTY_VIDEO, "the video has no frames")
    return arr


@functools.lru_cache(maxsize=8)
def _normalise_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32 with transformers' fused rescale + normalise for videos: mean and std
    scaled by 255 in float32, then (x - mean) / std in float32."""
    v = np.arange(256, dtype=np.float32)
    m = np.asarray(mean, np.float32) * np.float32(255.0)
    s = np.asarray(std, np.float32) * np.float32(255.0)
    return np.stack([(v - m[c]) / s[c] for c in range(len(mean))])


def _cubic_aa(x: np.ndarray) -> np.ndarray:
    """The Keys cubic with a = -0.5 (PIL's and torch's antialiased bicubic), written in torch's
    operation order so the float64 weights come out bit for bit the same."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def _resize_taps(in_size: int, out_size: int):
    """One axis of torch's uint8 antialiased bicubic resize: per output index the source indices
    [out, K], their int16-valued weights [out, K] and the fixed-point precision in bits.

    The weights follow PIL's support and centring in float64, normalised per output index; then
    they are scaled to integers at the largest precision (< 22 bits) at which the axis's largest
    weight still fits in int16, rounding half away from zero."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    k = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xsize = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin,
                    0, k)
    j = np.arange(k)
    w = _cubic_aa((j[None, :] + xmin[:, None] - center[:, None] + 0.5) * invscale)
    w = np.where(j[None, :] < xsize[:, None], w, 0.0)
    total = w.sum(axis=1, keepdims=True)  # torch adds in index order; k is small, same result
    w = np.divide(w, total, out=np.zeros_like(w), where=total != 0)
    wt_max = float(w.max(initial=0.0))
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    v = w * (1 << precision)
    iw = np.trunc(np.where(v < 0, v - 0.5, v + 0.5))
    dense = np.zeros((in_size, out_size))  # [in, out]: integer weights, exact in float64
    np.add.at(dense, (np.minimum(xmin[:, None] + j[None, :], in_size - 1),
                      np.arange(out_size)[:, None]), iw)
    return dense, precision


def _resize_axis(x: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One fixed-point pass along `axis`; integer sums are exact in float64 (|sum| < 2**53)."""
    dense, prec = _resize_taps(x.shape[axis], out_size)
    x = np.moveaxis(x, axis, -1)
    out = np.empty(x.shape[:-1] + (out_size,), np.uint8)
    for t in range(len(x)):  # one frame at a time bounds the float64 temporaries
        acc = (x[t].astype(np.float64) @ dense).astype(np.int64) + (1 << (prec - 1))
        out[t] = np.clip(acc >> prec, 0, 255)
    return np.moveaxis(out, -1, axis)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, H, W, C] uint8 resized to (height, width) as transformers' video processor does it
    (torchvision's bicubic with antialias on uint8, i.e. torch's fixed-point separable kernel):
    the width first, then the height, each pass skipped when that side keeps its size."""
    if frames.shape[2] != width:
        frames = _resize_axis(frames, 2, width)
    if frames.shape[1] != height:
        frames = _resize_axis(frames, 1, height)
    return frames


def patchify_video(frames: np.ndarray, *, patch_size: int = PATCH_SIZE,
                   merge_size: int = MERGE_SIZE, temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
                   mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
    """[T, H, W, 3] uint8 (H, W multiples of patch*merge) -> (patches float32, (gt, gh, gw)).

    The last frame is repeated up to a multiple of `temporal_patch_size`."""
    if pad := -len(frames) % temporal_patch_size:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    t, h, w, c = frames.shape
    p, m, tp = patch_size, merge_size, temporal_patch_size
    gt, gh, gw = t // tp, h // p, w // p
    u8 = frames.reshape(gt, tp, gh // m, m, p, gw // m, m, p, c)
    # -> (gt, block row, block col, row in block, col in block, channel, frame, py, px)
    u8 = u8.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    lut = _normalise_lut(tuple(mean), tuple(std))
    out = lut[np.arange(c).reshape(c, 1, 1, 1), u8]
    return out.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def preprocess_video(video, *, sampling: Sampling = Sampling(),
                     min_pixels: int = DEFAULT_VIDEO_MIN_PIXELS,
                     max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS, video_fps: float | None = None,
                     limits: VideoLimits = VideoLimits(), patch_size: int = PATCH_SIZE,
                     merge_size: int = MERGE_SIZE):
    """One video -> (patches [gt*gh*gw, 3*T*P*P] float32, (gt, gh, gw), second_per_grid_t).

    `video` is a path or encoded bytes (decoded and sampled with PyAV), a `Video`, or frames
    ([T, H, W, 3] uint8 or PIL images) taken at `video_fps` frames per second."""
    tps = sampling.temporal_patch_size
    if isinstance(video, (str, os.PathLike, bytes, bytearray)):
        video = decode_video(video, sampling, limits)
    else:
        if not isinstance(video, Video):
            video = Video(as_frames(video), video_fps)
        frames = as_frames(video.frames)
        idx = sampling.indices(len(frames), video.fps)
        video = Video(frames if idx is None else frames[idx], video.fps, len(frames))
    frames = video.frames
    nh, nw = smart_resize(frames.shape[1], frames.shape[2], factor=patch_size * merge_size,
                          min_pixels=min_pixels, max_pixels=max_pixels)
    frames = resize_frames(frames, nh, nw)
    patches, grid = patchify_video(frames, patch_size=patch_size, merge_size=merge_size,
                                   temporal_patch_size=tps)
    return patches, grid, tps / video.sampled_fps


def preprocess_video_refs(refs, root: str | None, settings, error):
    """A sample's stored videos (`schema.VideoRef`: bytes, or a path under `root`) through
    `preprocess_videos` with `settings`' video_fps / min_frames / max_frames / video_min_pixels /
    video_max_pixels (a `LoaderConfig`, or a run's `data` section: the loader and eval read a
    sample's videos alike), concatenated in order. A video that cannot be used raises
    `error(k, ref, reason, message)`, the caller's exception for `videos[k]`."""
    parts = []
    for k, ref in enumerate(refs):
        source = ref.data if ref.data is not None else os.path.join(root or "", ref.path)
        try:
            parts.append(preprocess_videos(
                source, fps=settings.video_fps or None, min_frames=settings.min_frames,
                max_frames=settings.max_frames, min_pixels=settings.video_min_pixels,
                max_pixels=settings.video_max_pixels))
        except VideoProblem as e:
            raise error(k, ref, e.reason, str(e).removeprefix("video 0: ")) from None
        except ValueError as e:  # e.g. an extreme aspect ratio
            raise error(k, ref, "bad_video", str(e).removeprefix("video 0: ")) from e
    if not parts:
        return preprocess_videos([])
    return tuple(np.concatenate(p) for p in zip(*parts))


def preprocess_videos(videos, *, fps: float | None = None, num_frames: int | None = None,
                      min_frames: int = DEFAULT_MIN_FRAMES, max_frames: int = DEFAULT_MAX_FRAMES,
                      min_pixels: int = DEFAULT_VIDEO_MIN_PIXELS,
                      max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS,
                      temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
                      video_fps: float | None = None, limits: VideoLimits = VideoLimits()):
    """Videos -> (pixel_values_videos [sum patches, 1176] float32, video_grid_thw int64 [n, 3],
    second_per_grid_ts float64 [n]).

    Each video is a path, encoded bytes, a `Video`, or frames; a single path or frame array is
    one video. Same outputs as transformers' `Qwen2VLVideoProcessor` with
    `size={"shortest_edge": min_pixels, "longest_edge": max_pixels}` and
    `do_sample_frames=True` when `fps` or `num_frames` is given (every frame otherwise).
    Problems raise `VideoProblem` (prefixed with the video's position) or ValueError."""
    if isinstance(videos, (str, os.PathLike, bytes, bytearray, Video)) or (
            isinstance(videos, np.ndarray) and videos.ndim == 4):
        videos = [videos]
    sampling = Sampling(fps=fps, num_frames=num_frames, min_frames=min_frames,
                        max_frames=max_frames, temporal_patch_size=temporal_patch_size)
    patches, grids, seconds = [], [], []
    for k, video in enumerate(videos):
        try:
            pv, grid, sec = preprocess_video(video, sampling=sampling, min_pixels=min_pixels,
                                             max_pixels=max_pixels, video_fps=video_fps,
                                             limits=limits)
        except VideoProblem as e:
            raise VideoProblem(e.reason, f"video {k}: {e}") from None
        except ValueError as e:
            raise ValueError(f"video {k}: {e}") from e
        patches.append(pv)
        grids.append(grid)
        seconds.append(sec)
    width = 3 * temporal_patch_size * PATCH_SIZE * PATCH_SIZE
    if not patches:
        return np.zeros((0, width), np.float32), np.zeros((0, 3), np.int64), np.zeros(0)
    return (np.concatenate(patches), np.asarray(grids, np.int64),
            np.asarray(seconds, np.float64))
