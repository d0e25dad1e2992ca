"""Converter output -> ArrayRecord dataset (a tfds builder, no TensorFlow) -> grain source.

Layout under `out`: `guard_samples/<converter name>/1.0.0/` (tfds files: dataset_info.json,
features.json, metadata.json, `guard_samples-<split>.array_record-*`), plus `summary.json` and
`quarantine.jsonl` for the build. Each record holds `id` and `record` = `Sample.to_record()`,
written in source order (tfds shuffling is disabled, so record i is the i-th sample written).

Bad input: `on_error="fail"` raises the first `SampleError` (it names file, record and field);
`"skip"` counts it by reason and writes one quarantine line (file, record, field, reason,
message). `read == written + sum(skipped)` always holds; nothing is dropped uncounted. Besides
the converter's own checks, every sample must pass `limits.SampleLimits` and, when a loader
config is given, the loader's transform (so training never meets a record it refuses).

The build is written into a hidden staging folder next to `out` and moved into place only once
complete: a failed build leaves `out` as it was (an earlier build intact with --overwrite) and
no partial folder behind. See docs/data.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_pipeline.converters import CONVERTERS, converter_options, get_converter
from data_pipeline.image_validation import ImagePolicy
from data_pipeline.limits import SampleLimits
from data_pipeline.schema import DataInputError, Sample, SampleError

BUILDER_NAME = "guard_samples"
VERSION = "1.0.0"
SUMMARY_FILE = "summary.json"
QUARANTINE_FILE = "quarantine.jsonl"
ON_ERROR = ("fail", "skip")


class BuildExistsError(DataInputError, FileExistsError):
    """`out` holds an earlier build and overwrite was not asked for."""


class EmptyDatasetError(RuntimeError):
    """Every record was skipped (or the source had none): there is no dataset to write."""


@dataclasses.dataclass
class BuildSummary:
    name: str
    source: str
    split: str
    dataset_dir: str
    image_root: str
    images: str  # "paths" (relative to image_root) or "embedded"
    on_error: str
    read: int = 0
    written: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    quarantine: str | None = None
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "skipped_total": self.skipped_total}

    def format(self) -> str:
        lines = [f"{self.name} [{self.split}] -> {self.dataset_dir}",
                 f"  read {self.read}, written {self.written}, skipped {self.skipped_total} "
                 f"({self.seconds:.1f} s)"]
        lines += [f"    {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        if self.skipped_total:
            lines.append(f"  quarantine: {self.quarantine}")
        return "\n".join(lines)


@functools.cache
def _builder_class():
    import numpy as np
    import tensorflow_datasets as tfds

    class GuardSamples(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Samples of one converter; one config per converter name."""
        VERSION = tfds.core.Version(VERSION)
        # Declared, so tfds takes the config by name instead of warning about a custom one.
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"converter {n}")
                           for n in sorted(CONVERTERS)]

        # tfds looks for the builder's source through `importlib_resources` when the class lives
        # in a package, a module this environment lacks; the plain file path is what it wants.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            from etils import epath
            return epath.Path(__file__)

        def __init__(self, *, examples=None, split="train", metadata=None, **kwargs):
            self._examples, self._split, self._meta = examples, split, metadata or {}
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description="guard_jax samples (data_pipeline.schema.Sample)",
                features=tfds.features.FeaturesDict({
                    "id": tfds.features.Text(),
                    "record": tfds.features.Tensor(shape=(), dtype=np.object_)}),
                disable_shuffling=True, metadata=tfds.core.MetadataDict(self._meta))

        # tfds prints "Downloading and preparing dataset Unknown size ..." and "... downloaded
        # and prepared" to stdout on every build; nothing is downloaded here and the build
        # prints its own summary (docs/data.md), so both stay silent.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

        def _split_generators(self, dl_manager):
            return {self._split: self._generate_examples()}

        def _generate_examples(self):
            yield from self._examples

    return GuardSamples


