"""Logits parity of guard_jax's Qwen2.5-VL against transformers (torch, float32, CPU).

Our model always computes its own M-RoPE positions (no position_ids are passed to it); the torch
reference gets `mm_token_type_ids` through `hf_reference.hf_logits`, so transformers computes the
3-axis positions too (without them it silently falls back to 1-D positions, reference §1.2).
Every comparison is restricted to non-padding positions. The measured max |Δlogits| of each case
is kept in DIFFS and printed when the module finishes (run with `-s` to see it).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from flax import nnx
from transformers.vision_utils import (
    get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index)

import guard_jax
import hf_reference as H
from guard_jax.models.qwen2_5_vl import positions
from guard_jax.models.qwen2_5_vl.config import tiny

TOL = 1e-4
DIFFS: dict[str, float] = {}

WORKED_GRIDS = [[1, 4, 4], [1, 6, 10]]  # reference §6.2: 56x56 and 84x140 pixels


@pytest.fixture(scope="module", autouse=True)
def _report_diffs():
    yield
    if DIFFS:
        width = max(len(k) for k in DIFFS)
        print("\nmax |Δlogits| (or relative |Δgrad|) per parity case (guard_jax vs transformers, "
              "fp32 CPU):")
        for k, v in DIFFS.items():
            print(f"  {k:<{width}}  {v:.3e}")


def big_config():
    """head_dim 128 (hidden 256, 2 heads, 1 kv head) with the real mrope_section, window 112,
    four vision blocks of which two use full attention, and tied embeddings."""
    c = tiny()
    return c.replace(
        text=dataclasses.replace(c.text, hidden_size=256, intermediate_size=256,
                                 num_attention_heads=2, num_key_value_heads=1,
                                 mrope_section=(16, 24, 24)),
        vision=dataclasses.replace(c.vision, depth=4, window_size=112,
                                   fullatt_block_indexes=(1, 3), out_hidden_size=256),
        tie_word_embeddings=True)


def _load_pair(c, tmp_path_factory, name, seed=0, **save_kw):
    hf = H.build_hf_model(c, seed=seed)
    d = tmp_path_factory.mktemp(name)
    H.save_hf_reference(hf, d, **save_kw)
    ours = guard_jax.load_hf(d, dtype="float32", progress=False)
    return hf, ours


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    c = tiny()
    assert not c.tie_word_embeddings  # the untied case
    hf, ours = _load_pair(c, tmp_path_factory, "tiny_legacy")
    return c, hf, ours


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory):
    c = big_config()
    assert c.text.head_dim == 128 and c.vision.window_merged == 4
    hf, ours = _load_pair(c, tmp_path_factory, "big_legacy", seed=3)
    assert hf.config.tie_word_embeddings
    assert hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
    return c, hf, ours


def worked_example(c):
    ids = [5, 6, 7] + H.image_tokens(c, WORKED_GRIDS[0]) + [8, 9] + \
        H.image_tokens(c, WORKED_GRIDS[1]) + [10, 11, 12]
    assert len(ids) == 31
    pv, grid = H.random_image_inputs(c, WORKED_GRIDS, seed=1)
    return np.asarray([ids]), pv, grid


def compare(name, ours, hf, ids, mask=None, pv=None, grid=None):
    ref = H.hf_logits(hf, ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid)
    out = np.asarray(ours(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    H.assert_logits_close(name, out, ref, ids, mask, DIFFS, TOL)
    return out, ref


# ---------------------------------------------------------------------------- logits parity
def test_text_only(tiny_pair):
    c, hf, ours = tiny_pair
    ids = np.random.default_rng(0).integers(2, 248, size=(1, 12))
    compare("tiny text only", ours, hf, ids)


def test_text_only_left_padded(tiny_pair):
    c, hf, ours = tiny_pair
    rng = np.random.default_rng(1)
    ids, mask = H.left_pad([rng.integers(2, 248, 12).tolist(), rng.integers(2, 248, 7).tolist()],
                           c.generation_pad_id)
    compare("tiny text only, left-padded batch", ours, hf, ids, mask)


def test_one_image(tiny_pair):
    c, hf, ours = tiny_pair
    grids = [[1, 8, 6]]  # merged 4x3: the window (2x2 merged) does not divide the width
    pv, grid = H.random_image_inputs(c, grids, seed=2)
    ids = np.asarray([[3, 4] + H.image_tokens(c, grids[0]) + [5, 6, 7]])
    compare("tiny one image [1,8,6]", ours, hf, ids, pv=pv, grid=grid)


def test_two_images_worked_example(tiny_pair):
    c, hf, ours = tiny_pair
    ids, pv, grid = worked_example(c)
    compare("tiny two images [1,4,4]+[1,6,10]", ours, hf, ids, pv=pv, grid=grid)


def test_left_padded_batch_different_images(tiny_pair):
    c, hf, ours = tiny_pair
    grids = [[1, 6, 10], [1, 4, 4]]  # sample 0's image first, then sample 1's
    pv, grid = H.random_image_inputs(c, grids, seed=3)
    s0 = [3, 4] + H.image_tokens(c, grids[0]) + [5, 6, 7]
    s1 = [8] + H.image_tokens(c, grids[1]) + [9, 10]
    ids, mask = H.left_pad([s0, s1], c.generation_pad_id)
    assert (mask == 0).sum() == len(s0) - len(s1) > 0
    compare("tiny left-padded batch of 2, images [1,6,10] / [1,4,4]", ours, hf, ids, mask, pv, grid)


def test_positions_matter(tiny_pair):
    """The parity tolerance is tight enough to see M-RoPE: 1-D positions on our side miss."""
    c, hf, ours = tiny_pair
    ids, pv, grid = worked_example(c)
    ref = H.hf_logits(hf, ids, pixel_values=pv, image_grid_thw=grid)
    flat = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid,
                           position_ids=np.arange(ids.shape[1])[None]))
    assert np.abs(flat - ref).max() > 10 * TOL


def test_head_dim_128_tied_window_112(big_pair):
    """Grid [1,16,16] is 8x8 merged tokens: exactly four 4x4 windows (the empty padding windows
    are dropped); grid [1,10,14] is 5x7 merged: partial windows on both sides."""
    c, hf, ours = big_pair
    grids = [[1, 16, 16], [1, 10, 14]]
    pv, grid = H.random_image_inputs(c, grids, seed=4)
    ids = np.asarray([[3, 4, 5] + H.image_tokens(c, grids[0]) + [6, 7] +
                      H.image_tokens(c, grids[1]) + [8, 9]])
    compare("head_dim 128, tied, window 112: [1,16,16]+[1,10,14]", ours, hf, ids, pv=pv, grid=grid)


def test_head_dim_128_left_padded_batch(big_pair):
    c, hf, ours = big_pair
    grids = [[1, 10, 14], [1, 16, 16]]
    pv, grid = H.random_image_inputs(c, grids, seed=5)
    s0 = [3] + H.image_tokens(c, grids[0]) + [4, 5]
    s1 = [6, 7, 8] + H.image_tokens(c, grids[1]) + [9]
    ids, mask = H.left_pad([s0, s1], c.generation_pad_id)
    assert mask[0, 0] == 0 and mask[1].all()
    compare("head_dim 128, tied, left-padded batch of 2", ours, hf, ids, mask, pv, grid)


# ---------------------------------------------------------------------------- layouts and forms
def _flat_params(model):
    return {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("original_format", [True, False], ids=["legacy_keys", "in_memory_keys"])
@pytest.mark.parametrize("flat", [False, True], ids=["nested_config", "flat_config"])
def test_key_layouts_and_config_forms(tiny_pair, tmp_path, original_format, flat):
    c, hf, ours_ref = tiny_pair
    H.save_hf_reference(hf, tmp_path, original_format=original_format, flat=flat)
    keys = set(H.safetensors_tensors(tmp_path))
    if original_format:
        assert "model.embed_tokens.weight" in keys and "visual.merger.ln_q.weight" in keys
        assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    else:
        assert "model.language_model.embed_tokens.weight" in keys
        assert "model.visual.merger.ln_q.weight" in keys
        assert not any(k.startswith(("model.layers.", "visual.")) for k in keys)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert ("text_config" in cfg) != flat
    assert ("rope_scaling" in cfg) == flat

    ours = guard_jax.load_hf(tmp_path, dtype="float32", progress=False)
    assert ours.config == ours_ref.config
    a, b = _flat_params(ours), _flat_params(ours_ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ids, pv, grid = worked_example(c)
    name = ("legacy" if original_format else "in-memory") + " keys, " + \
        ("flat" if flat else "nested") + " config"
    compare(f"tiny two images ({name})", ours, hf, ids, pv=pv, grid=grid)


def test_big_in_memory_layout_flat_config(big_pair, tmp_path):
    """The tied head_dim-128 model through the other layout and config form: same parameters."""
    c, hf, ours_ref = big_pair
    H.save_hf_reference(hf, tmp_path, original_format=False, flat=True)
    keys = set(H.safetensors_tensors(tmp_path))
    assert "lm_head.weight" not in keys
    ours = guard_jax.load_hf(tmp_path, dtype="float32", progress=False)
    assert ours.config == ours_ref.config and ours.config.tie_word_embeddings
    a, b = _flat_params(ours), _flat_params(ours_ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------------- M-RoPE positions
def _hf_rope_index(hf, c, ids, grid, mask=None):
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    mm = (ids_t == c.image_token_id).long()
    kw = {} if mask is None else {"attention_mask": torch.as_tensor(mask, dtype=torch.long)}
    pos, deltas = hf.model.get_rope_index(
        ids_t, mm, image_grid_thw=torch.as_tensor(np.asarray(grid), dtype=torch.long), **kw)
    return pos.numpy(), deltas.numpy()


def test_rope_index_worked_example(tiny_pair):
    c, hf, _ = tiny_pair
    ids, _, grid = worked_example(c)
    pos, deltas = positions.get_rope_index(ids, grid, None, c)
    expected_t = [0, 1, 2, 3] + [4] * 4 + [6, 7, 8, 9] + [10] * 15 + [15, 16, 17, 18]
    expected_h = [0, 1, 2, 3] + [4, 4, 5, 5] + [6, 7, 8, 9] + [10] * 5 + [11] * 5 + [12] * 5 + \
        [15, 16, 17, 18]
    expected_w = [0, 1, 2, 3] + [4, 5, 4, 5] + [6, 7, 8, 9] + [10, 11, 12, 13, 14] * 3 + \
        [15, 16, 17, 18]
    assert pos.shape == (3, 1, 31) and deltas.shape == (1, 1)
    np.testing.assert_array_equal(pos[:, 0], [expected_t, expected_h, expected_w])
    assert deltas[0, 0] == -12
    ref_pos, ref_deltas = _hf_rope_index(hf, c, ids, grid)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(deltas, ref_deltas)


def test_rope_index_left_padded_batch(tiny_pair):
    c, hf, _ = tiny_pair
    g_extra = [1, 8, 6]
    s0 = worked_example(c)[0][0].tolist()
    s1 = [3, 4] + H.image_tokens(c, g_extra) + [5]
    s2 = [7, 8, 9, 10, 11]  # text only
    ids, mask = H.left_pad([s0, s1, s2], c.generation_pad_id)
    grid = np.asarray(WORKED_GRIDS + [g_extra])
    pos, deltas = positions.get_rope_index(ids, grid, mask, c)
    ref_pos, ref_deltas = _hf_rope_index(hf, c, ids, grid, mask)
    assert pos.shape == ref_pos.shape == (3, 3, 31)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(deltas, ref_deltas)
    assert (pos[:, mask == 0] == 0).all()
    # sample 1 starts counting at its first real token, not at the padded index
    first = int(np.argmax(mask[1]))
    assert first > 0 and (pos[:, 1, first] == 0).all()
    assert deltas[2, 0] == 0 and deltas[1, 0] < 0


def test_rope_index_errors(tiny_pair):
    c, _, _ = tiny_pair
    ids = np.asarray([[3] + H.image_tokens(c, [1, 4, 4]) + [4]])
    with pytest.raises(ValueError, match="image_grid_thw lists 2 images"):
        positions.get_rope_index(ids, [[1, 4, 4], [1, 4, 4]], None, c)
    with pytest.raises(ValueError, match="needs 6 image tokens"):
        positions.get_rope_index(ids, [[1, 4, 6]], None, c)


# ---------------------------------------------------------------------------- vision windows
def _win_cfg(window_size):
    c = tiny()
    return c.replace(vision=dataclasses.replace(c.vision, window_size=window_size))


def _cu_from_segments(seg):
    change = np.nonzero(np.diff(seg))[0] + 1
    return np.concatenate([[0], change, [len(seg)]])


@pytest.mark.parametrize("grids,window,exp_index,exp_cu_win,exp_cu", [
    ([[1, 4, 4], [1, 6, 10]], 56,
     [0, 1, 2, 3, 4, 5, 9, 10, 6, 7, 11, 12, 8, 13, 14, 15, 16, 17, 18],
     [0, 16, 32, 48, 56, 64, 72, 76], [0, 16, 76]),
    ([[1, 16, 22]], 112, None, [0, 64, 128, 176, 240, 304, 352], [0, 352]),
    ([[1, 8, 8]], 112, list(range(16)), [0, 64], [0, 64]),
    ([[2, 4, 4]], 112, list(range(8)), [0, 16, 32], [0, 16, 32]),
], ids=["worked_example_w56", "16x22_w112", "8x8_exact_fit_w112", "t2_w112"])
def test_window_index_reference_vectors(grids, window, exp_index, exp_cu_win, exp_cu):
    c = _win_cfg(window)
    idx, cu_win = positions.window_index(grids, c)
    if exp_index is not None:
        np.testing.assert_array_equal(idx, exp_index)
    np.testing.assert_array_equal(cu_win, exp_cu_win)
    # transformers' own functions on the same grids
    g = torch.as_tensor(grids)
    ref_idx, ref_cu_win = get_vision_window_index(g, c.vision.spatial_merge_size, window,
                                                  c.vision.patch_size)
    np.testing.assert_array_equal(idx, ref_idx.numpy())
    np.testing.assert_array_equal(cu_win, ref_cu_win.numpy())
    np.testing.assert_array_equal(get_vision_cu_seqlens(g).numpy(), exp_cu)
    # the segment ids the model actually uses: full-attention segments are per frame...
    seg = positions.vision_segments(grids, c)
    np.testing.assert_array_equal(_cu_from_segments(seg["seg_full"]), exp_cu)
    # ...and window segments partition the patches exactly as transformers' windows do
    u = c.vision.merge_unit
    token_window = np.empty(len(idx), np.int64)
    token_window[idx] = np.searchsorted(cu_win, np.arange(len(idx)) * u, side="right") - 1
    patch_window = token_window[np.arange(len(seg["seg_win"])) // u]
    pairs = set(zip(seg["seg_win"].tolist(), patch_window.tolist()))
    assert len(pairs) == len(set(seg["seg_win"].tolist())) == len(cu_win) - 1
    # 2-D RoPE positions: transformers' (h, w) per patch in processor order
    np.testing.assert_array_equal(
        seg["pos_hw"], get_vision_position_ids(g, c.vision.spatial_merge_size).numpy())


def test_vision_segments_padding():
    c = _win_cfg(56)
    seg = positions.vision_segments([[1, 4, 4]], c, num_patches=20)
    assert (seg["seg_full"][16:] == positions.PAD_SEGMENT).all()
    assert (seg["seg_win"][16:] == positions.PAD_SEGMENT).all()
    assert (seg["seg_full"][:16] >= 0).all()
    with pytest.raises(ValueError, match="num_patches"):
        positions.vision_segments([[1, 4, 4]], c, num_patches=8)


# ---------------------------------------------------------------------------- input validation
def test_image_token_count_mismatch_raises(tiny_pair):
    c, _, ours = tiny_pair
    pv, grid = H.random_image_inputs(c, [[1, 4, 4]])  # 4 features
    for n in (3, 5):
        ids = np.asarray([[3, c.vision_start_token_id] + [c.image_token_id] * n +
                          [c.vision_end_token_id]])
        with pytest.raises(ValueError, match=f"hold {n} image tokens.*gives 4 features"):
            ours(ids, pixel_values=pv, image_grid_thw=grid)
    with pytest.raises(ValueError, match="image tokens but no pixel_values"):
        ours(np.asarray([[3, c.image_token_id]]))
    with pytest.raises(ValueError, match="pixel_values has shape"):
        ours(np.asarray([[3] + [c.image_token_id] * 4]), pixel_values=pv[:-1], image_grid_thw=grid)



@pytest.mark.parametrize("full", [(0,), (0, 1), (), (1, 2)], ids=str)
def test_irregular_full_attention_layouts(tmp_path_factory, full):
    # the vision blocks run as one scan per run of same-kind blocks when full attention is not
    # periodic (and as nested scans when it is): every layout must match transformers
    c = tiny()
    c = c.replace(vision=dataclasses.replace(c.vision, depth=3, fullatt_block_indexes=full))
    hf, ours = _load_pair(c, tmp_path_factory, f"layout{len(full)}")
    ids, pv, grid = worked_example(c)
    compare(f"tiny two images, vision depth 3, full attention at {full}", ours, hf, ids, pv=pv,
            grid=grid)


# ---------------------------------------------------------------------------- gradient parity
GRAD_TOL = 1e-4  # max |Δgrad| relative to the tensor's largest reference |grad|


def _torch_grads(hf, ids, pv, grid):
    """transformers' loss (labels = input_ids, its own shift) and every parameter's gradient,
    keyed by the normalized hub name."""
    from guard_jax.models.qwen2_5_vl.hf_keys import normalize_key
    t_ids = torch.as_tensor(ids, dtype=torch.long)
    hf.zero_grad(set_to_none=True)
    hf.model.rope_deltas = None
    out = hf(input_ids=t_ids, labels=t_ids, pixel_values=torch.as_tensor(pv),
             image_grid_thw=torch.as_tensor(grid, dtype=torch.long),
             mm_token_type_ids=(t_ids == hf.config.image_token_id).long())
    out.loss.backward()
    grads = {normalize_key(n): p.grad.detach().float().numpy()
             for n, p in hf.named_parameters() if p.grad is not None}
    return float(out.loss.detach()), grads


def _our_grads(ours, ids, pv, grid, tmp_path):
    """Our training loss (train_step.next_token_loss) and gradients, written out through
    save_hf (gradients in place of the weights) so they carry the hub names."""
    import jax
    from guard_jax.models.qwen2_5_vl.hf_keys import normalize_key
    from guard_jax.training.train_step import next_token_loss
    batch = ours.prepare_inputs(ids, attention_mask=np.ones_like(ids), pixel_values=pv,
                                image_grid_thw=grid)
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

    def loss_fn(p):
        return next_token_loss(nnx.merge(graphdef, p, rest), batch)[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    holder = nnx.merge(graphdef, grads, rest)
    guard_jax.save_hf(holder, tmp_path / "grads", progress=False)
    return float(loss), {normalize_key(k): v.float().numpy()
                         for k, v in H.safetensors_tensors(tmp_path / "grads").items()}


@pytest.mark.parametrize("pair", ["tiny_pair", "big_pair"])
def test_loss_and_gradients_match_transformers(pair, request, tmp_path):
    """The training loss and the gradient of every parameter (vision tower, merger, decoder,
    embeddings, untied or tied head) against transformers' loss.backward() on two images of
    different sizes: covers the hand-written backward passes (SwiGLU) and the attention paths."""
    c, hf, ours = request.getfixturevalue(pair)
    ids, pv, grid = worked_example(c)
    ref_loss, ref = _torch_grads(hf, ids, pv, grid)
    loss, got = _our_grads(ours, ids, pv, grid, tmp_path)
    assert abs(loss - ref_loss) <= 1e-5, (loss, ref_loss)
    assert set(got) == set(ref), (sorted(set(got) ^ set(ref)))
    worst = {}
    for k, r in ref.items():
        scale = float(np.abs(r).max())
        assert scale > 0, f"{k}: zero reference gradient, the comparison is vacuous"
        worst[k] = float(np.abs(got[k] - r).max()) / scale
    k = max(worst, key=worst.get)
    DIFFS[f"{pair} grads (worst: {k})"] = worst[k]
    assert worst[k] <= GRAD_TOL, f"{k}: max |Δgrad| / max |grad| = {worst[k]:.2e}"
