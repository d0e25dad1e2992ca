"""SafeEditBench evaluation records (JSON Lines, or a JSON array).

Record: `image_path` (under the root), `safety_label` (unsafe / safe / 1 / 0 / true / false /
yes / no: the eval code maps true, 1 and yes to unsafe), `policy` (the policy text) and
`policy_level` (L1..L5). Optional `id`. Task: policy_compliance; the label is the image's label
under that policy.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Label, Sample, SampleError, Task

NAME = "safeeditbench"
LABEL_WORDS = {"1": Label.HARMFUL, "0": Label.UNHARMFUL, "true": Label.HARMFUL,
               "false": Label.UNHARMFUL, "yes": Label.HARMFUL, "no": Label.UNHARMFUL}


def iter_samples(source_path, *, root=None, images=None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    yield from c.convert_each(c.iter_records(env, (".jsonl", ".json")), _convert)


def _convert(rec: c.Record) -> Sample:
    label = rec.label("safety_label", extra=LABEL_WORDS)
    if label is Label.NONE:
        raise rec.error(c.MISSING_LABEL, "safety_label is empty", "safety_label")
    policy = rec.text("policy")
    level = rec.get("policy_level", None)
    imgs = rec.images("image_path", rec.text("image_path"))
    extras = {"policy_level": c.plain(level, rec, "policy_level")} if level is not None else {}
    return Sample(id=rec.sample_id(), source=NAME, task=Task.POLICY_COMPLIANCE, user_text="",
                  images=imgs, prompt_label=label, policy=policy, extras=extras)
