"""ProGuard RL data (verl layout): parquet, JSON array or JSON Lines.

Label fields (top level or under `extra_info`, as verl stores what the reward reads):
`query_label`, `response_label` (`safe`/`unsafe`), `category` (gold id such as `C8S2` or `C8`; `""`
for an out-of-taxonomy sample), `original_category` (its name), `modality` (`image` | `text` |
`text-image`), `synonymous_phrase` (list). Text: `query` / `user_request` and `response` /
`ai_response`, or `prompt` as a string or a chat list whose user turn holds
`<BEGIN CONVERSATION>` `User: ...` `Agent: ...` `<END CONVERSATION>`. Images: `images` / `image`.

Image-modality samples keep the dataset's `response_label` (the recipe stores `safe`).
Task: image -> image_safety; otherwise response_harmfulness when there is a response, else
prompt_harmfulness.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Category, Label, Sample, SampleError, Task

NAME = "proguard"
MODALITIES = ("image", "text", "text-image")
_CONVERSATION = re.compile(r"<BEGIN CONVERSATION>(.*?)(?:<END CONVERSATION>|$)", re.S)
_AGENT = re.compile(r"^\s*Agent:", re.M)


def iter_samples(source_path, *, root=None, images=None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    yield from c.convert_each(c.iter_records(env), _convert)


def _field(rec: c.Record, name: str, default=None):
    """(field path, value) looking at the top level, then under `extra_info`."""
    for path in (name, f"extra_info.{name}"):
        v = rec.get(path, None)
        if v is not None:
            return path, v
    return name, default


def _conversation(text: str) -> tuple[str, str | None]:
    m = _CONVERSATION.search(text)
    body = m.group(1) if m else text
    parts = _AGENT.split(body, maxsplit=1)
    user = re.sub(r"^\s*User:", "", parts[0], count=1).strip()
    agent = parts[1].strip() if len(parts) > 1 else ""
    return user, agent or None


def _text(rec: c.Record) -> tuple[str, str | None, str | None, str]:
    """(request, response, system prompt, field of the request)."""
    f, query = rec.first("query", "user_request", "extra_info.query", default=None)
    if query is not None:
        request = rec.text(f, query, required=False) or ""
        rf, resp = rec.first("response", "ai_response", "extra_info.response", default=None)
        return request, rec.text(rf, resp, required=False) or None, None, f
    prompt = rec.get("prompt", None)
    if isinstance(prompt, list):
        turns = c.chat_turns(rec, "prompt")
        users = [t for t in turns if t[0] == "user"]
        system = next((t[1] for t in turns if t[0] == "system"), None)
        if not users:
            raise rec.error(c.MISSING_FIELD, "no user turn", "prompt")
        request, response = _conversation(users[-1][1])
        return c.strip_image_tokens(request)[0], response, system, users[-1][2]
    if prompt is None:
        raise rec.error(c.MISSING_FIELD, "no request text (looked for query, user_request, "
                        "prompt)", "query")
    request, response = _conversation(rec.text("prompt", prompt, required=False) or "")
    return c.strip_image_tokens(request)[0], response, None, "prompt"


def _convert(rec: c.Record) -> Sample:
    mf, modality = _field(rec, "modality")
    if modality not in MODALITIES:
        raise rec.error(c.BAD_VALUE, f"modality {modality!r} is not one of {MODALITIES}", mf)
    request, response, system, text_field = _text(rec)
    img_field, raw_images = rec.first("images", "image", default=None)
    imgs = rec.images(img_field, raw_images)
    if modality in ("text", "text-image") and not request.strip():
        raise rec.error(c.EMPTY_TEXT, f"a {modality} sample has an empty request", text_field)
    if modality in ("image", "text-image") and not imgs:
        raise rec.error(c.MISSING_FIELD, f"a {modality} sample has no image", img_field)

    qf, q = _field(rec, "query_label")
    if q is None:
        raise rec.error(c.MISSING_LABEL, "no query_label", qf)
    prompt_label = rec.label(qf, q)
    rf, r = _field(rec, "response_label")
    response_label = rec.label(rf, r) if r is not None else Label.NONE

    cf, cat_id = _field(rec, "category")
    nf, cat_name = _field(rec, "original_category")
    sf, synonyms = _field(rec, "synonymous_phrase", ())
    category = None
    if cat_id is not None or cat_name is not None:
        if not isinstance(synonyms, (list, tuple)):
            raise rec.error(c.BAD_VALUE, "expected a list of phrases", sf)
        category = Category(id=rec.text(cf, str(cat_id or ""), required=False),
                            name=rec.text(nf, str(cat_name or ""), required=False),
                            synonyms=tuple(rec.text(f"{sf}[{i}]", str(s))
                                           for i, s in enumerate(synonyms)))
    if modality == "image":
        task = Task.IMAGE_SAFETY
    else:
        task = Task.RESPONSE_HARMFULNESS if response else Task.PROMPT_HARMFULNESS
    extras = {"modality": modality}
    if system:
        extras["system"] = system
    return Sample(id=rec.sample_id("id", "extra_info.index", "extra_info.id"), source=NAME,
                  task=task, user_text=request, images=imgs, response=response,
                  prompt_label=prompt_label, response_label=response_label, category=category,
                  extras=extras)
