"""The grain loader: samples -> rendered, tokenised, image/video-preprocessed, static-shape batches.

Pipeline: source -> seeded shuffle, a fresh permutation of the whole dataset each epoch ->
repeat -> this process's share (every shard_count-th element of that sequence) -> per sample:
render the recipe's prompt, load and preprocess images and videos, tokenize with loss mask ->
drop (count and quarantine) bad samples in skip mode -> batches padded to the smallest
configured length bucket that fits the batch (video patches likewise to the smallest video
patch bucket) -> optional worker processes. Over all processes, each epoch's
records are every record exactly once. The iterator's state (get_state / set_state) is
checkpointable, so a resumed run sees exactly the batches it would have seen. See docs/data.md.

Batches are plain numpy dicts; model-specific index work (M-RoPE positions, vision windows)
happens in the trainer, which keeps this package free of model code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipeline.image_processing import PATCH_SIZE, preprocess_images
from data_pipeline.image_validation import ImageProblem, open_image
from data_pipeline.local_files import load_tokenizer
from data_pipeline.prompts import render
from data_pipeline.schema import DataInputError, Sample, SampleError
from data_pipeline.tokenize import TokenizeError, tokenize_rendered
from data_pipeline.video_processing import preprocess_video_refs

SKIP = "_skip"


class NoUsableRecords(DataInputError):
    """Skip mode refused every record: training has nothing to read."""


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    recipe: str
    buckets: tuple[int, ...]  # sequence lengths; a batch pads to the smallest that fits it all
    batch_size: int  # per process
    images_per_sample: int = 1
    min_pixels: int = 3136
    max_pixels: int = 1003520
    recipe_options: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1  # None = repeat forever
    worker_count: int = 0
    on_error: str = "fail"  # fail | skip
    quarantine_path: str | None = None
    shard_index: int = 0
    shard_count: int = 1
    pad_id: int = 151643
    # RL prompts: the generation prompt without any target, and the recipe's reward labels
    # (RenderedPrompt.labels) as `reward_labels`, one dict per sample
    rl: bool = False
    # videos (docs/data.md#videos); with videos_per_sample 0 a batch has no video arrays and a
    # sample with a video is refused
    videos_per_sample: int = 0
    video_fps: float = 2.0  # frames sampled per second; 0: every frame
    min_frames: int = 4
    max_frames: int = 16
    video_min_pixels: int = 3136
    video_max_pixels: int = 100352
    # video patches per sample pad to the smallest of these that fits the batch; () = the budget
    video_patch_buckets: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets must be increasing lengths, got {self.buckets}")
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error={self.on_error!r}; choose fail or skip")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} outside 0..{self.shard_count - 1}")
        vb = self.video_patch_buckets
        if list(vb) != sorted(set(vb)) or (vb and (vb[0] < 1 or vb[-1] > self.max_video_patches)):
            raise ValueError(f"video_patch_buckets must be increasing sizes from 1 to the video "
                             f"patch budget {self.max_video_patches}, got {vb}")

    @property
    def max_patches(self) -> int:
        """Patch budget per sample: every image at most max_pixels."""
        return self.images_per_sample * (self.max_pixels // (PATCH_SIZE * PATCH_SIZE))

    @property
    def max_video_patches(self) -> int:
        """Video patch budget per sample: every video at most max_frames (in whole temporal
        patches of 2) of at most video_max_pixels."""
        return (self.videos_per_sample * math.ceil(self.max_frames / 2)
                * (self.video_max_pixels // (PATCH_SIZE * PATCH_SIZE)))

    def video_patch_bucket(self, longest: int) -> int:
        return next((b for b in self.video_patch_buckets if b >= longest),
                    self.max_video_patches)


def video_options(data) -> dict[str, Any]:
    """LoaderConfig's video fields from a run config's `data` section (data.videos_per_sample,
    video_fps, min_frames, max_frames, video_min_pixels, video_max_pixels)."""
    keys = ("videos_per_sample", "video_fps", "min_frames", "max_frames", "video_min_pixels",
            "video_max_pixels")
    return {k: getattr(data, k) for k in keys}


class ExampleTransform:
    """Sample -> dict of numpy arrays (unpadded length; padding happens per batch)."""

    def __init__(self, config: LoaderConfig, tokenizer_dir: str, image_root: str | None, *,
                 tokenizer_key: str | None = None):
        self.config, self.tokenizer_dir, self.image_root = config, tokenizer_dir, image_root
        self.tokenizer_key = tokenizer_key  # the config key tokenizer_dir came from, if any
        # Loaded here, not lazily: grain maps on reader threads, and transformers' lazy module
        # import is not thread-safe. Local folders only (docs/data.md).
        self.tokenizer = load_tokenizer(tokenizer_dir, key=tokenizer_key)

    def __getstate__(self):  # worker processes load their own copy
        d = dict(self.__dict__)
        del d["tokenizer"]
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self.tokenizer = load_tokenizer(self.tokenizer_dir, key=self.tokenizer_key)

    def __call__(self, sample: Sample) -> dict[str, Any]:
        try:
            return self.example(sample)
        except SampleError as e:
            if self.config.on_error == "fail":
                raise
            self._quarantine(sample, e)
            return {SKIP: e.reason}

    def _quarantine(self, sample: Sample, e: SampleError) -> None:
        path = self.config.quarantine_path
        if not path:
            return
        line = {"source": sample.source, "record": sample.id, "field": e.field,
                "reason": e.reason, "message": str(e)}
        with open(f"{path}.shard{self.config.shard_index}", "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")

    def _load(self, sample: Sample, ref, k: int):
        try:
            if ref.data is not None:
                return open_image(ref.data, what="the embedded image")
            return open_image(os.path.join(self.image_root or "", ref.path),
                              what=f"image {ref.path}")
        except ImageProblem as e:  # unreadable, or a decompression bomb
            raise SampleError("bad_image", f"cannot load image ({e.reason}): {e}",
                              file=ref.path, record=sample.id, field=f"images[{k}]") from e

    def _videos(self, sample: Sample, refs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sample's videos preprocessed, each problem naming its file and `videos[k]`."""
        c = self.config
        if len(refs) > c.videos_per_sample:
            raise SampleError("too_many_videos", f"{len(refs)} videos, the loader allows "
                              f"{c.videos_per_sample} per sample (data.videos_per_sample)",
                              record=sample.id, field="videos")

        def error(k, ref, reason, message):
            return SampleError(reason, message, file=ref.path, record=sample.id,
                               field=f"videos[{k}]")
        return preprocess_video_refs(refs, self.image_root, c, error)

    def example(self, sample: Sample) -> dict[str, Any]:
        """The sample's arrays. Whatever this one record gets wrong (its text, its images, its
        length for this recipe) raises `SampleError` naming record and field; a problem with
        the set-up (tokenizer, code) raises anything else."""
        c = self.config
        try:
            rendered = render(c.recipe, sample, **dict(c.recipe_options))
        except SampleError:
            raise
        except ValueError as e:
            raise SampleError("render", str(e), record=sample.id, field="user_text") from e
        if c.rl:
            rendered = dataclasses.replace(rendered, target=None)
        if len(rendered.images) > c.images_per_sample:
            raise SampleError("too_many_images", f"{len(rendered.images)} images, the loader "
                              f"allows {c.images_per_sample} per sample", record=sample.id,
                              field="images")
        images = [self._load(sample, ref, k) for k, ref in enumerate(rendered.images)]
        try:
            pv, grid = preprocess_images(images, min_pixels=c.min_pixels,
                                         max_pixels=c.max_pixels)
        except (ValueError, OSError) as e:  # extreme aspect ratio, undecodable pixels
            raise SampleError("bad_image", str(e), record=sample.id, field="images") from e
        if len(pv) > c.max_patches:  # smart_resize may round a tiny image up past max_pixels
            raise SampleError("too_many_patches", f"{len(pv)} image patches, more than the "
                              f"budget {c.max_patches}", record=sample.id, field="images")
        pvv, vgrid, seconds = self._videos(sample, rendered.videos)
        if len(pvv) > c.max_video_patches:  # e.g. every frame of a clip with video_fps 0
            raise SampleError("too_many_video_patches", f"{len(pvv)} video patches, more than "
                              f"the budget {c.max_video_patches}", record=sample.id,
                              field="videos")
        try:
            tok = tokenize_rendered(rendered, self.tokenizer, grid, video_grids=vgrid)
        except TokenizeError as e:  # e.g. a literal <|image_pad|> in the text
            raise SampleError("bad_text", str(e), record=sample.id, field=e.field) from e
        n = len(tok.input_ids)
        if n > c.buckets[-1]:
            raise SampleError("too_long", f"{n} tokens, more than the largest bucket "
                              f"{c.buckets[-1]}", record=sample.id, field="input_ids")
        if c.recipe and rendered.target is not None and tok.loss_mask.sum() == 0:
            raise SampleError("empty_target", "no target tokens to learn", record=sample.id,
                              field="target")
        grids = np.zeros((c.images_per_sample, 3), np.int32)
        grids[:len(grid)] = grid
        out = {"input_ids": tok.input_ids, "loss_mask": tok.loss_mask, "pixel_values": pv,
               "image_grid_thw": grids, "num_images": np.int32(len(grid)), "id": sample.id}
        if c.videos_per_sample:
            vgrids = np.zeros((c.videos_per_sample, 3), np.int32)
            vgrids[:len(vgrid)] = vgrid
            secs = np.zeros(c.videos_per_sample, np.float32)
            secs[:len(seconds)] = seconds
            out.update(pixel_values_videos=pvv, video_grid_thw=vgrids,
                       num_videos=np.int32(len(vgrid)), second_per_grid_ts=secs)
        if c.rl:
            out["reward_labels"] = dict(rendered.labels)
        return out


