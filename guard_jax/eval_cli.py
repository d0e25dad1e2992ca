"""`guard-jax eval`: score raw outputs (`--predictions`) or run a model on eval datasets
(`--config`), and write the report (JSON, markdown table, PNG plots).

    guard-jax eval --predictions FILE_OR_DIR --recipe R --task T [--rule clean|...] [--out DIR]
    guard-jax eval --config configs/eval/X.py (--checkpoint DIR | --hf-dir DIR) --out DIR

Bad input raises `InputError` (one line, exit 2); with --config every input is checked before
the model loads (`runner.check_inputs`, docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import os

from guard_jax.errors import InputError
from guard_jax.evaluation.parsers import CLASSIFIER_RECIPES, TASK_ALIASES

EPILOG = """\
--predictions reads one JSON object per line. The --field-* flags name the keys of that object
(a dotted name reaches into nested objects, e.g. extra_info.level): --field-output is the
model's raw output, --field-label the gold label, --field-prompt the input text (optional;
its start is shown with the example outputs in the report), and the optional --field-tokens,
--field-group and --field-category add token cost, per-group scores and category scores.

--recipe picks the output parser: use the family of the model that wrote the outputs.
guardreasoner_vl and guardreasoner (the text-only model) read "Request: / Response:
harmful|unharmful" and "Completion: refusal|compliance"; proguard reads "Request: / Response:
safe|unsafe" and its category ids; safeguard_vl reads a yes/no <answer>; llavaguard reads the
JSON rating. --task picks the label scored; the names in each
group below are aliases of the same task, matching the names the benchmarks use:
{tasks}
With --config the recipe and task come from the eval config (eval.recipe, eval.task and each
benchmark's task); --recipe, --task and the other flags of the --predictions group are not used.
See docs/evaluation.md."""


def _task_groups() -> str:
    groups: dict[str, list[str]] = {}
    for alias, task in TASK_ALIASES.items():
        groups.setdefault(task, []).append(alias)
    return "\n".join(f"  {task}: {', '.join(names)}" for task, names in groups.items())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG.format(tasks=_task_groups())
    src = p.add_argument_group("what to score (one of)")
    src.add_argument("--predictions", help="a JSON Lines file of raw outputs, or a directory of "
                     "them (one benchmark per file)")
    src.add_argument("--config", help="an eval config (configs/eval/*.py): runs a model")
    p.add_argument("--out", help="write report.json, report.md, confusion.png, f1_bars.png here")
    p.add_argument("--name", default=None, help="the model's name in the table (default: ours, "
                   "or the checkpoint / HF directory name)")
    pred = p.add_argument_group("--predictions")
    pred.add_argument("--recipe", choices=CLASSIFIER_RECIPES,
                      help="which output format to parse (see below)")
    pred.add_argument("--task", choices=tuple(TASK_ALIASES),
                      help="which label to score: prompt, response or refusal, or an alias of "
                           "one (see below)")
    pred.add_argument("--rule", default="clean",
                      choices=("clean", "guardreasoner-release", "safeguard-release"),
                      help="clean: every sample once, a parse failure is wrong (default); "
                      "guardreasoner-release: the GuardReasoner family's released evaluate.py; "
                      "safeguard-release: SafeGuard-VL's unknown -> safe")
    pred.add_argument("--field-prompt", default="prompt", metavar="KEY",
                      help="key of the input text in each record (default: prompt)")
    pred.add_argument("--field-label", default="label", metavar="KEY",
                      help="key of the gold label: harmful/unharmful, safe/unsafe, 0/1, "
                           "true/false (default: label)")
    pred.add_argument("--field-output", default="predict", metavar="KEY",
                      help="key of the model's raw output text (default: predict)")
    pred.add_argument("--field-tokens", default=None, metavar="KEY",
                      help="key of the output token count, if the producer recorded it")
    pred.add_argument("--field-group", default=None, metavar="KEY",
                      help="key to score per group by (e.g. policy_level)")
    pred.add_argument("--field-category", default=None, metavar="KEY",
                      help="key of the gold category id ('' = out of taxonomy)")
    pred.add_argument("--group-metric", default=None, choices=("f1", "safeeditbench"),
                      help="safeeditbench: accuracy for L1, F1 otherwise, macro over levels")
    pred.add_argument("--modality", action="append", default=[], metavar="NAME=MODALITY",
                      help="modality of a benchmark the published suites do not name")
    pred.add_argument("--tokenizer-dir", default=None,
                      help="count output tokens with this tokenizer (token cost)")
    pred.add_argument("--on-error", default="fail", choices=("fail", "skip"),
                      help="skip: count malformed lines and write them to OUT/quarantine.jsonl")
    run = p.add_argument_group("--config")
    model = run.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="a training workdir (orbax checkpoints)")
    model.add_argument("--hf-dir", help="an HF directory (safetensors)")
    run.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.set_defaults(overrides=[])  # --config.a.b=value arguments land here (see cli.py)


def _modalities(items: list[str]) -> dict[str, str]:
    from guard_jax.evaluation.benchmarks import MODALITIES
    out = {}
    for item in items:
        name, sep, mod = item.partition("=")
        if not sep or mod not in MODALITIES:
            raise InputError(f"--modality {item!r}: expected NAME=MODALITY with MODALITY one of "
                             f"{MODALITIES}")
        out[name] = mod
    return out


def _finish(report, out, errors=()) -> int:
    from guard_jax.evaluation.report import markdown, write_report
    print(markdown(report))
    if out:
        paths = write_report(report, out, errors=errors)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    if errors and not out:
        print(f"{len(errors)} malformed lines skipped; pass --out to keep them in "
              "quarantine.jsonl")
        for e in errors[:10]:
            print(f"  {e}")
    return 0


def _predictions(args) -> int:
    from guard_jax.evaluation.predictions import Fields, PredictionError, score_predictions
    if not args.recipe or not args.task:
        raise InputError("--predictions needs --recipe and --task")
    if not os.path.exists(args.predictions):
        raise InputError(f"--predictions {args.predictions}: no such file or directory")
    fields = Fields(prompt=args.field_prompt, label=args.field_label, output=args.field_output,
                    tokens=args.field_tokens, group=args.field_group,
                    category=args.field_category)
    count = None
    if args.tokenizer_dir:
        from data_pipeline.local_files import load_tokenizer
        tok = load_tokenizer(args.tokenizer_dir, key="--tokenizer-dir")
        count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    try:
        report, errors = score_predictions(
            args.predictions, recipe=args.recipe, task=args.task, rule=args.rule, fields=fields,
            on_error=args.on_error, model=args.name or "ours",
            modalities=_modalities(args.modality), group_metric=args.group_metric,
            count_tokens=count)
    except (PredictionError, FileNotFoundError) as e:  # a bad record, or no *.jsonl files
        raise InputError(f"--predictions {e}" if isinstance(e, FileNotFoundError)
                         else str(e)) from e
    return _finish(report, args.out, errors)


def _run_config(args) -> int:
    from guard_jax.evaluation.runner import evaluate_config
    from guard_jax.run_config import load_config
    if not (args.checkpoint or args.hf_dir):
        raise InputError("--config needs --checkpoint DIR or --hf-dir DIR")
    run = load_config(args.config, args.overrides)  # validated before any device work
    # every input is checked (one InputError listing all) before the model loads
    reports = evaluate_config(run, checkpoint=args.checkpoint, hf_dir=args.hf_dir,
                              step=args.step, out_dir=args.out, name=args.name)
    for r in reports:
        _finish(r, None)
    return 0


def main(args) -> int:
    if bool(args.predictions) == bool(args.config):
        raise InputError("give exactly one of --predictions or --config")
    if args.predictions:
        if args.overrides:
            raise InputError("--config.* overrides need --config")
        return _predictions(args)
    return _run_config(args)
