"""Hugging Face import/export: transformers -> guard_jax -> transformers round trips, sharding,
config and generation config, assets, atomic writes, bad checkpoints, and our own random init
exported to transformers."""

from __future__ import annotations

import copy
import json
import re
import shutil
import struct

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file
from transformers import GenerationConfig, Qwen2_5_VLConfig

import guard_jax
import hf_reference as H
from guard_jax.models.qwen2_5_vl import hf_io
from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig, tiny

TOL = 1e-4
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ASSETS = {
    "tokenizer_config.json": '{"model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer"}\n',
    "preprocessor_config.json": '{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14}\n',
    "chat_template.jinja": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% endfor %}",
}
EXTRA_GENERATION = {"temperature": 0.1, "top_p": 0.001, "repetition_penalty": 1.05}


def _configs():
    return {"untied": tiny(), "tied": tiny().replace(tie_word_embeddings=True)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """name -> (config, perturbed transformers model, directory saved by save_pretrained) with
    asset files and a generation_config.json carrying sampling defaults."""
    out = {}
    for i, (name, c) in enumerate(_configs().items()):
        hf = H.build_hf_model(c, seed=10 + i)
        d = tmp_path_factory.mktemp(f"src_{name}")
        H.save_hf_reference(hf, d)
        for fname, text in ASSETS.items():
            (d / fname).write_text(text)
        gen = json.loads((d / "generation_config.json").read_text())
        gen.update(EXTRA_GENERATION)
        (d / "generation_config.json").write_text(json.dumps(gen))
        out[name] = (c, hf, d)
    return out


def _st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def _assert_state_dicts_identical(got: dict, want: dict, dtype):
    assert set(got) == set(want), (sorted(set(got) ^ set(want)))
    for k, w in want.items():
        g = got[k]
        w = w.to(dtype)
        assert g.dtype == dtype, (k, g.dtype)
        assert g.shape == w.shape, (k, g.shape, w.shape)
        assert torch.equal(g, w), f"{k}: max |Δ| {float((g.float() - w.float()).abs().max())}"


def _flat_params(model):
    return {".".join(map(str, p)): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["untied", "tied"])
def test_round_trip_bit_identical(sources, tmp_path, name, dtype):
    c, hf, src = sources[name]
    ours = guard_jax.load_hf(src, dtype=dtype, progress=False)
    assert ours.config.param_dtype == dtype
    out = guard_jax.save_hf(ours, tmp_path / "out", progress=False)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()

    header = _st_header(out / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    assert {v["dtype"] for v in header.values()} == {"F32" if dtype == "float32" else "BF16"}
    keys = set(header)
    assert ("lm_head.weight" in keys) == (name == "untied")
    assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    assert not any("inv_freq" in k for k in keys)

    tdt = TORCH_DTYPES[dtype]
    want = H.safetensors_tensors(src)
    # the files themselves: same keys (hub layout) and bit-identical tensors
    _assert_state_dicts_identical(H.safetensors_tensors(out), want, tdt)
    # and what transformers makes of them
    reloaded = H.load_hf_model(out, dtype=tdt)
    _assert_state_dicts_identical(reloaded.state_dict(), hf.state_dict(), tdt)
    if name == "tied":
        assert reloaded.lm_head.weight.data_ptr() == \
            reloaded.model.language_model.embed_tokens.weight.data_ptr()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == dtype and cfg["tie_word_embeddings"] == (name == "tied")


def test_bf16_checkpoint_loads_bit_exact(sources, tmp_path):
    """A bf16 checkpoint (the published format) reads exactly, as bf16 and upcast to fp32."""
    c, hf, _ = sources["untied"]
    src = tmp_path / "bf16"
    H.save_hf_reference(copy.deepcopy(hf).to(torch.bfloat16), src)
    assert {v["dtype"] for k, v in _st_header(src / "model.safetensors").items()
            if k != "__metadata__"} == {"BF16"}
    out16 = guard_jax.save_hf(guard_jax.load_hf(src, dtype="bfloat16", progress=False),
                              tmp_path / "out16", progress=False)
    out32 = guard_jax.save_hf(guard_jax.load_hf(src, dtype="float32", progress=False),
                              tmp_path / "out32", progress=False)
    want = H.safetensors_tensors(src)
    _assert_state_dicts_identical(H.safetensors_tensors(out16), want, torch.bfloat16)
    _assert_state_dicts_identical(H.safetensors_tensors(out32), want, torch.float32)


def test_sharded_export(sources, tmp_path):
    c, hf, src = sources["untied"]
    ours = guard_jax.load_hf(src, dtype="float32", progress=False)
    out = guard_jax.save_hf(ours, tmp_path / "sharded", max_shard_bytes=200_000, progress=False)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    n = len(files)
    assert n > 1
    assert files == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    sizes, where = 0, {}
    for fname in files:
        header = _st_header(out / fname)
        header.pop("__metadata__")
        for k, v in header.items():
            where[k] = fname
            sizes += v["data_offsets"][1] - v["data_offsets"][0]
        # a shard exceeds the cap only when a single tensor does
        if len(header) > 1:
            assert sum(v["data_offsets"][1] - v["data_offsets"][0]
                       for v in header.values()) <= 200_000
    assert index["metadata"]["total_size"] == sizes
    assert index["weight_map"] == where
    assert set(where) == set(H.safetensors_tensors(src))

    reloaded = H.load_hf_model(out)
    _assert_state_dicts_identical(reloaded.state_dict(), hf.state_dict(), torch.float32)
    # and our own loader reads the sharded directory back to the same parameters
    again = guard_jax.load_hf(out, dtype="float32", progress=False)
    a, b = _flat_params(again), _flat_params(ours)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_overwrites_existing_export(sources, tmp_path):
    c, hf, src = sources["untied"]
    ours = guard_jax.load_hf(src, dtype="float32", progress=False)
    out = guard_jax.save_hf(ours, tmp_path / "out", max_shard_bytes=200_000, progress=False)
    assert (out / "model.safetensors.index.json").exists()
    guard_jax.save_hf(ours, out, progress=False)  # single file now: no stale shards may remain
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    H.load_hf_model(out)


# ---------------------------------------------------------------------------- configs and assets
@pytest.mark.parametrize("name", ["untied", "tied"])
def test_exported_config_and_generation_config(sources, tmp_path, name):
    c, hf, src = sources[name]
    ours = guard_jax.load_hf(src, dtype="float32", progress=False)
    out = guard_jax.save_hf(ours, tmp_path / "out", progress=False)

    ref = hf.config
    got = Qwen2_5_VLConfig.from_pretrained(out)
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "vocab_size", "max_position_embeddings",
                  "hidden_act", "use_sliding_window", "attention_dropout"):
        assert getattr(got.text_config, field) == getattr(ref.text_config, field), field
    rp = got.text_config.rope_parameters
    assert rp["mrope_section"] == list(c.text.mrope_section) and rp["rope_theta"] == 1e6
    for field in ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels",
                  "patch_size", "temporal_patch_size", "spatial_merge_size", "window_size",
                  "fullatt_block_indexes", "out_hidden_size", "tokens_per_second", "hidden_act"):
        assert getattr(got.vision_config, field) == getattr(ref.vision_config, field), field
    for field in ("image_token_id", "video_token_id", "vision_start_token_id",
                  "vision_end_token_id", "tie_word_embeddings"):
        assert getattr(got, field) == getattr(ref, field), field

    mine = Qwen25VLConfig.from_pretrained(out, param_dtype="float32", dtype="float32")
    assert mine == ours.config

    gen = GenerationConfig.from_pretrained(out)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert c.eos_token_id in eos and c.bos_token_id in eos and len(eos) == len(set(eos)) == 2
    assert gen.pad_token_id == c.generation_pad_id and gen.bos_token_id == c.bos_token_id
    raw = json.loads((out / "generation_config.json").read_text())
    for k, v in EXTRA_GENERATION.items():  # the source's sampling defaults survive
        assert raw[k] == v, k


