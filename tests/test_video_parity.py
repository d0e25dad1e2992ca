"""Video through guard_jax's Qwen2.5-VL against transformers (torch, float32, CPU, perturbed
weights): logits, M-RoPE positions, greedy generation and one gradient check.

The video patches are built from random frames the way Qwen2-VL's video processor lays them out
(`hf_reference.patchify_frames`: an odd frame count is padded with the last frame). Both models
get the same `pixel_values_videos`, `video_grid_thw` and `second_per_grid_ts`; transformers also
gets `mm_token_type_ids` so it computes 3-axis positions. Comparisons cover non-padding positions
only; the measured max |Δlogits| per case is printed when the module ends (pytest -s).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

import guard_jax
import hf_reference as H
from guard_jax.models.qwen2_5_vl import positions
from guard_jax.models.qwen2_5_vl.config import tiny

TOL = 1e-4
DIFFS: dict[str, float] = {}
SIDE = 28 * 2  # frame side in pixels: 4 x 4 patches, 2 x 2 merged tokens


@pytest.fixture(scope="module", autouse=True)
def _report_diffs():
    yield
    if DIFFS:
        width = max(len(k) for k in DIFFS)
        print("\nmax |Δlogits| (or relative |Δgrad|) per video parity case (fp32 CPU):")
        for k, v in DIFFS.items():
            print(f"  {k:<{width}}  {v:.3e}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    c = tiny()
    return (c,) + H.reference_pair(c, tmp_path_factory.mktemp("video"), seed=7)


def video(c, frames, height=SIDE, width=SIDE, seed=0):
    """(pixel_values_videos, grid) of `frames` random frames of height x width."""
    rng = np.random.default_rng(seed)
    return H.patchify_frames(rng.standard_normal((frames, 3, height, width)), c)


class Inputs:
    """Images and videos of a batch, in the order their tokens appear across the samples."""

    def __init__(self, c):
        self.c = c
        self.pv, self.grids, self.pvv, self.vgrids, self.secs = [], [], [], [], []

    def image(self, grid, seed):
        pv, _ = H.random_image_inputs(self.c, [grid], seed=seed)
        self.pv.append(pv)
        self.grids.append(grid)
        return H.image_tokens(self.c, grid)

    def video(self, frames, seconds, seed, height=SIDE, width=SIDE):
        pv, grid = video(self.c, frames, height, width, seed)
        self.pvv.append(pv)
        self.vgrids.append(grid)
        self.secs.append(seconds)
        return H.video_tokens(self.c, grid)

    def kwargs(self) -> dict:
        """guard_jax's (= transformers') argument names."""
        kw = {}
        if self.pv:
            kw.update(pixel_values=np.concatenate(self.pv), image_grid_thw=np.asarray(self.grids))
        if self.pvv:
            kw.update(pixel_values_videos=np.concatenate(self.pvv),
                      video_grid_thw=np.asarray(self.vgrids),
                      second_per_grid_ts=np.asarray(self.secs, np.float32))
        return kw

    def hf(self) -> dict:
        """hf_reference.hf_mm_kwargs' names."""
        kw = self.kwargs()
        return dict(pv=kw.get("pixel_values"), grid=kw.get("image_grid_thw"),
                    pv_videos=kw.get("pixel_values_videos"), video_grid=kw.get("video_grid_thw"),
                    second_per_grid_ts=kw.get("second_per_grid_ts"))


def compare(name, pair, ids, inputs, mask=None):
    c, hf, ours = pair
    ref = H.hf_video_logits(hf, c, ids, mask, **inputs.hf())
    out = np.asarray(ours(ids, attention_mask=mask, **inputs.kwargs()))
    H.assert_logits_close(name, out, ref, ids, mask, DIFFS, TOL)


def _hf_rope(hf, c, ids, mask, inputs):
    kw = H.hf_mm_kwargs(c, ids, **inputs.hf())
    grids = {k: kw.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}
    if mask is not None:
        grids["attention_mask"] = torch.as_tensor(mask, dtype=torch.long)
    pos, deltas = hf.model.get_rope_index(torch.as_tensor(ids, dtype=torch.long),
                                          kw["mm_token_type_ids"], **grids)
    return pos.numpy(), deltas.numpy()


def _ours_rope(c, ids, mask, inputs):
    kw = inputs.kwargs()
    return positions.get_rope_index(ids, kw.get("image_grid_thw"), mask, c,
                                    video_grid_thw=kw.get("video_grid_thw"),
                                    second_per_grid_ts=kw.get("second_per_grid_ts"))


# ---------------------------------------------------------------------------- logits parity
def test_one_video(pair):
    """6 frames, 0.75 s per temporal patch: time steps 0, 1.5, 3 truncate to 0, 1, 3."""
    c = pair[0]
    x = Inputs(c)
    ids = np.asarray([[3, 4] + x.video(6, 0.75, seed=1) + [5, 6, 7]])
    assert x.vgrids == [[3, 4, 4]]
    pos, _ = _ours_rope(c, ids, None, x)
    vid = ids[0] == c.video_token_id
    assert sorted(set(pos[0, 0, vid] - pos[0, 0, vid].min())) == [0, 1, 3]
    compare("one video, 6 frames [3,4,4]", pair, ids, x)


