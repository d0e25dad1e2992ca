"""`guard-jax eval`: score raw outputs (`--predictions`) or run a model on eval datasets
(`--config`), and write the report (JSON, markdown table, PNG plots).

    guard-jax eval --predictions FILE_OR_DIR --recipe R --task T [--rule clean|...] [--out DIR]
    guard-jax eval --config configs/eval/X.py (--checkpoint DIR | --hf-dir DIR) --out DIR

Bad input raises `InputError` (one line, exit 2); with --config every input is checked before
the model loads (`runner.check_inputs`, docs/evaluation.md).
"""

from __future__ import annotations

import argparse

from guard_jax.errors import InputError

RECIPES = ("guardreasoner_vl", "guardreasoner", "proguard", "safeguard_vl", "llavaguard")
TASK_CHOICES = ("prompt", "response", "refusal", "prompt_harmfulness", "response_harmfulness",
                "image_safety", "policy_compliance")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("what to score (one of)")
    src.add_argument("--predictions", help="a JSON Lines file of raw outputs, or a directory of "
                     "them (one benchmark per file)")
    src.add_argument("--config", help="an eval config (configs/eval/*.py): runs a model")
    p.add_argument("--out", help="write report.json, report.md, confusion.png, f1_bars.png here")
    p.add_argument("--name", default=None, help="the model's name in the table (default: ours, "
                   "or the checkpoint / HF directory name)")
    pred = p.add_argument_group("--predictions")
    pred.add_argument("--recipe", choices=RECIPES, help="which output format to parse")
    pred.add_argument("--task", choices=TASK_CHOICES, help="which label to score")
    pred.add_argument("--rule", default="clean",
                      choices=("clean", "guardreasoner-release", "safeguard-release"),
                      help="clean: every sample once, a parse failure is wrong (default); "
                      "guardreasoner-release: the GuardReasoner family's released evaluate.py; "
                      "safeguard-release: SafeGuard-VL's unknown -> safe")
    pred.add_argument("--field-prompt", default="prompt")
    pred.add_argument("--field-label", default="label")
    pred.add_argument("--field-output", default="predict")
    pred.add_argument("--field-tokens", default=None, help="output token count, if recorded")
    pred.add_argument("--field-group", default=None, help="per-group scores (e.g. policy_level)")
    pred.add_argument("--field-category", default=None, help="gold category id ('' = OOD)")
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
    from guard_jax.evaluation.predictions import Fields, score_predictions
    if not args.recipe or not args.task:
        raise InputError("--predictions needs --recipe and --task")
    fields = Fields(prompt=args.field_prompt, label=args.field_label, output=args.field_output,
                    tokens=args.field_tokens, group=args.field_group,
                    category=args.field_category)
    count = None
    if args.tokenizer_dir:
        from data_pipeline.local_files import load_tokenizer
        tok = load_tokenizer(args.tokenizer_dir, key="--tokenizer-dir")
        count = lambda text: len(tok.encode(text, add_special_tokens=False))  # noqa: E731
    report, errors = score_predictions(
        args.predictions, recipe=args.recipe, task=args.task, rule=args.rule, fields=fields,
        on_error=args.on_error, model=args.name or "ours",
        modalities=_modalities(args.modality), group_metric=args.group_metric,
        count_tokens=count)
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
