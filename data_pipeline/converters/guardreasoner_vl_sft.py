"""GuardReasoner-VL R-SFT data (LLaMA-Factory ShareGPT layout), JSON array or JSON Lines.

Record: `messages` = [system: instruction, user: transcript, assistant: `<think>..</think>
<result>..</result>`] (role/content or from/value), optional `images` = ["./image/x.png"] relative
to the root. The transcript is `Human user:\\n[<image>]{request}\\n\\nAI assistant:\\n{response}`;
a response written `None` means a prompt-only sample. Gold labels come from the `Request:` and
`Response:` words of the assistant's `<result>` block. Some files (HarmImageTest) put the
instruction in front of the transcript in the user turn instead of a system turn; both work.

Task: response_harmfulness when the sample has a response, otherwise prompt_harmfulness (the
model answers both, the labels say which apply).
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Label, Sample, SampleError, Task

NAME = "guardreasoner_vl_sft"


def iter_samples(source_path, *, root=None, images=None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    yield from c.convert_each(c.iter_records(env, (".json", ".jsonl")), _convert)


def _convert(rec: c.Record) -> Sample:
    turns = c.chat_turns(rec, "messages")
    system = [t for t in turns if t[0] == "system"]
    users = [t for t in turns if t[0] == "user"]
    answers = [t for t in turns if t[0] == "assistant"]
    if len(users) != 1 or len(answers) != 1:
        raise rec.error(c.BAD_VALUE, f"expected one user and one assistant turn, got "
                        f"{len(users)} and {len(answers)}", "messages")
    _, user_text, user_field = users[0]
    _, target, target_field = answers[0]
    rec.text(user_field, user_text)
    rec.text(target_field, target)
    imgs = rec.images("images", rec.get("images", None))
    return build_guardreasoner_sample(
        rec, NAME, transcript=user_text, transcript_field=user_field, images=imgs,
        answer=target, answer_field=target_field,
        instruction=system[0][1] if system else None)


def build_guardreasoner_sample(rec: c.Record, source: str, *, transcript: str,
                               transcript_field: str, images, answer: str | None,
                               answer_field: str | None, instruction: str | None,
                               prompt_label: Label | None = None,
                               response_label: Label | None = None) -> Sample:
    """Shared by the SFT and RL converters: transcript -> request/response, answer -> labels."""
    lead, request, response = c.split_transcript(transcript)
    request, tokens = c.strip_image_tokens(request)
    c.check_image_count(rec, transcript_field, tokens, len(images))
    if not request and not images:
        raise rec.error(c.EMPTY_TEXT, "the request is empty and there is no image",
                        transcript_field)
    if prompt_label is None:
        word = c.answer_word(answer or "", "Request")
        if word is None:
            raise rec.error(c.MISSING_LABEL, "no `Request:` label in the answer", answer_field)
        prompt_label = rec.label(answer_field, word)
    if response_label is None:
        word = c.answer_word(answer or "", "Response")
        response_label = Label.NONE if word is None else rec.label(answer_field, word)
    extras = {}
    if instruction or lead:
        extras["instruction"] = (instruction or lead)
    return Sample(
        id=rec.sample_id(), source=source,
        task=Task.RESPONSE_HARMFULNESS if response is not None else Task.PROMPT_HARMFULNESS,
        user_text=request, images=tuple(images), response=response,
        prompt_label=prompt_label, response_label=response_label, target=answer, extras=extras)
