"""Generic ShareGPT / chat-messages data (JSON array or JSON Lines), e.g. LLaMA-Factory SFT sets.

Record: `conversations` (from/value) or `messages` (role/content), optional `images` (paths under
the root, or `image`), optional `videos` (or `video`), optional `id`. The last user turn is
`user_text` (its `<image>` and `<video>` tokens removed; their counts must match the images and
videos), the final assistant turn is `target`, a system turn
goes to `extras["system"]` and earlier turns to `extras["history"]`.
Options: `task` (a Task value, default captioning: plain SFT with no verdict), `label_field` /
`response_label_field` (record fields holding label words), `label_words` (extra words).
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Label, Sample, SampleError, Task

NAME = "sharegpt"


def iter_samples(source_path, *, root=None, images=None, task: str = Task.CAPTIONING.value,
                 label_field: str = "", response_label_field: str = "",
                 label_words: dict[str, str] | None = None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    task_ = Task(task)
    words = {str(k).strip().lower(): Label(v) for k, v in (label_words or {}).items()}

    def convert(rec: c.Record) -> Sample:
        field = "conversations" if rec.get("conversations", None) is not None else "messages"
        turns = c.chat_turns(rec, field)
        system = [t for t in turns if t[0] == "system"]
        dialog = [t for t in turns if t[0] != "system"]
        if not dialog or dialog[-1][0] != "assistant":
            raise rec.error(c.BAD_VALUE, "the conversation must end with an assistant turn", field)
        users = [i for i, t in enumerate(dialog) if t[0] == "user"]
        if not users:
            raise rec.error(c.MISSING_FIELD, "no user turn", field)
        last_user = users[-1]
        img_field, raw = rec.first("images", "image", default=None)
        imgs = rec.images(img_field, raw)
        tokens = sum(t[1].count(c.IMAGE_TOKEN) for t in turns)
        c.check_image_count(rec, field, tokens, len(imgs))
        vid_field, raw = rec.first("videos", "video", default=None)
        vids = rec.videos(vid_field, raw)
        tokens = sum(t[1].count(c.VIDEO_TOKEN) for t in turns)
        c.check_image_count(rec, field, tokens, len(vids), c.VIDEO_TOKEN)
        _, user_text, user_field = dialog[last_user]
        user_text = c.strip_image_tokens(c.strip_image_tokens(user_text)[0], c.VIDEO_TOKEN)[0]
        if not user_text and not imgs and not vids:
            raise rec.error(c.EMPTY_TEXT, "text is empty", user_field)
        _, target, target_field = dialog[-1]
        rec.text(target_field, target)
        extras = {}
        if system:
            extras["system"] = system[0][1]
        if last_user > 0:
            extras["history"] = [{"role": r, "content": t} for r, t, _ in dialog[:last_user]]

        def label(f):
            v = rec.get(f, None) if f else None
            return rec.label(f, v, extra=words) if v is not None else Label.NONE

        return Sample(id=rec.sample_id(), source=NAME, task=task_, user_text=user_text,
                      images=imgs, prompt_label=label(label_field),
                      response_label=label(response_label_field), target=target, extras=extras,
                      videos=vids)

    yield from c.convert_each(c.iter_records(env, (".json", ".jsonl")), convert)