def test_video_and_image_interleaved(pair):
    """Two videos and two images in one sample, interleaved (video, image, video, image), with
    different sizes and time steps: each token gets its own item's features."""
    c = pair[0]
    x = Inputs(c)
    ids = [3] + x.video(4, 1.0, seed=2) + [4, 5] + x.image([1, 4, 4], seed=3) + [6] + \
        x.video(2, 0.5, seed=4, height=84, width=56) + x.image([1, 6, 10], seed=5) + [7, 8]
    compare("video + image + video + image in one sample", pair, np.asarray([ids]), x)


def test_left_padded_videos_of_different_lengths(pair):
    c = pair[0]
    x = Inputs(c)
    s0 = [3, 4] + x.video(8, 2.0, seed=6) + [5]
    s1 = [6] + x.image([1, 4, 4], seed=7) + [7] + x.video(2, 1.0, seed=8, width=84) + [8, 9]
    ids, mask = H.left_pad([s0, s1], c.generation_pad_id)
    assert (mask == 0).sum() > 0
    compare("left-padded batch: 8-frame video / image + 2-frame video", pair, ids, x, mask)


def test_odd_frame_count_is_padded_with_the_last_frame(pair):
    c = pair[0]
    x = Inputs(c)
    ids = np.asarray([[3] + x.video(5, 1.0, seed=9) + [4, 5]])
    assert x.vgrids == [[3, 4, 4]]
    # the last temporal patch holds frame 4 twice, as the processor pads it
    last = x.pvv[0][-16:].reshape(16, 3, 2, 14 * 14)
    np.testing.assert_array_equal(last[:, :, 0], last[:, :, 1])
    compare("odd frame count (5 frames -> t=3)", pair, ids, x)


def test_video_features_and_time_steps_matter(pair):
    """The tolerance sees both the video pixels and the temporal positions."""
    c, hf, ours = pair
    x = Inputs(c)
    ids = np.asarray([[3] + x.video(6, 1.0, seed=10) + [4, 5]])
    ref = H.hf_video_logits(hf, c, ids, **x.hf())
    kw = x.kwargs()
    other_time = np.asarray(ours(ids, **{**kw, "second_per_grid_ts": np.asarray([3.0])}))
    assert np.abs(other_time - ref).max() > 10 * TOL
    other_pixels = np.asarray(ours(ids, **{**kw, "pixel_values_videos":
                                           kw["pixel_values_videos"][::-1].copy()}))
    assert np.abs(other_pixels - ref).max() > 10 * TOL


# ---------------------------------------------------------------------------- M-RoPE positions
def test_rope_index_equals_transformers_for_mixed_batch(pair):
    """Several images and videos per sample, fractional seconds (float32 products truncated),
    a text-only sample, left padding; no second_per_grid_ts means 1 s per temporal patch."""
    c, hf, _ = pair
    x = Inputs(c)
    s0 = [3] + x.video(6, 1 / 3, seed=0) + [4] + x.image([1, 4, 4], seed=0) + \
        x.video(10, 0.7, seed=0, height=84) + [5]
    s1 = [6, 7, 8, 9]
    s2 = x.image([1, 6, 10], seed=0) + [10] + x.video(4, 12.5, seed=0) + [11, 12]
    ids, mask = H.left_pad([s0, s1, s2], c.generation_pad_id)
    pos, deltas = _ours_rope(c, ids, mask, x)
    ref_pos, ref_deltas = _hf_rope(hf, c, ids, mask, x)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(deltas, ref_deltas)
    assert deltas[2, 0] > 0  # 12.5 s x 2 tokens/s: the video's time axis outruns the tokens
    x.secs = None
    kw = x.kwargs()
    kw.pop("second_per_grid_ts")
    pos1, _ = positions.get_rope_index(ids, kw["image_grid_thw"], mask, c,
                                       video_grid_thw=kw["video_grid_thw"])
    t = hf.model.get_rope_index(
        torch.as_tensor(ids), H.mm_token_type_ids(ids, c),
        image_grid_thw=torch.as_tensor(kw["image_grid_thw"]),
        video_grid_thw=torch.as_tensor(kw["video_grid_thw"]),
        attention_mask=torch.as_tensor(mask))[0].numpy()
    np.testing.assert_array_equal(pos1, t)


def test_bad_video_inputs_are_named(pair):
    c, _, ours = pair
    x = Inputs(c)
    ids = np.asarray([[3] + x.video(4, 1.0, seed=0) + [4]])
    kw = x.kwargs()
    with pytest.raises(ValueError, match="hold 8 video tokens but no pixel_values_videos"):
        ours(ids)
    with pytest.raises(ValueError, match="Video features and video tokens do not match"):
        ours(ids[:, :-3], **kw)
    with pytest.raises(ValueError, match="pixel_values_videos has shape"):
        ours(ids, **{**kw, "pixel_values_videos": kw["pixel_values_videos"][:-4]})
    with pytest.raises(ValueError, match="second_per_grid_ts has 2 entries"):
        ours(ids, **{**kw, "second_per_grid_ts": np.asarray([1.0, 2.0])})
    with pytest.raises(ValueError, match="pixel_values_videos given without video_grid_thw"):
        ours(ids, pixel_values_videos=kw["pixel_values_videos"])


