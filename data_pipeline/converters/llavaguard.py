"""LlavaGuard / LlavaGuard-DS training and test records (JSON array or JSON Lines).

Record (`create_sample`): `id`, `image` (path under the root), `final-assessment`
(`Compliant` | `Review Needed`), `score`, `category`, `conversations` = [human: the policy
prompt with `<image>`, gpt: the JSON assessment `{rating, category, rationale}`].

Label, first that exists: the assessment's `rating` (Safe/Unsafe); the `score` by LlavaGuard's
rule (safe iff it contains "Acceptable" or is "Non-Violating Exception"; "Discard Sample" is
refused as `discarded_sample`); `final-assessment`. An unsafe label with category "NA" is
refused as `inconsistent_label` (LlavaGuard drops those). The policy is the O1..O9 block of the
prompt (from the first `O1:` line up to `Assessment Steps`), or the whole prompt when those
markers are absent. Category `O3: Sexual Content` -> Category("O3", "Sexual Content").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Category, Label, Sample, SampleError, Task

NAME = "llavaguard"
DISCARDED = "discarded_sample"
INCONSISTENT = "inconsistent_label"
_POLICY = re.compile(r"^(O1:.*?)(?=^\s*Assessment Steps|\Z)", re.S | re.M)
_CATEGORY = re.compile(r"^\s*(O\d+|NA)\s*[:\-]\s*(.*)$", re.S)
_ASSESSMENT = {"compliant": Label.UNHARMFUL, "review needed": Label.HARMFUL}


def iter_samples(source_path, *, root=None, images=None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    yield from c.convert_each(c.iter_records(env, (".json", ".jsonl")), _convert)


def score_label(score: str) -> Label | None:
    s = score.strip()
    if "Acceptable" in s or s == "Non-Violating Exception":
        return Label.UNHARMFUL
    if "Inappropriate" in s or s == "Sensitive Exception":
        return Label.HARMFUL
    return None


def parse_category(text: str) -> Category:
    m = _CATEGORY.match(text)
    return Category(m.group(1), m.group(2).strip()) if m else Category("", text.strip())


def _convert(rec: c.Record) -> Sample:
    turns = c.chat_turns(rec, "conversations")
    users = [t for t in turns if t[0] == "user"]
    answers = [t for t in turns if t[0] == "assistant"]
    if not users:
        raise rec.error(c.MISSING_FIELD, "no human turn", "conversations")
    _, prompt, prompt_field = users[0]
    prompt = c.strip_image_tokens(rec.text(prompt_field, prompt))[0]
    target, target_field = (answers[0][1], answers[0][2]) if answers else (None, None)
    if target is not None:
        rec.text(target_field, target)
    img_field, raw = rec.first("image", "images")
    imgs = rec.images(img_field, raw)
    if not imgs:
        raise rec.error(c.MISSING_FIELD, "no image", img_field)

    assessment = {}
    if target:
        try:
            parsed = json.loads(target)
            assessment = parsed if isinstance(parsed, dict) else {}
        except json.JSONDecodeError:
            pass
    label = _label(rec, assessment, target_field)
    cat_text = assessment.get("category") or rec.get("category", None)
    category = parse_category(rec.text(target_field if assessment.get("category") else "category",
                                       cat_text)) if cat_text else None
    if label is Label.HARMFUL and category is not None and category.id == "NA":
        # LlavaGuard drops these as inconsistent; we refuse them so that they are counted.
        raise rec.error(INCONSISTENT, "unsafe rating with category 'NA: None applying'",
                        target_field if assessment.get("category") else "category")
    m = _POLICY.search(prompt)
    extras = {}
    for key in ("score", "final-assessment"):
        if rec.get(key, None) is not None:
            extras[key.replace("-", "_")] = c.plain(rec.get(key), rec, key)
    if isinstance(assessment.get("rationale"), str):
        extras["rationale"] = c.plain(assessment["rationale"], rec, target_field)
    return Sample(id=rec.sample_id(), source=NAME, task=Task.POLICY_COMPLIANCE, user_text=prompt,
                  images=imgs, prompt_label=label, category=category,
                  policy=m.group(1).strip() if m else prompt, target=target, extras=extras)


def _label(rec: c.Record, assessment: dict, target_field: str | None) -> Label:
    if "rating" in assessment:
        return rec.label(target_field, assessment["rating"])
    score = rec.get("score", None)
    if score is not None:
        score = rec.text("score", score)
        if score.strip() == "Discard Sample":
            raise rec.error(DISCARDED, "LlavaGuard marks this sample 'Discard Sample'", "score")
        label = score_label(score)
        if label is None:
            raise rec.error("unknown_label", f"unknown score {score!r}", "score")
        return label
    fa = rec.get("final-assessment", None)
    if fa is not None:
        return rec.label("final-assessment", fa, extra=_ASSESSMENT)
    raise rec.error(c.MISSING_LABEL, "no rating, score or final-assessment", "conversations")
