"""Video checks done once, at conversion time: the path stays under the dataset root, and the
file opens, has a video stream within the limits and decodes its first frame
(`video_processing.check_video`). Problems raise `ImageProblem` with a reason word (the
converters' one problem type for media), which the converters turn into a `SampleError` naming
file, record and field.
"""

from __future__ import annotations

import os

from data_pipeline.image_validation import ImagePolicy, ImageProblem, resolve_under_root
from data_pipeline.schema import VideoRef
from data_pipeline.video_processing import VideoLimits, VideoProblem, check_video


def load_video_ref(raw, root: str | os.PathLike, policy: ImagePolicy,
                   limits: VideoLimits = VideoLimits()) -> VideoRef:
    """A checked `VideoRef` from a raw dataset value: a path string, raw bytes, or a
    `{"bytes": ..., "path": ...}` mapping (bytes win). `policy.embed` stores a path's bytes."""
    if isinstance(raw, dict):
        data, path = raw.get("bytes"), raw.get("path")
        if data:
            _check(bytes(data), limits, f"video bytes ({path or 'no path'})")
            return VideoRef(data=bytes(data))
        raw = path
    elif isinstance(raw, (bytes, bytearray)):
        _check(bytes(raw), limits, "video bytes")
        return VideoRef(data=bytes(raw))
    if not isinstance(raw, str):
        raise ImageProblem("missing_video", f"expected a video path or bytes, got {raw!r}")
    path, rel = resolve_under_root(raw, root, what="video")
    _check(path, limits, f"video {path}")
    return VideoRef(data=path.read_bytes()) if policy.embed else VideoRef(path=rel)


def _check(source, limits: VideoLimits, what: str) -> None:
    try:
        check_video(source, limits)
    except VideoProblem as e:
        raise ImageProblem(e.reason, f"{what}: {e}") from None
