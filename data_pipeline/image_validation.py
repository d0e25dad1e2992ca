"""Image checks done once, at conversion time, so that training never meets a bad image.

Two jobs: resolve a raw image path safely under the dataset root (no `..`, no absolute path or
symlink leading outside it), and decode the image fully with PIL (catching corrupt and truncated
files and decompression bombs) before it is written to a dataset. Problems raise `ImageProblem`
with a reason word; the converters turn it into a `SampleError` that names file, record and field.
Eval and the training loader open images with `open_image`, whose errors (a decompression bomb
among them) become a bad record the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_pipeline.schema import ImageRef

# Reason words (also the keys of the build summary's skip counts).
PATH_ESCAPE = "path_escape"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
TRUNCATED_IMAGE = "truncated_image"
IMAGE_TOO_LARGE = "image_too_large"


class ImageProblem(ValueError):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """How converters treat images.

    embed: store the encoded file bytes in the record (self-contained dataset) instead of the
      path relative to the root. Images that arrive as bytes (parquet) are always kept as bytes.
    max_pixels: decompression-bomb cap (width * height); None means PIL's `Image.MAX_IMAGE_PIXELS`
      as it is when the check runs.
    decode: fully decode every image (catches truncated data that `verify()` alone misses).
    """
    embed: bool = False
    max_pixels: int | None = None
    decode: bool = True

    def cap(self) -> int | None:
        return self.max_pixels if self.max_pixels is not None else Image.MAX_IMAGE_PIXELS


def resolve_under_root(raw: str, root: str | os.PathLike, *, what: str = "image",
                       ) -> tuple[Path, str]:
    """(absolute path, path relative to root in POSIX form) for a raw path from a dataset file.

    Refuses paths that leave the root lexically (`../x`, `/etc/x`) or through a symlink.
    Absolute paths inside the root are accepted and stored relative to it. `what` names the
    file kind in messages and in the reason word of a missing file (`missing_image`, ...).
    """
    missing = MISSING_IMAGE if what == "image" else f"missing_{what}"
    if not isinstance(raw, str) or not raw.strip():
        raise ImageProblem(missing, f"empty {what} path {raw!r}")
    if "\x00" in raw:
        raise ImageProblem(missing, f"{what} path {raw!r} contains a NUL byte")
    root_abs = os.path.abspath(root)
    joined = os.path.normpath(os.path.join(root_abs, raw))  # join keeps `raw` when absolute
    if os.path.commonpath([root_abs, joined]) != root_abs:
        raise ImageProblem(PATH_ESCAPE, f"{what} path {raw!r} leaves the dataset root {root_abs}")
    real_root, real = os.path.realpath(root_abs), os.path.realpath(joined)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ImageProblem(PATH_ESCAPE, f"{what} path {raw!r} resolves to {real}, outside the "
                                        f"dataset root {real_root} (symlink)")
    if not os.path.isfile(real):
        raise ImageProblem(missing, f"{what} file {joined} does not exist")
    return Path(joined), Path(os.path.relpath(joined, root_abs)).as_posix()


@contextlib.contextmanager
def _pixel_cap(cap: int | None):
    # PIL's own bomb check reads this module global; align it with our cap while we decode.
    # Conversion is single-threaded, so the temporary change is not seen by anyone else.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = cap
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


@contextlib.contextmanager
def _problems(what: str, cap: int | None = None):
    """PIL's errors while reading `what` as `ImageProblem`s with their reason words (`cap`: the
    pixel cap to name in a decompression-bomb message, when it is not PIL's own)."""
    try:
        yield
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        limit = "" if cap is None else f" (cap {cap} pixels)"
        raise ImageProblem(IMAGE_TOO_LARGE, f"{what}: {e}{limit}") from None
    except UnidentifiedImageError:
        raise ImageProblem(CORRUPT_IMAGE, f"{what} is not a readable image") from None
    except FileNotFoundError:
        raise ImageProblem(MISSING_IMAGE, f"{what} does not exist") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        reason = TRUNCATED_IMAGE if "truncat" in str(e).lower() else CORRUPT_IMAGE
        raise ImageProblem(reason, f"{what} cannot be decoded: {type(e).__name__}: {e}") from None


def check_image_bytes(data: bytes, policy: ImagePolicy, *, what: str = "image") -> tuple[int, int]:
    """Opens, verifies and (by default) decodes encoded image bytes; returns (width, height)."""
    if not data:
        raise ImageProblem(CORRUPT_IMAGE, f"{what} is empty (0 bytes)")
    cap = policy.cap()
    with _problems(what, cap), _pixel_cap(cap):
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if cap is not None and width * height > cap:
                raise ImageProblem(IMAGE_TOO_LARGE, f"{what} has {width}x{height} = "
                                   f"{width * height} pixels, above the cap of {cap}")
            im.verify()
        if policy.decode:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    if min(width, height) <= 0:
        raise ImageProblem(CORRUPT_IMAGE, f"{what} has an empty side: {width}x{height}")
    return width, height


def open_image(source, *, what: str = "image") -> Image.Image:
    """A decoded PIL image from encoded bytes or a file path, for the model (eval, the training
    loader). PIL's own decompression-bomb limit holds (`Image.MAX_IMAGE_PIXELS`: a warning
    above it, an error above twice it); that error (or the warning, where a warnings filter
    makes it one) and any unreadable file raise `ImageProblem` with its reason word. Unlike
    `check_image_bytes` this changes no global state, so loader threads may call it at once."""
    with _problems(what):
        im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        try:
            im.load()
        except BaseException:
            im.close()
            raise
        return im


def load_image_ref(raw, root: str | os.PathLike, policy: ImagePolicy) -> ImageRef:
    """A checked `ImageRef` from a raw dataset value.

    Accepts a path string, raw bytes, or a `{"bytes": ..., "path": ...}` mapping (the Hugging
    Face / parquet image layout; bytes win when both are present).
    """
    if isinstance(raw, dict):
        data, path = raw.get("bytes"), raw.get("path")
        if data:
            check_image_bytes(bytes(data), policy, what=f"image bytes ({path or 'no path'})")
            return ImageRef(data=bytes(data))
        raw = path
    elif isinstance(raw, (bytes, bytearray)):
        check_image_bytes(bytes(raw), policy, what="image bytes")
        return ImageRef(data=bytes(raw))
    if not isinstance(raw, str):
        raise ImageProblem(MISSING_IMAGE, f"expected an image path or bytes, got {raw!r}")
    path, rel = resolve_under_root(raw, root)
    data = path.read_bytes()
    check_image_bytes(data, policy, what=f"image {path}")
    return ImageRef(data=data) if policy.embed else ImageRef(path=rel)
