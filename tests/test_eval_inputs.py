"""`guard-jax eval --config` checks every input before the model loads: each benchmark's dataset
and split, the image files of path-based datasets and their root, the model directory or
checkpoint, the tokenizer and the output folder. One error lists all of them, exit 2, and
nothing is written. The fixtures are converted datasets; no model runs here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipeline.build import build_dataset
from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir
from guard_jax.cli import main as cli_main
from guard_jax.errors import InputError
from guard_jax.evaluation.generation import load_tokenizer
from guard_jax.evaluation.runner import eval_base_config, evaluate_config


def _image_set(raw, name, n=2):
    raw.mkdir()
    with open(raw / "images.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray(np.full((28, 28, 3), 40 * i, np.uint8)).save(raw / f"im{i}.png")
            f.write(json.dumps({"id": f"{name}{i}", "prompt": f"picture {i}",
                                "images": [f"im{i}.png"], "label": "unharmful"}) + "\n")
    return raw / "images.jsonl"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """DATA/ToxicChat (text), DATA/Images (fine), DATA/Gone (its image folder deleted),
    DATA/Holey (one of its two image files deleted); a tokenizer; a directory that looks like
    an HF export (config.json, safetensors, tokenizer files) without being loaded."""
    root = tmp_path_factory.mktemp("eval_inputs")
    tok = write_qwen2_5_vl_tokenizer_dir(root / "tok")
    (root / "raw").mkdir()
    (root / "raw" / "ToxicChat.json").write_text(json.dumps([
        {"instruction": "Classify.", "input": "Human user:\nhi\n\nAI assistant:\nNone\n",
         "output": "unharmful"}]))
    data = root / "data"
    build_dataset("guardreasoner_text", root / "raw" / "ToxicChat.json", data / "ToxicChat",
                  split="test", progress=False, echo=False)
    for name in ("Images", "Gone", "Holey"):
        build_dataset("generic_jsonl", _image_set(root / f"raw_{name}", name), data / name,
                      split="test", progress=False, echo=False)
    shutil.rmtree(root / "raw_Gone")
    (root / "raw_Holey" / "im1.png").unlink()
    hf = root / "hf"
    shutil.copytree(tok, hf)
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    return root, str(tok)


def _config_file(root, *names, split="test"):
    """A config file of benchmarks DATA/NAME, the first one read at `split`."""
    benchmarks = [dict(name=n, path=n, split=split if i == 0 else "test")
                  for i, n in enumerate(names)]
    path = root / f"cfg_{'_'.join(names)}_{split}.py"
    path.write_text(
        "from guard_jax.evaluation.runner import eval_base_config\n\n\n"
        "def get_config():\n"
        "    c = eval_base_config('guardreasoner_vl', preset='tiny_qwen')\n"
        "    c.eval.recipe_options = \"mode='sft',use_sample_instruction=False\"\n"
        f"    c.eval.data_root = {str(root / 'data')!r}\n"
        f"    c.eval.benchmarks = {tuple(benchmarks)!r}\n"
        "    return c\n")
    return str(path)


def _eval(root, capsys, *argv):
    rc = cli_main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return rc, out.err.strip().splitlines()


def test_every_missing_input_in_one_line_nothing_written(data, capsys):
    root, tok = data
    out = root / "out_all"
    cfg = _config_file(root, "ToxicChat", "Missing", "Gone", "Holey", "Images", split="train")
    rc, err = _eval(root, capsys, "--config", cfg, "--hf-dir", root / "no_hf", "--out", out,
                    f"--config.data.tokenizer_dir={root / 'no_tok'}")
    assert rc == 2 and len(err) == 1
    line = err[0]
    assert line.startswith("guard-jax eval: 6 missing or unusable input(s): ")
    data_dir = root / "data"
    for part in (
            f"eval.benchmarks[0] (ToxicChat) path {data_dir / 'ToxicChat'} split 'train': "
            "Unknown split 'train'",
            f"eval.benchmarks[1] (Missing) path {data_dir / 'Missing'} split 'test': expected "
            "one dataset",
            f"eval.benchmarks[2] (Gone): image root {root / 'raw_Gone'} (from the dataset's "
            "metadata) does not exist; 2 images are stored relative to it",
            f"eval.benchmarks[3] (Holey): 1 of 2 image files missing under {root / 'raw_Holey'}"
            " (first: im1.png)",
            f"data.tokenizer_dir {root / 'no_tok'}: no such directory",
            f"--hf-dir {root / 'no_hf'}: no such directory"):
        assert part in line, part
    assert "(Images)" not in line
    assert not out.exists()


def test_missing_benchmark_stops_before_any_output(data, tmp_path):
    """It used to generate and write the first benchmark's outputs, then fail on the second."""
    root, tok = data
    run = eval_base_config("guardreasoner_vl", preset="tiny_qwen")
    run.eval.recipe_options = "mode='sft',use_sample_instruction=False"
    run.eval.data_root = str(root / "data")
    run.eval.benchmarks = (dict(name="ToxicChat", path="ToxicChat"),
                           dict(name="Missing", path="Missing"))
    calls = []

    def generate_fn(batch):
        calls.append(batch)
        return ["Request: harmful"] * len(batch.sample_ids)
    with pytest.raises(InputError, match=r"^1 missing or unusable input\(s\): "
                       r"eval.benchmarks\[1\] \(Missing\)"):
        evaluate_config(run, generate_fn=generate_fn, tokenizer=load_tokenizer(tok),
                        out_dir=tmp_path / "out", progress=False)
    assert calls == [] and not (tmp_path / "out").exists()


