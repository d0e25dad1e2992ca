"""What a record must satisfy before `data build` writes it, so that training never meets it.

Two levels (docs/data.md):

- always: every text field within `max_text_chars`, no literal `<|image_pad|>` / `<|video_pad|>`
  in any text (a placeholder left as text by a conversion: images must be image references;
  the tokenizer would read it as plain text), and every image's sides within
  the aspect-ratio rule of Qwen2-VL's resize (`smart_resize`), which the loader applies;
- with a training config (`data build --check-config`): the loader's own transform for that
  recipe, tokenizer, sequence length, image budget and pixel limits, so every refusal the
  loader would make mid-run is made at build time instead.

Each problem is a `SampleError` naming record and field; the build fails on it or counts and
quarantines it (--on-error).
"""

from __future__ import annotations

import dataclasses
import io
import os

from data_pipeline.image_processing import smart_resize
from data_pipeline.schema import Sample, SampleError
from data_pipeline.tokenize import IMAGE_PAD, VIDEO_PAD

DEFAULT_MAX_TEXT_CHARS = 100_000
TEXT_FIELDS = ("user_text", "response", "policy", "target")


@dataclasses.dataclass(frozen=True)
class SampleLimits:
    max_text_chars: int | None = DEFAULT_MAX_TEXT_CHARS  # None: no length limit

    def check(self, sample: Sample, *, image_root: str | os.PathLike | None,
              file: str | None = None) -> None:
        """Raises `SampleError` for the first limit `sample` breaks."""
        for field in TEXT_FIELDS:
            text = getattr(sample, field)
            if not text:
                continue
            if self.max_text_chars is not None and len(text) > self.max_text_chars:
                raise SampleError("text_too_long", f"{len(text)} characters, more than the limit "
                                  f"{self.max_text_chars} (--max-text-chars)", file=file,
                                  record=sample.id, field=field)
            if IMAGE_PAD in text or VIDEO_PAD in text:
                raise SampleError("image_token_in_text", f"contains a literal {IMAGE_PAD} or "
                                  f"{VIDEO_PAD}; images must be image references", file=file,
                                  record=sample.id, field=field)
        for k, ref in enumerate(sample.images):
            width, height = _image_size(ref, image_root, sample.id, k, file)
            try:
                smart_resize(height, width)  # the loader's aspect-ratio and empty-side rules
            except ValueError as e:
                raise SampleError("bad_image_shape", str(e), file=ref.path or file,
                                  record=sample.id, field=f"images[{k}]") from None


def _image_size(ref, image_root, record, k: int, file) -> tuple[int, int]:
    from PIL import Image
    try:
        src = io.BytesIO(ref.data) if ref.data is not None else os.path.join(image_root or "",
                                                                             ref.path)
        with Image.open(src) as im:  # reads the header only
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError("bad_image", f"cannot read the image size: {e}", file=ref.path or file,
                          record=record, field=f"images[{k}]") from None
