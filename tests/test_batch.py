"""Loader batches -> model batches: the model's loss equals the reference path's."""

import numpy as np

from data_pipeline.image_processing import preprocess_images
from guard_jax.models.qwen2_5_vl import init_model, tiny
from guard_jax.training.batch import to_model_batch
from guard_jax.training.train_step import next_token_loss


def test_loader_batch_gives_the_same_logits_as_the_plain_call():
    from PIL import Image
    c = tiny()
    model = init_model(c, seed=2)
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (56, 84, 3), np.uint8)),
            Image.fromarray(rng.integers(0, 255, (60, 100, 3), np.uint8))]
    pv0, g0 = preprocess_images([imgs[0]], max_pixels=112 * 112)
    pv1, g1 = preprocess_images([imgs[1]], max_pixels=112 * 112)
    row = lambda g, extra: ([3, 4, c.vision_start_token_id] + [c.image_token_id] *
                            (int(np.prod(g)) // 4) + [c.vision_end_token_id] + extra)
    r0, r1, r2 = row(g0[0], [5, 6, 7]), row(g1[0], [8]), [9, 10, 11, 12]
    length, budget = 40, 64
    ids = np.full((3, length), 0, np.int32)
    mask = np.zeros((3, length), np.int32)
    for i, r in enumerate((r0, r1, r2)):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    pv = np.zeros((3, budget, 1176), np.float32)
    pv[0, :len(pv0)] = pv0
    pv[1, :len(pv1)] = pv1
    grids = np.zeros((3, 1, 3), np.int32)
    grids[0, 0], grids[1, 0] = g0[0], g1[0]
    loader_batch = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask.copy(),
                    "pixel_values": pv, "image_grid_thw": grids,
                    "num_images": np.asarray([1, 1, 0], np.int32)}
    batch = to_model_batch(loader_batch, c)
    assert batch["win_idx"].shape[1] % 16 == 0 and batch["full_idx"].shape[2] == budget
    fwd = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values",
                                 "pos_hw", "win_idx", "full_idx")}
    got = np.asarray(model.forward(**fwd))
    ref = np.asarray(model(ids, attention_mask=mask, pixel_values=np.concatenate([pv0, pv1]),
                           image_grid_thw=np.concatenate([g0, g1])))
    valid = mask.astype(bool)
    assert np.abs(got - ref)[valid].max() < 1e-5
    loss, metrics = next_token_loss(model, batch)
    assert np.isfinite(float(loss)) and float(metrics["tokens"]) == mask[:, 1:].sum()


def test_video_batch_gives_the_same_logits_as_the_plain_call():
    """A sample with an image and a video, a video-only sample, a text-only one: the loader's
    arrays through to_model_batch give the logits of the plain call with transformers' names."""
    from PIL import Image

    from data_pipeline.video_processing import Video, preprocess_videos
    c = tiny()
    model = init_model(c, seed=2)
    rng = np.random.default_rng(1)
    pv_img, g_img = preprocess_images([Image.fromarray(rng.integers(0, 255, (56, 56, 3),
                                                                    np.uint8))],
                                      max_pixels=56 * 56)
    clips = [Video(rng.integers(0, 255, (n, 56, 84, 3), np.uint8), fps=4.0) for n in (3, 4)]
    pvv, gv, sec = preprocess_videos(clips, fps=2.0, min_frames=2, min_pixels=784,
                                     max_pixels=56 * 84)
    n_v = [int(np.prod(g)) for g in gv]

    def span(token, g):
        return [c.vision_start_token_id] + [token] * (int(np.prod(g)) // 4) + [
            c.vision_end_token_id]
    rows = [[3] + span(c.video_token_id, gv[0]) + span(c.image_token_id, g_img[0]) + [5, 6],
            [4] + span(c.video_token_id, gv[1]) + [7], [8, 9, 10]]
    length = 48
    ids = np.zeros((3, length), np.int32)
    mask = np.zeros((3, length), np.int32)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    pv = np.zeros((3, 16, 1176), np.float32)
    pv[0, :len(pv_img)] = pv_img
    pvv_b = np.zeros((3, 32, 1176), np.float32)
    pvv_b[0, :n_v[0]], pvv_b[1, :n_v[1]] = pvv[:n_v[0]], pvv[n_v[0]:]
    loader_batch = {
        "input_ids": ids, "attention_mask": mask, "loss_mask": mask.copy(), "pixel_values": pv,
        "image_grid_thw": np.asarray([[g_img[0]], [[0, 0, 0]], [[0, 0, 0]]], np.int32),
        "num_images": np.asarray([1, 0, 0], np.int32), "pixel_values_videos": pvv_b,
        "video_grid_thw": np.asarray([[gv[0]], [gv[1]], [[0, 0, 0]]], np.int32),
        "num_videos": np.asarray([1, 1, 0], np.int32),
        "second_per_grid_ts": np.asarray([[sec[0]], [sec[1]], [0]], np.float32)}
    batch = to_model_batch(loader_batch, c)
    assert batch["pixel_values"].shape[:2] == (3, 16 + 32)
    fwd = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values",
                                 "pos_hw", "win_idx", "full_idx")}
    got = np.asarray(model.forward(**fwd))
    ref = np.asarray(model(ids, attention_mask=mask, pixel_values=pv_img, image_grid_thw=g_img,
                           pixel_values_videos=pvv, video_grid_thw=gv, second_per_grid_ts=sec))
    valid = mask.astype(bool)
    assert np.abs(got - ref)[valid].max() < 1e-5
