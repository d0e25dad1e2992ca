"""Scores raw outputs produced elsewhere (vLLM serving an exported model, published generations):
JSON Lines with the model input, the gold label and the raw output, one benchmark per file.

The default field names are the GuardReasoner release format: `prompt` (the full model input),
`label` (the bare gold label) and `predict` (the raw generation). A label may also be the text of
a gold answer holding `Request: ...` / `Response: ...` / `Completion: ...` (the released files of
some benchmarks store it so). A directory holds one benchmark per `NAME.jsonl`, or per
`NAME/generated_predictions.jsonl` as in the GuardReasoner release.

A malformed line is an error naming the file, the line and the field; with `on_error="skip"` it
is counted by reason and listed in `errors` (the CLI writes them to quarantine.jsonl) instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_pipeline.schema import Label, SampleError, parse_label
from guard_jax.evaluation.parsers import canonical_task
from guard_jax.evaluation.scoring import (NEGATIVE_WORD, POSITIVE_WORD, RELEASE_PATTERNS,
                                          EvalReport, Prediction, score_benchmark)

RELEASE_FILE = "generated_predictions.jsonl"


@dataclasses.dataclass(frozen=True)
class Fields:
    """Field names in the JSON records (dotted paths reach into objects: `extra_info.level`)."""
    prompt: str = "prompt"
    label: str = "label"
    output: str = "predict"
    tokens: str | None = None  # number of output tokens, when the producer recorded it
    group: str | None = None  # e.g. `policy_level` (SafeEditBench) or `category` (UnsafeBench)
    category: str | None = None  # gold taxonomy id; "" = out of taxonomy (ProGuard)
    category_name: str | None = None
    synonyms: str | None = None


class PredictionError(ValueError):
    def __init__(self, reason: str, message: str, *, file: str, line: int,
                 field: str | None = None):
        self.reason, self.file, self.line, self.field, self.message = (reason, file, line, field,
                                                                       message)
        where = f"{file} line {line}" + (f" field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field,
                "reason": self.reason, "message": self.message}


_MISSING = object()


def _get(rec: dict, path: str):
    node: Any = rec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def gold_label(value, task: str) -> int | None:
    """1 (harmful / unsafe / refusal), 0 (unharmful / safe / compliance), or None (no label).
    Raises ValueError on anything else."""
    task = canonical_task(task)
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"a label must be a string, 0/1, true/false or null, got {value!r}")
    word = value.strip().lower()
    if task == "refusal" and word in (POSITIVE_WORD[task], NEGATIVE_WORD[task]):
        return int(word == POSITIVE_WORD[task])
    if task != "refusal":
        try:
            label = parse_label(word)
        except SampleError:
            label = None
        if label is not None:
            return None if label == Label.NONE else int(label == Label.HARMFUL)
    if task == "refusal" and word in ("", "none", "n/a"):
        return None
    m = RELEASE_PATTERNS[task].search(value)  # a gold answer text rather than a bare word
    if m:
        return int(m.group(1).lower() == POSITIVE_WORD[task])
    raise ValueError(f"unknown label {value!r} for the {task} task; expected "
                     f"{POSITIVE_WORD[task]} / {NEGATIVE_WORD[task]} (or a gold answer text)")


def _record(rec, task: str, fields: Fields, file: str, line: int) -> Prediction:
    def err(reason, message, field=None):
        return PredictionError(reason, message, file=file, line=line, field=field)

    if not isinstance(rec, dict):
        raise err("not_an_object", f"a record must be a JSON object, got {type(rec).__name__}")
    raw = _get(rec, fields.output)
    if raw is _MISSING:
        raise err("missing_field", "no such field", fields.output)
    if not isinstance(raw, str):
        raise err("bad_output", f"the raw output must be a string, got {type(raw).__name__}",
                  fields.output)
    label = _get(rec, fields.label)
    if label is _MISSING:
        raise err("missing_field", "no such field", fields.label)
    try:
        gold = gold_label(label, task)
    except ValueError as e:
        raise err("unknown_label", str(e), fields.label) from None
    prompt = _get(rec, fields.prompt)
    if prompt is not _MISSING and prompt is not None and not isinstance(prompt, str):
        prompt = json.dumps(prompt, ensure_ascii=False)
    extra = {}
    for name in ("tokens", "group", "category", "category_name", "synonyms"):
        path = getattr(fields, name)
        if path is None:
            continue
        v = _get(rec, path)
        if v is _MISSING:
            raise err("missing_field", "no such field", path)
        extra[name] = v
    tokens = extra.get("tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or tokens < 0):
        raise err("bad_tokens", f"a token count must be a non-negative integer, got {tokens!r}",
                  fields.tokens)
    synonyms = extra.get("synonyms") or ()
    if not isinstance(synonyms, (list, tuple)) or not all(isinstance(s, str) for s in synonyms):
        raise err("bad_synonyms", "synonyms must be a list of strings", fields.synonyms)
    category = extra.get("category")
    group = extra.get("group")
    return Prediction(
        where=f"{file} line {line}", gold=gold, raw=raw,
        prompt=None if prompt is _MISSING else prompt, num_tokens=tokens,
        group=None if group is None else str(group),
        gold_category=None if category is None else str(category).strip(),
        gold_category_name=extra.get("category_name"), synonyms=tuple(synonyms))


def read_predictions(path, *, task: str, fields: Fields = Fields(), on_error: str = "fail",
                     errors: list | None = None) -> list[Prediction]:
    """The records of one JSON Lines file. Blank lines are not records. With on_error="skip",
    bad lines are appended to `errors` (as PredictionError) instead of raising."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error={on_error!r}; choose fail or skip")
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for i, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError as e:
                    raise PredictionError("bad_json", f"not JSON: {e.msg} (column {e.colno})",
                                          file=str(path), line=i) from None
                out.append(_record(rec, task, fields, str(path), i))
            except PredictionError as e:
                if on_error == "fail":
                    raise
                if errors is not None:
                    errors.append(e)
    return out


