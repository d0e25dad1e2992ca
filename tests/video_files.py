"""Small video files for tests, written with PyAV (its wheel bundles FFmpeg's encoders)."""

import io

import av
import numpy as np


def encode(frames, fps=10, fmt="mp4", codec="mpeg4") -> bytes:
    """[T, H, W, 3] uint8 frames -> the bytes of a video file."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def random_frames(t, h, w, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def audio_only() -> bytes:
    """A WAV file: a container without a video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for p in list(s.encode(frame)) + list(s.encode()):
            c.mux(p)
    return buf.getvalue()