def test_skip_tolerates_missing_image_files_not_a_missing_root(data):
    from guard_jax.evaluation.runner import input_problems
    root, _ = data
    run = eval_base_config("guardreasoner_vl", preset="tiny_qwen")
    run.eval.data_root = str(root / "data")
    run.eval.benchmarks = (dict(name="Holey", path="Holey"), dict(name="Gone", path="Gone"))
    run.eval.on_error = "skip"  # the one missing file is quarantined at run time
    (problem,) = input_problems(run, model=False, tokenizer=False)
    assert problem.startswith("eval.benchmarks[1] (Gone): image root")
    run.eval.limit = 1  # only the samples that would run are looked at
    run.eval.on_error = "fail"
    run.eval.benchmarks = (dict(name="Holey", path="Holey"),)
    assert input_problems(run, model=False, tokenizer=False) == []


def test_model_tokenizer_and_out_problems(data, tmp_path):
    from guard_jax.evaluation.runner import input_problems
    root, tok = data
    run = eval_base_config("guardreasoner_vl", preset="tiny_qwen")
    run.eval.data_root = str(root / "data")
    run.eval.benchmarks = (dict(name="ToxicChat", path="ToxicChat"),)
    # a complete (unloaded) HF directory with its tokenizer, a fresh output folder: no problem
    assert input_problems(run, hf_dir=root / "hf", out_dir=tmp_path / "a" / "b") == []
    bare = tmp_path / "bare"
    bare.mkdir()
    (tmp_path / "file").write_text("x")
    assert input_problems(run, hf_dir=bare, out_dir=tmp_path / "file") == [
        f"--hf-dir {bare}: no config.json", f"--hf-dir {bare}: no *.safetensors weights",
        f"--hf-dir {bare}: no tokenizer files (tokenizer.json or vocab.json)",
        f"--out {tmp_path / 'file'}: exists and is not a directory"]
    run.data.tokenizer_dir = tok  # the tokenizer no longer comes from the model directory
    assert input_problems(run, hf_dir=bare)[2:] == []
    assert input_problems(run, checkpoint=bare) == [
        f"--checkpoint {bare}: no checkpoint step folders"]
    (bare / "5").mkdir()
    assert input_problems(run, checkpoint=bare, step=7) == [
        f"--step 7: not in --checkpoint {bare} (steps [5])"]
    assert input_problems(run, checkpoint=bare)[0].startswith(
        f"--checkpoint {bare}: no readable run config in {bare / '5' / 'meta' / 'metadata'}")
    (bare / "5" / "meta").mkdir()
    (bare / "5" / "meta" / "metadata").write_text(json.dumps({"config": {"data": {}}}))
    assert input_problems(run, checkpoint=bare) == []
    run.data.tokenizer_dir = ""  # then the export copies the run's tokenizer, which it lacks
    assert input_problems(run, checkpoint=bare) == [
        f"--checkpoint {bare}: its run names no tokenizer (data.tokenizer_dir, model.hf_dir); "
        "set data.tokenizer_dir"]