def find_prediction_files(path) -> list[tuple[str, Path]]:
    """(benchmark name, file) pairs: the file itself, or every `*.jsonl` of a directory and
    every `*/*.jsonl` below it (a release-layout file takes its folder's name)."""
    path = Path(path)
    if path.is_file():
        return [(path.parent.name if path.name == RELEASE_FILE else path.stem, path)]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*/*.jsonl"))
    named: dict[str, Path] = {}
    for f in files:
        name = f.parent.name if f.name == RELEASE_FILE else f.stem
        if name in named:
            raise ValueError(f"two prediction files for benchmark {name!r}: {named[name]} and {f}")
        named[name] = f
    if not named:
        raise FileNotFoundError(f"{path}: no *.jsonl prediction files")
    return list(named.items())


def score_predictions(path, *, recipe: str, task: str, rule: str = "clean",
                      fields: Fields = Fields(), on_error: str = "fail", model: str = "ours",
                      modalities: dict[str, str] | None = None, group_metric: str | None = None,
                      similarity: Callable | None = None,
                      count_tokens: Callable[[str], int] | None = None,
                      ) -> tuple[EvalReport, list[PredictionError]]:
    """Scores a prediction file or directory; returns the report and the skipped lines."""
    errors: list[PredictionError] = []
    results = []
    for name, f in find_prediction_files(path):
        preds = read_predictions(f, task=task, fields=fields, on_error=on_error, errors=errors)
        if count_tokens is not None and fields.tokens is None:
            preds = [dataclasses.replace(p, num_tokens=count_tokens(p.raw)) for p in preds]
        results.append(score_benchmark(
            name, preds, recipe=recipe, task=task, rule=rule,
            modality=(modalities or {}).get(name), group_metric=group_metric,
            similarity=similarity, source=str(f)))
    report = EvalReport(task=canonical_task(task), recipe=recipe, rule=rule, model=model,
                        benchmarks=results, skipped=dict(Counter(e.reason for e in errors)))
    return report, errors