def pad_batch(examples: Sequence[dict[str, Any]], config: LoaderConfig) -> dict[str, np.ndarray]:
    """Stacks examples, right-padding tokens to the smallest bucket that fits the longest, image
    patches to the per-sample budget and video patches to the smallest video patch bucket that
    fits the batch."""
    longest = max(len(e["input_ids"]) for e in examples)
    length = next(b for b in config.buckets if b >= longest)
    b = len(examples)
    ids = np.full((b, length), config.pad_id, np.int32)
    mask = np.zeros((b, length), np.int32)
    loss = np.zeros((b, length), np.int32)
    budget = config.max_patches
    pv = np.zeros((b, budget, examples[0]["pixel_values"].shape[-1]), np.float32)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = e["input_ids"]
        mask[i, :n] = 1
        loss[i, :n] = e["loss_mask"]
        p = e["pixel_values"]
        pv[i, :len(p)] = p
    out = {"input_ids": ids, "attention_mask": mask, "loss_mask": loss, "pixel_values": pv,
           "image_grid_thw": np.stack([e["image_grid_thw"] for e in examples]),
           "num_images": np.asarray([e["num_images"] for e in examples], np.int32),
           "ids": np.asarray([e["id"] for e in examples])}
    if "pixel_values_videos" in examples[0]:
        size = config.video_patch_bucket(max(len(e["pixel_values_videos"]) for e in examples))
        pvv = np.zeros((b, size, pv.shape[-1]), np.float32)
        for i, e in enumerate(examples):
            pvv[i, :len(e["pixel_values_videos"])] = e["pixel_values_videos"]
        out.update(pixel_values_videos=pvv,
                   **{k: np.stack([e[k] for e in examples])
                      for k in ("video_grid_thw", "num_videos", "second_per_grid_ts")})
    if "reward_labels" in examples[0]:
        out["reward_labels"] = [e["reward_labels"] for e in examples]
    return out


