"""Export and import refuse what they must not touch or trust: an --out that is, holds or lies
inside the checkpoint directory, or that holds files an export does not write; a path that is
not a local directory; a config.json claiming more layers than the weights hold; a truncated
safetensors file. Stale partial folders of killed exports are cleaned up; NaN/inf weights are
reported. See docs/export-import.md."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import guard_jax
from guard_jax.cli import main as cli
from guard_jax.errors import EXIT_INPUT, InputError
from guard_jax.models.qwen2_5_vl import hf_io
from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig, tiny
from guard_jax.models.qwen2_5_vl.hf_keys import KeyMap
from guard_jax.training.hf_convert import import_hf


@pytest.fixture(scope="module")
def model():
    return guard_jax.init_model(tiny(), seed=0)


@pytest.fixture(scope="module")
def hf_dir(model, tmp_path_factory):
    return guard_jax.save_hf(model, tmp_path_factory.mktemp("src") / "hf", progress=False)


@pytest.fixture(scope="module")
def workdir(hf_dir, tmp_path_factory):
    """A training workdir (step 0 of the tiny model) with a metrics file beside the steps."""
    work = import_hf(hf_dir, tmp_path_factory.mktemp("run") / "work")
    (work / "metrics.jsonl").write_text('{"step": 0}\n')
    return work


def _tree(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _export(capsys, *args) -> tuple[int, str]:
    rc = cli(["export", *map(str, args)])
    return rc, capsys.readouterr().err


def _logged(caplog) -> str:
    """What hf_io warned about."""
    return "\n".join(r.getMessage() for r in caplog.records
                     if r.levelno >= logging.WARNING and r.name == hf_io.__name__)


# ---------------------------------------------------------------------------- export target
def test_export_never_touches_the_checkpoint_directory(workdir, capsys):
    before = _tree(workdir.parent)
    for out, says in ((workdir, "inside the checkpoint directory"),
                      (workdir / "hf", "inside the checkpoint directory"),
                      (workdir.parent, "holds the checkpoint directory")):
        for extra in ((), ("--overwrite",)):
            rc, err = _export(capsys, "--checkpoint", workdir, "--out", out, *extra)
            assert rc == EXIT_INPUT and says in err and err.count("\n") == 1, err
            assert _tree(workdir.parent) == before


def test_export_refuses_a_folder_with_other_files(workdir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    for extra in ((), ("--overwrite",)):
        rc, err = _export(capsys, "--checkpoint", workdir, "--out", out, *extra)
        assert rc == EXIT_INPUT and "notes.txt" in err and "config.json" not in err, err
    assert _tree(out) == ["config.json", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert _tree(tmp_path) == ["out", "out/config.json", "out/notes.txt"]  # no scratch left


def test_export_to_new_empty_or_previous_export(workdir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "new" / "hf", empty):
        rc, err = _export(capsys, "--checkpoint", workdir, "--out", out)
        assert rc == 0, err
        assert (out / hf_io.EXPORT_MARKER).is_file() and (out / "model.safetensors").is_file()
    # a previous export is replaced without a flag, leaving nothing beside it
    first = (empty / "model.safetensors").stat().st_mtime_ns
    rc, err = _export(capsys, "--checkpoint", workdir, "--out", empty, "--dtype", "bfloat16")
    assert rc == 0, err
    assert (empty / "model.safetensors").stat().st_mtime_ns != first
    assert json.loads((empty / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_other_hf_directory_needs_overwrite(workdir, hf_dir, tmp_path, capsys):
    out = tmp_path / "theirs"
    shutil.copytree(hf_dir, out)
    (out / hf_io.EXPORT_MARKER).unlink()  # as transformers' save_pretrained writes it
    (out / "tokenizer.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, err = _export(capsys, "--checkpoint", workdir, "--out", out)
    assert rc == EXIT_INPUT and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    rc, err = _export(capsys, "--checkpoint", workdir, "--out", out, "--overwrite")
    assert rc == 0, err
    assert (out / hf_io.EXPORT_MARKER).is_file()
    assert not (out / "tokenizer.json").exists()  # an export file, replaced with the rest


def test_save_hf_refuses_a_file_and_files_added_while_writing(model, tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        guard_jax.save_hf(model, tmp_path / "f", progress=False)
    out = guard_jax.save_hf(model, tmp_path / "out", progress=False)
    real = hf_io.write_safetensors

    def meanwhile(path, *a, **k):  # someone drops a file into the target during the write
        (out / "late.txt").write_text("late")
        real(path, *a, **k)

    monkeypatch.setattr(hf_io, "write_safetensors", meanwhile)
    with pytest.raises(InputError, match="late.txt"):
        guard_jax.save_hf(model, out, progress=False)
    assert (out / "late.txt").read_text() == "late" and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "out"]


def test_export_of_a_missing_checkpoint_creates_nothing(tmp_path, capsys):
    rc, err = _export(capsys, "--checkpoint", tmp_path / "nowhere", "--out", tmp_path / "hf")
    assert rc == EXIT_INPUT and "no such local directory" in err, err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- partial folders
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_partials_of_the_same_target_are_removed(model, tmp_path, caplog):
    dead = _dead_pid()
    host = hf_io._HOST
    names = {
        f".out.partial-{host}-{dead}-1": False,  # ours, writer gone: removed
        f".out.partial-{dead}-1": False,  # the older name without a host: removed
        f".out.old-{host}-{dead}-1": False,  # a previous export set aside, writer gone: removed
        f".out.partial-{host}-{os.getpid()}-1": True,  # writer alive: kept
        f".out.partial-elsewhere-{dead}-1": True,  # another host's writer: kept
        f".other.partial-{host}-{dead}-1": True,  # another target: kept
        f".out.partial-{host}-{dead}-2": True,  # holds a file an export does not write: kept
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
    (tmp_path / f".out.partial-{host}-{dead}-2" / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        guard_jax.save_hf(model, tmp_path / "out", progress=False)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"out"} | {n for n, kept in names.items() if kept}
    logged = _logged(caplog)
    for n, kept in names.items():
        assert (n in logged) == (not kept or n.endswith("-2")), (n, logged)
    assert "removed" in logged


def test_killed_export_partial_is_removed_by_the_next(tmp_path, model, caplog):
    code = ("import os, signal, guard_jax\n"
            "from guard_jax.models.qwen2_5_vl import hf_io\n"
            "from guard_jax.models.qwen2_5_vl.config import tiny\n"
            "real = hf_io.write_safetensors\n"
            "def die(*a, **k):\n"
            "    real(*a, **k)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "hf_io.write_safetensors = die\n"
            f"guard_jax.save_hf(guard_jax.init_model(tiny()), {str(tmp_path / 'out')!r},\n"
            "                  max_shard_bytes=200_000, progress=False)\n")
    rc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"}).returncode
    assert rc != 0
    partial = [p.name for p in tmp_path.iterdir()]
    assert len(partial) == 1 and partial[0].startswith(".out.partial-"), partial
    with caplog.at_level(logging.WARNING):
        guard_jax.save_hf(model, tmp_path / "out", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert partial[0] in _logged(caplog)


# ---------------------------------------------------------------------------- import
def test_non_local_paths_are_refused_without_a_hub_lookup(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("a hub lookup")

    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, no_hub)
    for path in ("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path / "nowhere"):
        for load in (Qwen25VLConfig.from_pretrained,
                     lambda p: guard_jax.load_hf(p, progress=False)):
            with pytest.raises(InputError, match=f"^{path}: no such local directory"):
                load(path)
    rc = cli(["import", "--hf-dir", "Qwen/Qwen2.5-VL-3B-Instruct", "--out", str(tmp_path / "c")])
    assert rc == EXIT_INPUT and not (tmp_path / "c").exists()


def _with_config(src, dst, **edit):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in edit.items():
        if k.startswith("vision_"):
            cfg["vision_config"][k[len("vision_"):]] = v
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_hostile_layer_count_is_refused_before_enumerating(hf_dir, tmp_path, monkeypatch):
    real = KeyMap.hf_keys

    def bounded(self):  # enumerating a claimed count of millions is the failure
        assert self.stacked <= 64, f"enumerated {self.stacked} layers of {self.hf}"
        return real(self)

    monkeypatch.setattr(KeyMap, "hf_keys", bounded)
    for field, edit in (("num_hidden_layers", {"num_hidden_layers": 10_000_000}),
                        ("vision_config.depth", {"vision_depth": 10_000_000})):
        d = _with_config(hf_dir, tmp_path / field, **edit)
        with pytest.raises(InputError, match=rf"config\.json: {field}=10000000, but the weights "
                                             r"hold 2 such layers"):
            guard_jax.load_hf(d, dtype="float32", progress=False)
    for val in (2.5, -1, "2", True, 2**40):
        d = _with_config(hf_dir, tmp_path / f"bad{val}", num_hidden_layers=val)
        with pytest.raises(InputError, match=r"config\.json: num_hidden_layers="):
            guard_jax.load_hf(d, dtype="float32", progress=False)


def test_truncated_safetensors_names_the_file(hf_dir, tmp_path, capsys):
    d = shutil.copytree(hf_dir, tmp_path / "trunc")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(InputError, match=rf"^{d}/model\.safetensors: not a readable safetensors"):
        guard_jax.load_hf(d, dtype="float32", progress=False)
    rc = cli(["import", "--hf-dir", str(d), "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert rc == EXIT_INPUT and "model.safetensors" in err and err.count("\n") == 1, err


def test_nonfinite_weights_are_reported(hf_dir, tmp_path, caplog):
    d = shutil.copytree(hf_dir, tmp_path / "nan")
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.1.mlp.up_proj.weight"][0, :3] = [np.nan, np.inf, -np.inf]
    t["model.norm.weight"][5] = np.nan
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        m = guard_jax.load_hf(d, dtype="float32", progress=False)
    logged = _logged(caplog)
    f = d / "model.safetensors"
    assert f"{f}: tensor model.layers.1.mlp.up_proj.weight holds 3 NaN/inf" in logged, logged
    assert f"{f}: tensor model.norm.weight holds 1 NaN/inf" in logged, logged
    assert logged.count("\n") == 1  # two lines: the finite tensors say nothing
    assert np.isnan(np.asarray(m.text.norm[...])[5])  # loaded as they are


def test_failed_swap_puts_the_previous_export_back(model, tmp_path, monkeypatch):
    out = guard_jax.save_hf(model, tmp_path / "out", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = type(out).rename

    def rename(self, target):  # the partial cannot take the export's place
        if str(target) == str(out) and ".partial-" in self.name:
            raise OSError("simulated: rename failed")
        return real(self, target)

    monkeypatch.setattr(type(out), "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        guard_jax.save_hf(model, out, dtype="bfloat16", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