# ---------------------------------------------------------------------------- generation
def test_greedy_generate_with_video_equals_transformers(pair):
    c, hf, ours = pair
    n = 8
    x = Inputs(c)
    s0 = [3, 4] + x.video(6, 5.0, seed=11) + [5]
    s1 = [6] + x.image([1, 4, 4], seed=12) + x.video(2, 0.5, seed=13) + [7, 8]
    ids, mask = H.left_pad([s0, s1], c.generation_pad_id)
    eos = list(c.generation_eos_ids)
    t = torch.as_tensor(ids)
    hf.model.rope_deltas = None
    with torch.no_grad():
        out = hf.generate(input_ids=t, attention_mask=torch.as_tensor(mask), max_new_tokens=n,
                          do_sample=False, pad_token_id=c.generation_pad_id, eos_token_id=eos,
                          **H.hf_mm_kwargs(c, ids, **x.hf()))
    want = out[:, t.shape[1]:].numpy()
    want = np.pad(want, ((0, 0), (0, n - want.shape[1])), constant_values=c.generation_pad_id)
    # the decode positions continue after the video's time axis (rope_deltas > 0 for s0)
    assert hf.model.rope_deltas[0, 0] > 0
    got = guard_jax.generate(ours, ids, attention_mask=mask, max_new_tokens=n,
                             eos_token_ids=eos, **x.kwargs())
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------- gradients
def test_gradients_with_video_match_transformers(pair, tmp_path):
    """Loss and every parameter's gradient on a sample with a video and an image."""
    from guard_jax.models.qwen2_5_vl.hf_keys import normalize_key
    from guard_jax.training.train_step import next_token_loss
    import jax

    c, hf, ours = pair
    x = Inputs(c)
    ids = np.asarray([[3] + x.image([1, 4, 4], seed=14) + [4] + x.video(4, 1.0, seed=15) +
                      [5, 6]])
    t = torch.as_tensor(ids)
    hf.zero_grad(set_to_none=True)
    hf.model.rope_deltas = None
    loss_ref = hf(input_ids=t, labels=t, **H.hf_mm_kwargs(c, ids, **x.hf())).loss
    loss_ref.backward()
    ref = {normalize_key(k): p.grad.detach().float().numpy()
           for k, p in hf.named_parameters() if p.grad is not None}
    hf.zero_grad(set_to_none=True)

    batch = ours.prepare_inputs(ids, attention_mask=np.ones_like(ids), **x.kwargs())
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: next_token_loss(nnx.merge(graphdef, p, rest), batch)[0]))(params)
    guard_jax.save_hf(nnx.merge(graphdef, grads, rest), tmp_path / "g", progress=False)
    got = {normalize_key(k): v.float().numpy()
           for k, v in H.safetensors_tensors(tmp_path / "g").items()}
    assert abs(float(loss) - float(loss_ref.detach())) <= 1e-5
    assert set(got) == set(ref)
    worst = {k: float(np.abs(got[k] - r).max()) / float(np.abs(r).max()) for k, r in ref.items()}
    k = max(worst, key=worst.get)
    DIFFS[f"grads, image + video (worst: {k})"] = worst[k]
    assert worst[k] <= 1e-4, (k, worst[k])


# ---------------------------------------------------------------------------- export
def test_export_video_processor_samples_and_resizes_as_the_run(tmp_path):
    """`guard-jax export` writes video_preprocessor_config.json with the run's data.video_fps,
    min_frames, max_frames, video_min_pixels and video_max_pixels under the names the video
    processor reads (and data_pipeline.preprocess_videos takes)."""
    import json

    from tiny_qwen_dir import write_tiny_qwen_hf_dir
    from guard_jax.training.hf_convert import export_checkpoint, import_hf
    hf = write_tiny_qwen_hf_dir(tmp_path)
    src = tmp_path / "src"  # the model and tokenizer without the video processor file
    src.mkdir()
    for p in hf.iterdir():
        if p.name not in ("video_preprocessor_config.json", "processor_config.json"):
            (src / p.name).symlink_to(p)
    work = import_hf(src, tmp_path / "work", config_path="configs/tiny_sft.py",
                     overrides=["--config.data.video_fps=1.5", "--config.data.min_frames=2",
                                "--config.data.max_frames=24",
                                "--config.data.video_min_pixels=6272",
                                "--config.data.video_max_pixels=50176"])
    out = export_checkpoint(work, tmp_path / "out", progress=False)
    video = json.loads((out / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert (video["fps"], video["min_frames"], video["max_frames"]) == (1.5, 2, 24)
    assert video["do_sample_frames"] is True
    assert (video["min_pixels"], video["max_pixels"]) == (6272, 50176)
    assert video["size"] == {"shortest_edge": 6272, "longest_edge": 50176}
    assert (video["temporal_patch_size"], video["patch_size"], video["merge_size"]) == (2, 14, 2)