def test_assets_copied(sources, tmp_path):
    c, hf, src = sources["tied"]
    ours = guard_jax.load_hf(src, dtype="float32", progress=False)
    out = guard_jax.save_hf(ours, tmp_path / "out", progress=False)
    for fname in ASSETS:
        assert (out / fname).read_bytes() == (src / fname).read_bytes(), fname
    # the source has no video processor config: written from the model config
    assert json.loads((out / "video_preprocessor_config.json").read_text())["patch_size"] == 14
    # an explicit assets_from wins; a model built in JAX has no source unless given one, and
    # then gets no tokenizer but the processor files written from its config
    init = guard_jax.init_model(tiny())
    bare = guard_jax.save_hf(init, tmp_path / "bare", progress=False)
    assert not (bare / "tokenizer_config.json").exists()
    assert {"preprocessor_config.json", "video_preprocessor_config.json",
            "chat_template.jinja"} <= {p.name for p in bare.iterdir()}
    given = guard_jax.save_hf(init, tmp_path / "given", assets_from=src, progress=False)
    for fname in ASSETS:
        assert (given / fname).read_bytes() == (src / fname).read_bytes(), fname


# ---------------------------------------------------------------------------- atomicity
def test_failed_save_leaves_nothing(sources, tmp_path, monkeypatch):
    c, hf, src = sources["untied"]
    ours = guard_jax.load_hf(src, dtype="float32", progress=False)
    real = hf_io.write_safetensors
    written = []

    def flaky(path, entries, metadata, on_tensor=None):
        if written:
            raise OSError("simulated: disk full")
        real(path, entries, metadata, on_tensor=on_tensor)
        written.append(path)

    monkeypatch.setattr(hf_io, "write_safetensors", flaky)
    parent = tmp_path / "exports"
    parent.mkdir()
    with pytest.raises(OSError, match="simulated"):
        guard_jax.save_hf(ours, parent / "out", max_shard_bytes=200_000, progress=False)
    assert len(written) == 1  # one shard was complete when the second one failed
    assert not (parent / "out").exists()
    assert list(parent.iterdir()) == []

    # an existing export survives a failed overwrite untouched
    old = parent / "old"
    old.mkdir()
    (old / "config.json").write_text("previous export")
    written.clear()
    with pytest.raises(OSError, match="simulated"):
        guard_jax.save_hf(ours, old, max_shard_bytes=200_000, progress=False, overwrite=True)
    assert sorted(p.name for p in parent.iterdir()) == ["old"]
    assert sorted(p.name for p in old.iterdir()) == ["config.json"]
    assert (old / "config.json").read_text() == "previous export"


