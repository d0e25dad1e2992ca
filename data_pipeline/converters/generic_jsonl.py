"""Any JSON Lines (or JSON array, or parquet) file with one sample per record, by field names.

Options name the source fields (dotted names reach into nested objects): `user_text_field`
(default `prompt`), `response_field`, `prompt_label_field` (default `label`),
`response_label_field`, `images_field`, `videos_field` (default `videos`: paths under the root
or bytes, each checked to open and decode), `id_field`, `policy_field`, `target_field`,
`category_field`; `task` (a Task value, default prompt_harmfulness); `label_words`, a mapping of
extra label words to harmful / unharmful / none (e.g. {"yes": "harmful"}); `allow_empty_text`
for image- or video-only data. A field option set to "" is not read.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Category, Label, Sample, SampleError, Task

NAME = "generic_jsonl"


def iter_samples(source_path, *, root=None, images=None, user_text_field: str = "prompt",
                 response_field: str = "response", prompt_label_field: str = "label",
                 response_label_field: str = "", images_field: str = "images",
                 videos_field: str = "videos",
                 id_field: str = "id", policy_field: str = "", target_field: str = "",
                 category_field: str = "", task: str = Task.PROMPT_HARMFULNESS.value,
                 label_words: dict[str, str] | None = None, allow_empty_text: bool = False,
                 ) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    task_ = Task(task)
    words = {str(k).strip().lower(): Label(v) for k, v in (label_words or {}).items()}
    if not user_text_field:
        raise ValueError("user_text_field must name a field")

    def convert(rec: c.Record) -> Sample:
        imgs = rec.images(images_field, rec.get(images_field, None)) if images_field else ()
        vids = rec.videos(videos_field, rec.get(videos_field, None)) if videos_field else ()
        user_text = rec.text(user_text_field,
                             required=not (allow_empty_text and (imgs or vids))) or ""
        user_text = c.strip_image_tokens(user_text)[0] if imgs else user_text
        user_text = c.strip_image_tokens(user_text, c.VIDEO_TOKEN)[0] if vids else user_text

        def opt_text(field):
            return rec.text(field, required=False) if field else None

        def opt_label(field):
            v = rec.get(field, None) if field else None
            return rec.label(field, v, extra=words) if v is not None else Label.NONE

        cat = opt_text(category_field)
        return Sample(id=rec.sample_id(id_field) if id_field else rec.sample_id(), source=NAME,
                      task=task_, user_text=user_text, images=imgs,
                      response=opt_text(response_field) or None,
                      prompt_label=opt_label(prompt_label_field),
                      response_label=opt_label(response_label_field),
                      category=Category(cat) if cat else None, policy=opt_text(policy_field),
                      target=opt_text(target_field), videos=vids)

    yield from c.convert_each(c.iter_records(env), convert)