class _SkipGuard:
    """The skip filter: drops refused samples, and stops the run with one clear error once a
    whole dataset's worth of samples in a row has been refused (every record bad would
    otherwise make an endless loader that never yields a batch)."""

    def __init__(self, size: int, quarantine_path: str | None):
        self.size, self.quarantine_path, self.run = max(size, 1), quarantine_path, 0

    def __call__(self, example) -> bool:
        if SKIP not in example:
            self.run = 0
            return True
        self.run += 1
        if self.run > self.size:
            where = f"; see {self.quarantine_path}.shard*" if self.quarantine_path else ""
            raise NoUsableRecords(f"the last {self.run} samples in a row were refused, more "
                                  f"than the dataset's {self.size} records: no record is "
                                  f"usable with these settings{where}")
        return False


def make_loader(source, config: LoaderConfig, *, tokenizer_dir: str,
                image_root: str | None = None, tokenizer_key: str | None = None):
    """A grain iterator of padded batches (call .get_state() / .set_state() to checkpoint).

    `tokenizer_dir` must be a local folder; `tokenizer_key` names the config key it came from
    (for the error message when it is not)."""
    import grain

    transform = ExampleTransform(config, tokenizer_dir,
                                 image_root or getattr(source, "image_root", None),
                                 tokenizer_key=tokenizer_key)
    ds = grain.MapDataset.source(source)
    if config.shuffle:
        # Shuffle, then repeat: grain folds the epoch number into the seed, so every epoch is
        # a fresh permutation of the whole dataset (never sampling with replacement).
        ds = ds.shuffle(seed=config.seed)
    if config.num_epochs != 1:
        ds = ds.repeat(config.num_epochs)
    if config.shard_count > 1:
        # Each process takes every shard_count-th element of that one global sequence, so the
        # processes together see each epoch's records exactly once.
        ds = ds[config.shard_index::config.shard_count]
    it = ds.map(transform).to_iter_dataset()
    it = it.filter(_SkipGuard(len(source), config.quarantine_path))
    it = it.batch(config.batch_size, drop_remainder=True,
                  batch_fn=lambda exs: pad_batch(exs, config))
    if config.worker_count > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # google/grain#1355: workers read absl flags
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
    return iter(it)


def quarantine_summary(path: str) -> dict[str, int]:
    """Skipped samples by reason, over every shard's quarantine file."""
    counts: dict[str, int] = {}
    folder, base = os.path.split(path)
    for name in sorted(os.listdir(folder or ".")):
        if name.startswith(os.path.basename(base) + ".shard"):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for line in f:
                    reason = json.loads(line)["reason"]
                    counts[reason] = counts.get(reason, 0) + 1
    return counts
