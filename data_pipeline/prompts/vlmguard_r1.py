"""VLMGuard-R1 (docs/recipes.md#vlmguard-r1): rewrite a user's (text, image) prompt so that a
downstream VLM answers safely but still helpfully. Not a classifier.

Nothing here is exact text from the reference: the paper's prompts, tags and output format are not
published. Our choices (grammar `think_rewrite`):

    <think>RISK ANALYSIS</think>\\nREWRITTEN PROMPT

the shape docs/recipes.md#vlmguard-r1 describes. The system prompt (our words) asks for the
textual, visual and cross-modal risk analysis of the paper's stage 2 inside <think>, then the
rewritten prompt alone. The user turn is the image(s) followed by `Original prompt:\\n` + text.
The target is `sample.target`, or else built from `extras["risk_analysis"]` and
`extras["rewritten_prompt"]` when both are present.
"""

from __future__ import annotations

from data_pipeline.prompts.base import RenderedPrompt, image, join_parts
from data_pipeline.schema import Sample

GRAMMAR = "think_rewrite"

SYSTEM_PROMPT = (
    "You rewrite prompts before they reach a vision-language assistant, so that the assistant's "
    "answer is safe and still useful to the user. First analyse the risks of the prompt inside "
    "<think> </think>: the risk in the text, the risk in the image, and the risk that appears "
    "only when the two are combined. Then, after </think>, write only the rewritten prompt: keep "
    "the user's legitimate goal and steer the assistant away from the harmful parts instead of "
    "refusing outright.")


def build_target(risk_analysis: str, rewritten_prompt: str) -> str:
    return f"<think>{risk_analysis}</think>\n{rewritten_prompt}"


def render(sample: Sample) -> RenderedPrompt:
    user = join_parts([image() for _ in sample.images], "Original prompt:\n" + sample.user_text)
    target = sample.target
    ex = sample.extras
    if target is None and ex.get("risk_analysis") is not None and ex.get("rewritten_prompt"):
        target = build_target(ex["risk_analysis"], ex["rewritten_prompt"])
    labels = {"rewritten_prompt": ex.get("rewritten_prompt")}
    return RenderedPrompt([{"role": "system", "content": SYSTEM_PROMPT},
                           {"role": "user", "content": user}], target, tuple(sample.images),
                          GRAMMAR, labels)