class _Outcome:
    """Counts, quarantine lines and the fail/skip decision for one build."""

    def __init__(self, summary: BuildSummary, quarantine_path: Path):
        self.summary, self.path = summary, quarantine_path
        self.reasons: Counter[str] = Counter()
        self._file = None

    def bad(self, err: SampleError) -> None:
        if self.summary.on_error == "fail":
            raise err
        self.reasons[err.reason] += 1
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")
        line = {"file": err.file, "record": err.record, "field": err.field, "reason": err.reason,
                "message": err.message}
        self._file.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def build_dataset(name: str, source: str | os.PathLike, out: str | os.PathLike, *,
                  split: str = "train", root: str | os.PathLike | None = None,
                  on_error: str = "fail", max_image_pixels: int | None = None,
                  embed_images: bool = False, overwrite: bool = False, progress: bool = True,
                  options: dict[str, Any] | None = None, echo: bool = True,
                  limits: SampleLimits = SampleLimits(), check_loader=None,
                  tokenizer_dir: str | None = None,
                  tokenizer_key: str | None = None) -> BuildSummary:
    """Converts `source` with converter `name` into an ArrayRecord dataset under `out`.

    `check_loader` (a `loader.LoaderConfig`, with `tokenizer_dir`) runs the loader's transform on
    every sample, so records that loader would refuse are refused here (on_error decides)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    convert = get_converter(name)
    options = dict(options or {})
    unknown = set(options) - set(converter_options(name))
    if unknown:
        raise ValueError(f"converter {name} has no option(s) {sorted(unknown)}; it takes "
                         f"{sorted(converter_options(name)) or 'none'}")
    out = Path(out).absolute()
    dataset_rel = Path(BUILDER_NAME) / name / VERSION
    previous = _previous_build(out, dataset_rel)
    if previous and not overwrite:
        raise BuildExistsError(f"{previous[0]} exists; pass overwrite=True (--overwrite) to "
                               "replace the earlier build")

    policy = ImagePolicy(embed=embed_images, max_pixels=max_image_pixels)
    source = Path(source).absolute()
    image_root = Path(root if root is not None else
                      (source if source.is_dir() else source.parent)).absolute()
    transform = None
    if check_loader is not None:
        from data_pipeline.loader import ExampleTransform
        transform = ExampleTransform(dataclasses.replace(check_loader, on_error="fail"),
                                     tokenizer_dir, str(image_root), tokenizer_key=tokenizer_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        summary, empty = _build(convert, name, source, staging, out, dataset_rel, split=split,
                                image_root=image_root, policy=policy, on_error=on_error,
                                options=options, progress=progress, limits=limits,
                                transform=transform)
        if not empty or not previous:  # an empty build never replaces an earlier one
            _swap_in(staging, out, dataset_rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if echo:
        print(summary.format())
    if empty:
        kept = (f"; the earlier build in {out} is kept and this build's quarantine was not "
                "written" if previous else f"; see {summary.quarantine or 'the source'}")
        raise EmptyDatasetError(f"{name}: no sample written from {source} (read {summary.read}, "
                                f"skipped {summary.skipped_total}: {summary.skipped}){kept}")
    return summary


def _build(convert, name: str, source: Path, staging: Path, out: Path, dataset_rel: Path, *,
           split: str, image_root: Path, policy: ImagePolicy, on_error: str, options: dict,
           progress: bool, limits: SampleLimits, transform) -> tuple[BuildSummary, bool]:
    """Writes the whole build into `staging` (paths in the summary name `out`); returns the
    summary and whether no sample was written."""
    summary = BuildSummary(name=name, source=str(source), split=split,
                           dataset_dir=str(out / dataset_rel), image_root=str(image_root),
                           images="embedded" if policy.embed else "paths", on_error=on_error)
    outcome = _Outcome(summary, staging / QUARANTINE_FILE)
    start = time.perf_counter()
    samples = convert(source, root=image_root, images=policy, **options)

    def check(item: Sample) -> SampleError | None:
        try:
            limits.check(item, image_root=image_root)
            if transform is not None:
                transform.example(item)
        except SampleError as e:
            return e
        return None

    def examples() -> Iterator[tuple[int, dict[str, Any]]]:
        from tqdm.auto import tqdm
        bar = tqdm(samples, desc=f"{name} [{split}]", unit=" rec", disable=not progress,
                   file=sys.stderr)
        for item in bar:
            summary.read += 1
            if not isinstance(item, (Sample, SampleError)):
                raise TypeError(f"converter {name} yielded {type(item).__name__}")
            problem = item if isinstance(item, SampleError) else check(item)
            if problem is not None:
                outcome.bad(problem)
                bar.set_postfix(written=summary.written, skipped=sum(outcome.reasons.values()),
                                refresh=False)
                continue
            yield summary.written, {"id": item.id, "record": item.to_record()}
            summary.written += 1
        bar.close()

    metadata = {"converter": name, "source": str(source), "split": split,
                "image_root": str(image_root), "images": summary.images}
    empty = False
    try:
        _write(examples(), staging, name, split, metadata)
    except AssertionError:
        if summary.written:
            raise
        empty = True  # tfds refuses an empty split; report it with the counts
    finally:
        outcome.close()
        summary.skipped = dict(sorted(outcome.reasons.items()))
        summary.quarantine = str(out / QUARANTINE_FILE) if summary.skipped_total else None
        summary.seconds = round(time.perf_counter() - start, 3)
    assert summary.read == summary.written + summary.skipped_total, summary
    (staging / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=2) + "\n",
                                        encoding="utf-8")
    return summary, empty


def _previous_build(out: Path, dataset_rel: Path) -> list[Path]:
    return [p for p in (out / dataset_rel, out / SUMMARY_FILE) if p.exists()]


def _swap_in(staging: Path, out: Path, dataset_rel: Path) -> None:
    """Moves the finished build from `staging` into `out`, replacing the earlier build (its
    dataset folder, summary and quarantine) only now; on a failed move the earlier one is put
    back."""
    parts = [dataset_rel, Path(SUMMARY_FILE), Path(QUARANTINE_FILE)]
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    moved_old, moved_new = [], []
    try:
        for rel in parts:
            if (out / rel).exists():
                (old / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(out / rel, old / rel)
                moved_old.append(rel)
        for rel in parts:
            if (staging / rel).exists():
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, out / rel)
                moved_new.append(rel)
    except BaseException:
        for rel in moved_new:
            os.replace(out / rel, staging / rel)
        for rel in moved_old:
            os.replace(old / rel, out / rel)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _write(examples, out: Path, name: str, split: str, metadata: dict[str, Any]) -> None:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()  # ours counts records; tfds' bars would only repeat it
    builder = _builder_class()(
        examples=examples, split=split, metadata=metadata, data_dir=str(out), config=name,
        file_format="array_record")
    with tempfile.TemporaryDirectory(prefix="guard_jax_dl_") as downloads:
        # No downloads happen, but tfds would otherwise create `out/downloads`.
        builder.download_and_prepare(download_dir=downloads)


# ---- reading ----------------------------------------------------------------------------------

def find_dataset_dir(path: str | os.PathLike) -> Path:
    """The tfds dataset folder (the one holding dataset_info.json) at or under `path`."""
    path = Path(path)
    if (path / "dataset_info.json").is_file():
        return path
    found = sorted({p.parent for pattern in ("*/dataset_info.json", "*/*/dataset_info.json",
                                             "*/*/*/dataset_info.json")
                    for p in path.glob(pattern)})
    if len(found) != 1:
        raise FileNotFoundError(f"expected one dataset under {path}, found "
                                f"{[str(p) for p in found] or 'none'}")
    return found[0]


class SampleSource:
    """Random-access source of `Sample`s for `grain.MapDataset.source` (len + getitem; pickles
    to grain's worker processes). Image paths in the samples are relative to `image_root`."""

    def __init__(self, raw, *, dataset_dir: Path, metadata: dict[str, Any]):
        self._raw, self.dataset_dir, self.metadata = raw, dataset_dir, dict(metadata)
        self.image_root = self.metadata.get("image_root")

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, index) -> Sample:
        return Sample.from_record(self._raw[index]["record"])

    def __iter__(self) -> Iterator[Sample]:
        # Explicit: the fallback protocol stops on IndexError, array_record raises ValueError.
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"SampleSource({self.dataset_dir}, {len(self)} samples)"


def open_source(path: str | os.PathLike, split: str = "train", *, decode: bool = True):
    """The samples of a built dataset: a `SampleSource` (decode=True) or tfds' raw source of
    `{"id": bytes, "record": bytes}` dicts. `path` is the build's `out` folder or the dataset
    folder itself; `split` may slice (`"train[:10%]"`)."""
    import tensorflow_datasets as tfds
    dataset_dir = find_dataset_dir(path)
    builder = tfds.builder_from_directory(str(dataset_dir))
    raw = builder.as_data_source(split=split)
    if not decode:
        return raw
    return SampleSource(raw, dataset_dir=dataset_dir, metadata=dict(builder.info.metadata or {}))
