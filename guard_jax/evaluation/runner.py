"""`guard-jax eval --config`: converted eval datasets -> rendered prompts -> batched generation
-> the same scoring and reports as `--predictions`.

Host logic only. Generation is a function `generate_fn(batch: PromptBatch) -> list[str]` (one
raw output per row): `generation.model_generate_fn` runs our model through `guard_jax.generate`;
anything else (a vLLM client, a test double) plugs in the same way. The batches are global and
built identically on every process, so the same code runs on one device or a multi-host mesh:
`guard_jax.generate` feeds each process's rows to its devices and returns the whole result
everywhere, and process 0 writes the files.

Per benchmark it writes OUT/TASK/outputs/NAME.jsonl in the GuardReasoner release format
(`prompt`, `label`, `predict`, plus `id` and `num_tokens`), so a run can be re-scored later with
`guard-jax eval --predictions` under another rule; then OUT/TASK/report.{json,md} and the plots.

Before the model loads, `evaluate_config` checks every input the run names (each benchmark's
dataset and split, the image files a path-based dataset refers to, the model, the tokenizer,
the output folder) and raises one `InputError` listing all that are missing (docs/evaluation.md).
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from guard_jax.errors import InputError
from guard_jax.evaluation.benchmarks import MODALITIES, modality_of
from guard_jax.evaluation.parsers import CLASSIFIER_RECIPES, canonical_task
from guard_jax.evaluation.scoring import GROUP_METRICS, RULES, EvalReport, Prediction, \
    score_benchmark

BENCHMARK_KEYS = {"name", "path", "split", "task", "modality", "group", "group_metric"}
GROUPS = ("policy_level", "category")  # what a benchmark's per-group scores group by
PAD_ID = 151643  # <|endoftext|>; left padding, masked out


@dataclasses.dataclass(frozen=True)
class EvalExample:
    sample_id: str
    text: str  # the chat-template prompt (image pads not expanded), what a text server takes
    input_ids: np.ndarray  # [length] int32, image pads expanded
    pixel_values: np.ndarray  # [patches, 1176] float32 (0 rows without images)
    image_grid_thw: np.ndarray  # [images, 3]
    images: tuple  # the PIL images, in placeholder order
    prediction: Prediction  # gold label and group; its `raw` is filled after generation
    # the videos, preprocessed with the run's data.video_* settings (none: 0 rows)
    pixel_values_videos: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 1176), np.float32))  # [patches, 1176]
    video_grid_thw: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 3), np.int64))  # [videos, 3]
    second_per_grid_ts: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.float64))  # [videos]


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """A global batch: `valid` is False on rows that only pad the last batch to full size."""
    sample_ids: list[str]
    valid: np.ndarray
    texts: list[str]
    images: list[tuple]
    input_ids: np.ndarray  # [B, L] LEFT-padded (what guard_jax.generate takes)
    attention_mask: np.ndarray  # [B, L]
    pixel_values: np.ndarray | None  # [all patches of the batch, 1176], or None
    image_grid_thw: np.ndarray | None  # [all images of the batch, 3], or None
    # the batch's videos as guard_jax.generate takes them, or None
    pixel_values_videos: np.ndarray | None = None  # [all video patches of the batch, 1176]
    video_grid_thw: np.ndarray | None = None  # [all videos of the batch, 3]
    second_per_grid_ts: np.ndarray | None = None  # [all videos of the batch]


GenerateFn = Callable[[PromptBatch], Sequence[str]]


# ---- config --------------------------------------------------------------------------------
def eval_base_config(recipe: str, *, preset: str = "7b"):
    """`run_config.base_config()` set up for greedy eval of a published-size model: bf16 weights
    and compute, the batch split over every device (a 7B model in bf16 fits one device), the
    recipe as both prompt renderer and output parser. configs/eval/*.py start from this."""
    from guard_jax.run_config import base_config
    c = base_config()
    c.model.preset = preset
    c.model.param_dtype = c.model.dtype = "bfloat16"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    c.data.recipe = c.eval.recipe = recipe
    return c


def parse_options(text: str) -> dict:
    """'mode=eval,think_tag=think' -> {'mode': 'eval', 'think_tag': 'think'} (values are Python
    literals where they parse, strings otherwise)."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"eval.recipe_options item {item!r} must look like key=value")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


def benchmark_specs(run) -> list[dict]:
    """The config's benchmarks with defaults filled in, validated (errors name the entry)."""
    ev, specs = run.eval, []
    for i, b in enumerate(ev.benchmarks):
        b = dict(b)
        where = f"eval.benchmarks[{i}] ({b.get('name', '?')})"
        unknown = set(b) - BENCHMARK_KEYS
        if unknown or not b.get("name") or not b.get("path"):
            raise ValueError(f"{where}: needs name and path; unknown keys {sorted(unknown)}; "
                             f"valid keys {sorted(BENCHMARK_KEYS)}")
        b.setdefault("split", "test")
        b["task"] = canonical_task(b.get("task") or ev.task)
        if b.get("modality") not in (None, *MODALITIES):
            raise ValueError(f"{where}: modality {b['modality']!r}; choose one of {MODALITIES}")
        if b.get("group") not in (None, *GROUPS):
            raise ValueError(f"{where}: group {b['group']!r}; choose one of {GROUPS}")
        if b.get("group_metric") not in (None, *GROUP_METRICS):
            raise ValueError(f"{where}: group_metric {b['group_metric']!r}; choose one of "
                             f"{GROUP_METRICS}")
        if b.get("group_metric") and not b.get("group"):
            raise ValueError(f"{where}: group_metric needs group")
        path = Path(os.path.expanduser(b["path"]))
        b["path"] = str(path if path.is_absolute() or not ev.data_root
                        else Path(ev.data_root) / path)
        specs.append(b)
    return specs


def check_eval_config(run) -> None:
    """Errors in the eval section, before any data or device work."""
    ev, errs = run.eval, []
    recipe = ev.recipe or run.data.recipe
    if recipe not in CLASSIFIER_RECIPES:
        errs.append(f"eval.recipe={recipe!r}; choose one of {CLASSIFIER_RECIPES}")
    if ev.rule not in RULES:
        errs.append(f"eval.rule={ev.rule!r}; choose one of {RULES}")
    if not ev.benchmarks:
        errs.append("eval.benchmarks is empty")
    if ev.batch_size < 1 or ev.max_new_tokens < 1 or ev.max_prompt_len < 1 or ev.limit < 0:
        errs.append("eval.batch_size, max_new_tokens and max_prompt_len must be >= 1 and "
                    "eval.limit >= 0")
    if ev.on_error not in ("fail", "skip"):
        errs.append(f"eval.on_error={ev.on_error!r}; choose fail or skip")
    from guard_jax.sampling.engines import ENGINES
    if ev.rollout_engine not in ENGINES:
        errs.append(f"eval.rollout_engine={ev.rollout_engine!r}; choose one of "
                    f"{tuple(ENGINES)}")
    if ev.rollout_slots and (ev.rollout_slots < 0 or ev.rollout_engine == "static"):
        errs.append(f"eval.rollout_slots={ev.rollout_slots} must be >= 0, and 0 with "
                    "rollout_engine='static' (which has no slot pool)")
    try:
        parse_options(ev.recipe_options)
        benchmark_specs(run)
    except ValueError as e:
        errs.append(str(e))
    if errs:
        raise InputError("invalid eval config: " + "; ".join(errs))


# ---- inputs, all checked before the model loads ---------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either one makes a Qwen tokenizer


def _tokenizer_problem(what: str, path) -> str | None:
    p = Path(path)
    if not p.is_dir():
        return f"{what} {path}: no such directory"
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        return f"{what} {path}: no tokenizer files ({' or '.join(TOKENIZER_FILES)})"
    return None


def _hf_dir_problems(hf_dir, *, tokenizer: bool) -> list[str]:
    p = Path(hf_dir)
    if not p.is_dir():
        return [f"--hf-dir {hf_dir}: no such directory"]
    out = []
    if not (p / "config.json").is_file():
        out.append(f"--hf-dir {hf_dir}: no config.json")
    if not any(p.glob("*.safetensors")):
        out.append(f"--hf-dir {hf_dir}: no *.safetensors weights")
    if tokenizer:
        out.append(_tokenizer_problem("--hf-dir", hf_dir))
    return out


def _checkpoint_problems(checkpoint, step, *, tokenizer: bool) -> list[str]:
    """The step folder and its run config (what `guard-jax export` reads), and with `tokenizer`
    the tokenizer files the export copies (the run's data.tokenizer_dir or model.hf_dir)."""
    p = Path(checkpoint)
    if not p.is_dir():
        return [f"--checkpoint {checkpoint}: no such directory"]
    steps = sorted(int(c.name) for c in p.iterdir() if c.is_dir() and c.name.isdigit())
    if not steps:
        return [f"--checkpoint {checkpoint}: no checkpoint step folders"]
    if step is not None and step not in steps:
        return [f"--step {step}: not in --checkpoint {checkpoint} (steps {steps})"]
    meta = p / str(steps[-1] if step is None else step) / "meta" / "metadata"
    try:
        run = json.loads(meta.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"--checkpoint {checkpoint}: no readable run config in {meta} ({e})"]
    if not tokenizer:
        return []
    source = (run.get("data") or {}).get("tokenizer_dir") or (run.get("model") or {}).get("hf_dir")
    if not source:
        return [f"--checkpoint {checkpoint}: its run names no tokenizer (data.tokenizer_dir, "
                "model.hf_dir); set data.tokenizer_dir"]
    return [_tokenizer_problem(f"the tokenizer of --checkpoint {checkpoint}", source)]


def _out_problem(out_dir) -> str | None:
    p = Path(out_dir).absolute()
    if p.exists() and not p.is_dir():
        return f"--out {out_dir}: exists and is not a directory"
    parent = next(q for q in (p, *p.parents) if q.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"--out {out_dir}: cannot write under {parent}"
    return None


def _benchmark_problems(spec: dict, where: str, *, limit: int, on_error: str) -> list[str]:
    """The dataset and split; that the samples run hold one gold label for the benchmark's task
    at least (else nothing could be scored); and for a dataset that stores image paths, its
    image root and (with on_error=fail, where one would stop the run) every image and video
    file of the samples run."""
    from data_pipeline.build import open_source
    try:
        source = open_source(spec["path"], spec["split"])
    except (OSError, ValueError, KeyError) as e:  # no dataset there; an unknown split
        return [f"{where} path {spec['path']} split {spec['split']!r}: {e}"]
    by_path = source.metadata.get("images") == "paths"
    root = Path(source.image_root or "")
    samples = source if not limit else itertools.islice(source, limit)
    refs = {"image": [], "video": []}
    n = labelled = 0
    for sample in samples:
        n += 1
        labelled += _gold(sample, spec["task"]) is not None
        if not by_path and labelled:
            break  # nothing else to look at
        refs["image"] += [im.path for im in sample.images if im.data is None]
        refs["video"] += [v.path for v in sample.videos if v.data is None]
    out = []
    if not labelled:
        out.append(f"{where} path {spec['path']} split {spec['split']!r}: none of its {n} "
                   f"samples has a gold label for the {spec['task']} task; nothing to score")
    if any(refs.values()) and not root.is_dir():
        stored = " and ".join(f"{len(r)} {kind}s" for kind, r in refs.items() if r)
        return out + [f"{where}: image root {root} (from the dataset's metadata) does not "
                      f"exist; {stored} are stored relative to it"]
    for kind, paths in refs.items():
        missing = [r for r in paths if not (root / r).is_file()]
        if missing and on_error == "fail":
            out.append(f"{where}: {len(missing)} of {len(paths)} {kind} files missing under "
                       f"{root} (first: {missing[0]})")
    return out


def input_problems(run, *, checkpoint=None, hf_dir=None, step=None, out_dir=None,
                   model: bool = True, tokenizer: bool = True) -> list[str]:
    """Every missing or unusable input of `guard-jax eval --config`, one line each. `model`
    and `tokenizer`: whether the run loads them (a given generate_fn or tokenizer is not)."""
    from guard_jax.evaluation.generation import mesh_problems
    ev, problems = run.eval, []
    if model:  # the mesh the model will be placed on, against this job's devices
        problems += mesh_problems(run)
    for i, spec in enumerate(benchmark_specs(run)):
        problems += _benchmark_problems(spec, f"eval.benchmarks[{i}] ({spec['name']})",
                                        limit=ev.limit, on_error=ev.on_error)
    tokenizer_dir = run.data.tokenizer_dir
    if tokenizer and tokenizer_dir:
        problems.append(_tokenizer_problem("data.tokenizer_dir", tokenizer_dir))
    model_tokenizer = tokenizer and not tokenizer_dir  # the tokenizer comes with the model
    if checkpoint is not None and (model or model_tokenizer):
        problems += _checkpoint_problems(checkpoint, step, tokenizer=model_tokenizer)
    elif hf_dir is not None and (model or model_tokenizer):
        problems += _hf_dir_problems(hf_dir, tokenizer=model_tokenizer)
    elif model or model_tokenizer:
        problems.append("no model: pass --checkpoint DIR or --hf-dir DIR")
    if out_dir is not None:
        problems.append(_out_problem(out_dir))
    return [p for p in problems if p]


def check_inputs(run, **kw) -> None:
    """`input_problems` as one InputError: every problem in one line, nothing written."""
    problems = input_problems(run, **kw)
    if problems:
        raise InputError(f"{len(problems)} missing or unusable input(s): " + "; ".join(problems))


# ---- samples -> examples -------------------------------------------------------------------
def _open_image(ref, root: str | None):
    from data_pipeline.image_validation import open_image
    if ref.data is not None:
        return open_image(ref.data, what="the embedded image")
    path = os.path.join(root or "", ref.path)
    return open_image(path, what=f"image {path}")


def _gold(sample, task: str) -> int | None:
    from data_pipeline.schema import Label
    if task == "refusal":  # no schema field: converters may keep it in the extras
        word = str(sample.extras.get("refusal_label") or "").strip().lower()
        return {"refusal": 1, "compliance": 0}.get(word)
    label = sample.prompt_label if task == "prompt" else sample.response_label
    return None if label == Label.NONE else int(label == Label.HARMFUL)


def _prediction(sample, spec: dict, recipe: str) -> Prediction:
    cat, group = sample.category, None
    if spec.get("group") == "policy_level":
        group = sample.extras.get("policy_level")
    elif spec.get("group") == "category":
        group = cat.name or cat.id if cat else None
    gold_cat = None
    name = (sample.extras.get("original_category") or (cat.name if cat else "")) or None
    if cat is not None and cat.id:
        gold_cat = cat.id
    elif cat is not None and name and recipe == "proguard":
        gold_cat = ""  # ProGuard's out-of-taxonomy sample: no id, a name (elsewhere, e.g.
        # UnsafeBench, a name without an id is just a label of the source)
    return Prediction(where=f"{spec['name']} sample {sample.id}", gold=_gold(sample, spec["task"]),
                      raw="", group=None if group is None else str(group),
                      gold_category=gold_cat, gold_category_name=name,
                      synonyms=tuple(cat.synonyms) if cat else ())


def _videos(refs, root: str | None, data, fail):
    """(pixel_values_videos, video_grid_thw, second_per_grid_ts) of a prompt's videos with the
    run's data.video_fps / min_frames / max_frames / video_min_pixels / video_max_pixels, as
    the loader preprocesses them (docs/data.md#videos); a bad one raises `fail(...)` naming
    `videos[k]`."""
    from data_pipeline.video_processing import preprocess_video_refs

    def error(k, ref, reason, message):
        return fail(reason, f"{ref.path or 'the embedded video'}: {message}", f"videos[{k}]")
    return preprocess_video_refs(refs, root, data, error)


def prepare_example(sample, spec: dict, *, recipe: str, options: dict, tokenizer, run,
                    image_root: str | None) -> EvalExample:
    """Renders the recipe's prompt with no assistant turn, loads and preprocesses the images and
    videos and tokenizes. Bad input raises SampleError naming the sample and field."""
    from data_pipeline.image_processing import preprocess_images
    from data_pipeline.image_validation import ImageProblem
    from data_pipeline.prompts import render
    from data_pipeline.schema import SampleError
    from data_pipeline.tokenize import tokenize_rendered

    def fail(reason, message, field):
        return SampleError(reason, message, file=spec["path"], record=sample.id, field=field)

    try:
        rendered = dataclasses.replace(render(recipe, sample, **options), target=None)
    except SampleError:
        raise
    except ValueError as e:
        raise fail("render", str(e), "user_text") from e
    images = []
    for k, ref in enumerate(rendered.images):
        try:
            images.append(_open_image(ref, image_root))
        except ImageProblem as e:  # unreadable, or a decompression bomb (docs/evaluation.md)
            raise fail("bad_image", f"cannot load image ({e.reason}): {e}",
                       f"images[{k}]") from e
    pvv, vgrid, seconds = _videos(rendered.videos, image_root, run.data, fail)
    try:
        pv, grid = preprocess_images(images, min_pixels=run.data.min_pixels,
                                     max_pixels=run.data.max_pixels)
        tok = tokenize_rendered(rendered, tokenizer, grid, add_generation_prompt=True,
                                video_grids=vgrid)
    except ValueError as e:
        raise fail("tokenize", str(e), "images" if images else "user_text") from e
    if len(tok.input_ids) > run.eval.max_prompt_len:
        raise fail("too_long", f"{len(tok.input_ids)} prompt tokens, more than "
                   f"eval.max_prompt_len {run.eval.max_prompt_len}", "input_ids")
    text = tokenizer.apply_chat_template(rendered.messages, tokenize=False,
                                         add_generation_prompt=True)
    return EvalExample(sample.id, text, np.asarray(tok.input_ids, np.int32), pv,
                       np.asarray(grid, np.int64).reshape(-1, 3), tuple(images),
                       _prediction(sample, spec, recipe), np.asarray(pvv, np.float32),
                       np.asarray(vgrid, np.int64).reshape(-1, 3), np.asarray(seconds))


def make_batch(examples: Sequence[EvalExample], batch_size: int, *,
               pad_id: int = PAD_ID) -> PromptBatch:
    """Left-pads `examples` to the longest (with `pad_id`, masked out) and repeats the last one
    up to `batch_size` rows (marked invalid), so every call has the same batch size."""
    rows = list(examples) + [examples[-1]] * (batch_size - len(examples))
    length = max(len(e.input_ids) for e in rows)
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, e in enumerate(rows):
        ids[i, length - len(e.input_ids):] = e.input_ids
        mask[i, length - len(e.input_ids):] = 1
    grids = [e.image_grid_thw for e in rows if len(e.image_grid_thw)]
    with_videos = [e for e in rows if len(e.video_grid_thw)]
    videos = {}
    if with_videos:  # every row's videos in row order, as guard_jax.generate takes them
        videos = {k: np.concatenate([getattr(e, k) for e in with_videos]) for k in
                  ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
    return PromptBatch(
        sample_ids=[e.sample_id for e in rows],
        valid=np.arange(len(rows)) < len(examples), texts=[e.text for e in rows],
        images=[e.images for e in rows], input_ids=ids, attention_mask=mask,
        pixel_values=np.concatenate([e.pixel_values for e in rows]) if grids else None,
        image_grid_thw=np.concatenate(grids) if grids else None, **videos)


def generate_all(examples: Sequence[EvalExample], generate_fn: GenerateFn, *, batch_size: int,
                 desc: str = "", progress: bool = True, pad_id: int = PAD_ID) -> list[str]:
    """Raw outputs for `examples`, in order, batch by batch behind a progress bar."""
    from tqdm.auto import tqdm
    outputs: list[str] = []
    starts = range(0, len(examples), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=not progress):
        chunk = examples[s:s + batch_size]
        got = list(generate_fn(make_batch(chunk, batch_size, pad_id=pad_id)))
        if len(got) != batch_size or not all(isinstance(t, str) for t in got):
            raise ValueError(f"generate_fn returned {len(got)} outputs for a batch of "
                             f"{batch_size} rows; it must return one string per row")
        outputs += got[:len(chunk)]
    return outputs


# ---- the whole run --------------------------------------------------------------------------
def _quarantine(path: Path, errors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for e in errors:
            f.write(json.dumps({"file": e.file, "record": e.record, "field": e.field,
                                "reason": e.reason, "message": str(e)}, ensure_ascii=False)
                    + "\n")


def _write_outputs(path: Path, examples, preds) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e, p in zip(examples, preds):
            f.write(json.dumps({"id": e.sample_id, "prompt": e.text,
                                "label": {1: "harmful", 0: "unharmful", None: None}[p.gold],
                                "predict": p.raw, "num_tokens": p.num_tokens},
                               ensure_ascii=False) + "\n")


def _modality(spec: dict, examples) -> str | None:
    """The benchmark's modality: the config's, else the published suites', else "video" when
    its samples carry videos (None otherwise: the report shows "?")."""
    named = spec.get("modality") or modality_of(spec["name"])
    if named or not any(len(e.video_grid_thw) for e in examples):
        return named
    return "video"


def run_benchmarks(run, generate_fn: GenerateFn, *, tokenizer, out_dir=None, name: str = "ours",
                   progress: bool = True, is_writer: bool = True) -> list[EvalReport]:
    """Every benchmark of `run.eval` through `generate_fn`; one report per task."""
    from data_pipeline.build import open_source
    from data_pipeline.schema import SampleError
    check_eval_config(run)
    ev = run.eval
    recipe, options = ev.recipe or run.data.recipe, parse_options(ev.recipe_options)
    pad_id = PAD_ID if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
    results: dict[str, list] = {}
    skipped: dict[str, Counter] = {}  # per task
    out = Path(out_dir) if out_dir else None
    for spec in benchmark_specs(run):
        source = open_source(spec["path"], spec["split"])
        samples = source if not ev.limit else itertools.islice(source, ev.limit)
        examples, errors = [], []
        for sample in samples:
            try:
                examples.append(prepare_example(sample, spec, recipe=recipe, options=options,
                                                tokenizer=tokenizer, run=run,
                                                image_root=source.image_root))
            except SampleError as e:
                if ev.on_error == "fail":
                    raise
                errors.append(e)
        skipped.setdefault(spec["task"], Counter()).update(e.reason for e in errors)
        if errors and out is not None and is_writer:
            _quarantine(out / "quarantine.jsonl", errors)
        raws = generate_all(examples, generate_fn, batch_size=ev.batch_size,
                            desc=spec["name"], progress=progress and is_writer,
                            pad_id=pad_id) if examples else []
        # token cost: the decoded output re-tokenized, the same count --predictions makes
        preds = [dataclasses.replace(e.prediction, raw=r, prompt=e.text,
                                     num_tokens=len(tokenizer.encode(r, add_special_tokens=False)))
                 for e, r in zip(examples, raws)]
        if out is not None and is_writer:
            _write_outputs(out / spec["task"] / "outputs" / f"{spec['name']}.jsonl", examples,
                           preds)
        results.setdefault(spec["task"], []).append(score_benchmark(
            spec["name"], preds, recipe=recipe, task=spec["task"], rule=ev.rule,
            modality=_modality(spec, examples), group_metric=spec.get("group_metric"),
            source=spec["path"]))
    reports = [EvalReport(task=t, recipe=recipe, rule=ev.rule, model=name, benchmarks=bs,
                          skipped=dict(skipped.get(t, {}))) for t, bs in results.items()]
    if out is not None and is_writer:
        from guard_jax.evaluation.report import write_report
        for r in reports:
            write_report(r, out / r.task)
    return reports


def evaluate_config(run, *, checkpoint=None, hf_dir=None, step=None, out_dir=None,
                    name: str | None = None, generate_fn: GenerateFn | None = None,
                    tokenizer=None, progress: bool = True) -> list[EvalReport]:
    """`guard-jax eval --config`: loads the model (unless `generate_fn` is given) and the
    tokenizer (unless given: data.tokenizer_dir, else the model's), then `run_benchmarks`.

    On several processes every process runs this with the same arguments: each generates its
    share of every batch, process 0 alone writes. An input error met on any process, before
    the model loads or mid-run, ends every process with the same line (docs/evaluation.md)."""
    import jax

    from data_pipeline.schema import DataInputError
    from guard_jax import distributed
    from guard_jax.evaluation import generation
    check_eval_config(run)
    default = Path(checkpoint or hf_dir).name if (checkpoint or hf_dir) else "ours"
    mesh = ckpt = None
    with distributed.input_errors_together(InputError, DataInputError):
        check_inputs(run, checkpoint=checkpoint, hf_dir=hf_dir, step=step, out_dir=out_dir,
                     model=generate_fn is None, tokenizer=tokenizer is None)
        if checkpoint is not None and (generate_fn is None or tokenizer is None):
            ckpt = generation.checkpoint_run(checkpoint, step)
        if tokenizer is None:
            from_model = hf_dir or (ckpt and generation.checkpoint_tokenizer_dir(ckpt[1]))
            tokenizer = generation.load_tokenizer(run.data.tokenizer_dir or from_model)
        if generate_fn is None:
            mesh = generation.eval_mesh(run)
    if generate_fn is None:
        import guard_jax
        dtypes = dict(dtype=run.model.param_dtype, compute_dtype=run.model.dtype)
        if ckpt is not None:  # restored onto the mesh, no export (docs/evaluation.md)
            model = generation.load_checkpoint(checkpoint, *ckpt, mesh=mesh, **dtypes)
        else:
            model = guard_jax.load_hf(hf_dir, mesh=mesh, **dtypes,
                                      progress=progress and jax.process_index() == 0)
        generate_fn = generation.model_generate_fn(run, model, tokenizer, mesh)

    def checked(batch):
        # a peer that met an input error since the last batch stops every process here
        distributed.raise_input_errors_together(None)
        return generate_fn(batch)

    with distributed.input_errors_together(InputError, DataInputError):
        return run_benchmarks(run, checked, tokenizer=tokenizer, out_dir=out_dir,
                              name=name or default, progress=progress,
                              is_writer=jax.process_index() == 0)
