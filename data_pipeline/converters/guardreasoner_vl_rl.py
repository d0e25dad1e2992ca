"""GuardReasoner-VL RL prompts (EasyR1 parquet).

Columns: `images` (list of `{bytes, path}`), `problem` (the user transcript, see
guardreasoner_vl_sft), `answer` (the gold SFT output), `prompt_gt` and `response_gt` (label
words). Text-only samples carry the recipe's 1x1 white image; it is kept as it is (faithful
mode) and marked with `extras["blank_image"] = True` so a loader may drop it.
Image bytes are kept as bytes; an entry with only a path is resolved under the root.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.converters.guardreasoner_vl_sft import build_guardreasoner_sample
from data_pipeline.schema import Sample, SampleError

NAME = "guardreasoner_vl_rl"


def iter_samples(source_path, *, root=None, images=None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    yield from c.convert_each(c.iter_records(env, (".parquet",)), _convert)


def _convert(rec: c.Record) -> Sample:
    problem = rec.text("problem")
    answer = rec.text("answer", required=False)
    imgs = rec.images("images", rec.get("images", None))
    sample = build_guardreasoner_sample(
        rec, NAME, transcript=problem, transcript_field="problem", images=imgs,
        answer=answer, answer_field="answer", instruction=None,
        prompt_label=rec.label("prompt_gt"), response_label=rec.label("response_gt"))
    if _is_blank(imgs):
        sample.extras["blank_image"] = True
    return sample


def _is_blank(imgs) -> bool:
    if len(imgs) != 1 or imgs[0].data is None:
        return False
    import io

    from PIL import Image
    with Image.open(io.BytesIO(imgs[0].data)) as im:
        return im.size == (1, 1)