def test_cli_errors_exit_2(data, capsys):
    root, _ = data
    cfg = _config_file(root, "ToxicChat")
    assert _eval(root, capsys, "--config", cfg) == (
        2, ["guard-jax eval: --config needs --checkpoint DIR or --hf-dir DIR"])
    assert _eval(root, capsys, "--recipe", "guardreasoner_vl") == (
        2, ["guard-jax eval: give exactly one of --predictions or --config"])


def test_unscorable_later_benchmark_stops_before_any_output(data, tmp_path):
    """A later benchmark whose samples hold no gold label for its task (nothing to score) is
    refused with the inputs; it used to be refused only after every earlier benchmark (and
    itself) had been generated and written."""
    root, tok = data
    (tmp_path / "u.jsonl").write_text(json.dumps({"id": "u0", "prompt": "hi"}) + "\n")
    build_dataset("generic_jsonl", tmp_path / "u.jsonl", tmp_path / "Unlabelled", split="test",
                  progress=False, echo=False)
    run = eval_base_config("guardreasoner_vl", preset="tiny_qwen")
    run.eval.recipe_options = "mode='sft',use_sample_instruction=False"
    run.eval.data_root = str(root / "data")
    run.eval.benchmarks = (dict(name="ToxicChat", path="ToxicChat"),
                           dict(name="Unlabelled", path=str(tmp_path / "Unlabelled")))
    calls = []

    def generate_fn(batch):
        calls.append(batch)
        return ["Request: harmful"] * len(batch.sample_ids)
    with pytest.raises(InputError, match=r"^1 missing or unusable input\(s\): "
                       r"eval.benchmarks\[1\] \(Unlabelled\) path .*Unlabelled split 'test': "
                       r"none of its 1 samples has a gold label for the prompt task"):
        evaluate_config(run, generate_fn=generate_fn, tokenizer=load_tokenizer(tok),
                        out_dir=tmp_path / "out", progress=False)
    assert calls == [] and not (tmp_path / "out").exists()


def test_mesh_is_checked_with_the_inputs(data, capsys):
    """The config's mesh against the devices present (8 here) and eval.batch_size against its
    data x fsdp devices, in the one line of input problems before anything loads; a mesh that
    does not fit used to escape as a ValueError traceback after the tokenizer loaded."""
    root, _ = data
    cfg = _config_file(root, "ToxicChat", "Missing")
    rc, err = _eval(root, capsys, "--config", cfg, "--hf-dir", root / "hf",
                    "--config.mesh.data=16", "--config.mesh.fsdp=1")
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(
        "guard-jax eval: 2 missing or unusable input(s): config keys mesh.*: mesh data=16 "
        "fsdp=1 tensor=1 needs 16 devices but 8 are available of this job; "
        "eval.benchmarks[1] (Missing) path "), err[0]
    rc, err = _eval(root, capsys, "--config", cfg, "--hf-dir", root / "hf",
                    "--config.eval.batch_size=6")
    assert rc == 2 and err[0].startswith(
        "guard-jax eval: 2 missing or unusable input(s): eval.batch_size 6 is not a multiple "
        "of the 8 data x fsdp devices the batch is split over; eval.benchmarks[1] (Missing)")


def test_rollout_engine_is_checked(data, capsys):
    root, _ = data
    cfg = _config_file(root, "ToxicChat")
    rc, err = _eval(root, capsys, "--config", cfg, "--hf-dir", root / "hf",
                    "--config.eval.rollout_engine=paged")
    assert rc == 2 and err == [
        "guard-jax eval: invalid eval config: eval.rollout_engine='paged'; choose one of "
        "('static', 'continuous')"], err
    rc, err = _eval(root, capsys, "--config", cfg, "--hf-dir", root / "hf",
                    "--config.eval.rollout_slots=4")
    assert rc == 2 and err == [
        "guard-jax eval: invalid eval config: eval.rollout_slots=4 must be >= 0, and 0 with "
        "rollout_engine='static' (which has no slot pool)"], err
