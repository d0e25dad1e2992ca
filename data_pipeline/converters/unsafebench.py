"""UnsafeBench (HF `yiting/UnsafeBench`): parquet with `image` = `{bytes, path}`, or JSON / JSON
Lines with `image` as a path under the root.

Fields: `image`, `safety_label` (Safe / Unsafe), `category` (e.g. Hate, Sexual), `source`.
Task: image_safety. The category is a name, not a taxonomy id: Category(id="", name=...).
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Category, Label, Sample, SampleError, Task

NAME = "unsafebench"
LABEL_WORDS = {"1": Label.HARMFUL, "0": Label.UNHARMFUL}


def iter_samples(source_path, *, root=None, images=None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    yield from c.convert_each(c.iter_records(env), _convert)


def _convert(rec: c.Record) -> Sample:
    label = rec.label("safety_label", extra=LABEL_WORDS)
    if label is Label.NONE:
        raise rec.error(c.MISSING_LABEL, "safety_label is empty", "safety_label")
    imgs = rec.images("image", rec.get("image"))
    if not imgs:
        raise rec.error(c.MISSING_FIELD, "no image", "image")
    cat = rec.text("category", required=False)
    src = rec.text("source", required=False)
    return Sample(id=rec.sample_id(), source=NAME, task=Task.IMAGE_SAFETY, user_text="",
                  images=imgs, prompt_label=label,
                  category=Category("", cat.strip()) if cat and cat.strip() else None,
                  extras={"origin": src} if src else {})