# ---------------------------------------------------------------------------- bad inputs
def _copy_with(src, dst, edit):
    shutil.copytree(src, dst)
    tensors = np_load_file(str(dst / "model.safetensors"))
    edit(tensors)
    np_save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_pickle_only_directory(sources, tmp_path):
    c, hf, src = sources["untied"]
    d = tmp_path / "bin_only"
    d.mkdir()
    shutil.copy(src / "config.json", d / "config.json")
    torch.save({"lm_head.weight": torch.zeros(2, 2)}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickle weights.*safetensors only"):
        guard_jax.load_hf(d, dtype="float32", progress=False)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        guard_jax.load_hf(d, dtype="float32", progress=False)
    with pytest.raises(FileNotFoundError, match="no such local directory"):
        guard_jax.load_hf(tmp_path / "nowhere", dtype="float32", progress=False)


def test_missing_tensor(sources, tmp_path):
    c, hf, src = sources["untied"]
    key = "model.layers.1.mlp.up_proj.weight"
    d = _copy_with(src, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(ValueError, match=re.escape(key)):
        guard_jax.load_hf(d, dtype="float32", progress=False)
    d2 = _copy_with(src, tmp_path / "no_head", lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"lm_head\.weight.*tie_word_embeddings is false"):
        guard_jax.load_hf(d2, dtype="float32", progress=False)


@pytest.mark.parametrize("key,bad_shape", [
    ("visual.merger.mlp.0.weight", (127, 128)),
    ("model.embed_tokens.weight", (255, 64)),
])
def test_wrong_shape(sources, tmp_path, key, bad_shape):
    c, hf, src = sources["untied"]

    def edit(t):
        t[key] = t[key][:bad_shape[0]]

    d = _copy_with(src, tmp_path / "bad_shape", edit)
    with pytest.raises(ValueError, match=re.escape(f"{key}: shape {bad_shape}")):
        guard_jax.load_hf(d, dtype="float32", progress=False)


def test_wrong_shape_names_the_layer(sources, tmp_path):
    c, hf, src = sources["untied"]
    key = "visual.blocks.1.attn.qkv.weight"

    def edit(t):
        t[key] = t[key][:-1]

    d = _copy_with(src, tmp_path / "bad_shape", edit)
    with pytest.raises(ValueError, match=re.escape(f"{key}: shape (95, 32)")):
        guard_jax.load_hf(d, dtype="float32", progress=False)


def test_unexpected_tensor(sources, tmp_path):
    c, hf, src = sources["untied"]

    def edit(t):
        t["model.layers.2.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"]

    d = _copy_with(src, tmp_path / "extra", edit)
    with pytest.raises(ValueError, match=r"unexpected tensors.*model\.layers\.2\.mlp\.up_proj"):
        guard_jax.load_hf(d, dtype="float32", progress=False)


def test_tied_config_with_lm_head_in_file(sources, tmp_path):
    c, hf, src = sources["tied"]
    copy = _copy_with(src, tmp_path / "copy",
                      lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
    ours = guard_jax.load_hf(copy, dtype="float32", progress=False)  # an exact copy is fine
    assert not any("lm_head" in k for k in _flat_params(ours))

    def differ(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1.0

    d = _copy_with(src, tmp_path / "differ", differ)
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        guard_jax.load_hf(d, dtype="float32", progress=False)


# ---------------------------------------------------------------------------- JAX -> HF
def _perturb(model, seed):
    """Random init leaves norms at 1 and biases at 0, which would hide swapped tensors."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v = np.asarray(var.get_value())
        var.set_value(v + rng.standard_normal(v.shape).astype(v.dtype) * 0.05)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_jax_init_exports_to_transformers(tmp_path, tie):
    c = tiny().replace(tie_word_embeddings=tie)
    ours = guard_jax.init_model(c, seed=7)
    _perturb(ours, seed=8)
    out = guard_jax.save_hf(ours, tmp_path / "out", progress=False)
    hf = H.load_hf_model(out)  # asserts no missing / unexpected / mismatched keys
    assert ("lm_head.weight" in H.safetensors_tensors(out)) == (not tie)

    grids = [[1, 4, 4], [1, 6, 10]]
    pv, grid = H.random_image_inputs(c, grids, seed=1)
    ids = np.asarray([[5, 6, 7] + H.image_tokens(c, grids[0]) + [8, 9] +
                      H.image_tokens(c, grids[1]) + [10, 11, 12]])
    ref = H.hf_logits(hf, ids, pixel_values=pv, image_grid_thw=grid)
    got = np.asarray(ours(ids, pixel_values=pv, image_grid_thw=grid))
    assert ref.std() > 1e-2
    diff = float(np.abs(got - ref).max())
    print(f"\nJAX init -> HF ({'tied' if tie else 'untied'}): max |Δlogits| = {diff:.3e}")
    assert diff <= TOL, diff

    # and back: our loader reads our export to the same parameters
    again = guard_jax.load_hf(out, dtype="float32", progress=False)
    a, b = _flat_params(again), _flat_params(ours)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------------- meshes
def test_load_hf_on_a_jax_make_mesh(tmp_path):
    """jax.make_mesh gives Explicit axes by default; load_hf and generate take such a mesh (as
    Auto axes) and give the unsharded results; a mesh with other axis names says what to pass."""
    import jax

    c = tiny()
    init = guard_jax.init_model(c, seed=5)
    _perturb(init, seed=6)
    out = guard_jax.save_hf(init, tmp_path / "out", progress=False)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Explicit}
    ref = guard_jax.load_hf(out, dtype="float32", progress=False)
    sharded = guard_jax.load_hf(out, dtype="float32", mesh=mesh, progress=False)
    ids = np.asarray([[5, 6, 7, 8, 9, 10, 11, 12]] * 2)
    np.testing.assert_allclose(np.asarray(sharded(ids)), np.asarray(ref(ids)), atol=TOL)
    kw = dict(attention_mask=np.ones_like(ids), max_new_tokens=4, eos_token_ids=c.eos_token_id)
    np.testing.assert_array_equal(guard_jax.generate(sharded, ids, mesh=mesh, **kw),
                                  guard_jax.generate(ref, ids, **kw))
    with pytest.raises(ValueError, match=r"knows no axis \['x'\].*guard_jax\.sharding\.make_mesh"):
        guard_jax.load_hf(out, dtype="float32", mesh=jax.make_mesh((8,), ("x",)), progress=False)


def test_train_step_on_a_jax_make_mesh():
    """The train state and step take a jax.make_mesh mesh (Explicit axes) too, and step like
    guard_jax.sharding.make_mesh's."""
    import jax
    import optax

    from guard_jax.sharding import make_mesh
    from guard_jax.training.train_step import init_train_state, make_train_step
    c = tiny()
    ids = np.asarray([[5, 6, 7, 8, 9, 10, 11, 12]] * 4)
    batch = dict(guard_jax.init_model(c, seed=0).prepare_inputs(ids),
                 labels=np.roll(ids, -1, 1), loss_mask=np.ones_like(ids))
    losses = []
    for mesh in (jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor")),
                 make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
        tx = optax.sgd(0.1)
        graphdef, state = init_train_state(guard_jax.init_model(c, seed=0), tx, mesh)
        step = make_train_step(graphdef, tx, mesh=mesh, state=state)
        state, m1 = step(state, batch)
        _, m2 = step(state, batch)
        losses.append([float(m1["loss"]), float(m2["loss"])])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    assert losses[0][1] < losses[0][0]
