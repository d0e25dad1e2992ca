"""GuardReasoner text benchmarks (`data/benchmark/{Name}.json`: a JSON array, or JSON Lines).

Record: `instruction` (the guard instruction), `input` (the transcript `Human user:\\n{request}
\\n\\nAI assistant:\\n{response}`, response `None` when absent) and `output`: either the bare gold
label (`harmful`/`unharmful`) or a full answer with `Request:` / `Response:` (/ `Completion:`)
lines, as in WildGuardTest, SafeRLHF and BeaverTails. Released prediction files use `prompt`
and `label` instead of `input` and `output`; those are read too.

Task: `task=` option (`prompt_harmfulness` | `response_harmfulness`); otherwise from the file
name (the released benchmark names, `...Prompt` / `...Response`), otherwise
response_harmfulness when the transcript has a response. A bare label is the label of that task.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_pipeline.converters import _common as c
from data_pipeline.schema import Label, Sample, SampleError, Task

NAME = "guardreasoner_text"

PROMPT_BENCHMARKS = {"toxicchat", "harmbenchprompt", "openaimoderation", "aegissafetytest",
                     "simplesafetytests", "wildguardtestprompt"}
RESPONSE_BENCHMARKS = {"harmbenchresponse", "saferlhf", "beavertails", "xstestreponseharmful",
                       "xstestresponseharmful", "wildguardtestresponse"}


def iter_samples(source_path, *, root=None, images=None,
                 task: str | None = None) -> Iterator[Sample | SampleError]:
    env = c.Env.make(source_path, root, images)
    forced = Task(task) if task else None
    if forced not in (None, Task.PROMPT_HARMFULNESS, Task.RESPONSE_HARMFULNESS):
        raise ValueError(f"task must be prompt_harmfulness or response_harmfulness, got {task}")
    yield from c.convert_each(c.iter_records(env, (".json", ".jsonl")),
                              lambda rec: _convert(rec, forced))


def _file_task(stem: str) -> Task | None:
    key = stem.lower().replace("_", "").replace("-", "")
    if key in PROMPT_BENCHMARKS or key.endswith("prompt"):
        return Task.PROMPT_HARMFULNESS
    if key in RESPONSE_BENCHMARKS or key.endswith("response"):
        return Task.RESPONSE_HARMFULNESS
    return None


def _convert(rec: c.Record, forced: Task | None) -> Sample:
    in_field, transcript = rec.first("input", "prompt")
    transcript = rec.text(in_field, transcript)
    out_field, output = rec.first("output", "label")
    output = rec.text(out_field, output)
    lead, request, response = c.split_transcript(transcript)
    if not request:
        raise rec.error(c.EMPTY_TEXT, "the request is empty", in_field)
    task = forced or _file_task(rec.file.stem) or (
        Task.RESPONSE_HARMFULNESS if response is not None else Task.PROMPT_HARMFULNESS)
    if task is Task.RESPONSE_HARMFULNESS and response is None:
        raise rec.error(c.EMPTY_TEXT, "a response-harmfulness sample has no response", in_field)

    prompt_label = response_label = Label.NONE
    req_word, resp_word = c.answer_word(output, "Request"), c.answer_word(output, "Response")
    full_answer = req_word is not None or resp_word is not None
    if full_answer:
        if req_word is not None:
            prompt_label = rec.label(out_field, req_word)
        if resp_word is not None:
            response_label = rec.label(out_field, resp_word)
        if task is Task.PROMPT_HARMFULNESS and req_word is None:
            raise rec.error(c.MISSING_LABEL, "no `Request:` label in the answer", out_field)
        if task is Task.RESPONSE_HARMFULNESS and resp_word is None:
            raise rec.error(c.MISSING_LABEL, "no `Response:` label in the answer", out_field)
    elif task is Task.PROMPT_HARMFULNESS:
        prompt_label = rec.label(out_field, output)
    else:
        response_label = rec.label(out_field, output)

    extras = {"benchmark": rec.file.stem}
    instr = rec.text("instruction", required=False) or lead
    if instr:
        extras["instruction"] = instr
    completion = c.answer_word(output, "Completion")
    if completion:
        extras["completion"] = completion.lower()
    return Sample(id=rec.sample_id(), source=NAME, task=task, user_text=request,
                  response=response, prompt_label=prompt_label, response_label=response_label,
                  target=output if full_answer else None, extras=extras)
