"""Resuming safely: a damaged newest checkpoint is moved aside and its step saved again (also
with two processes), saving an existing step is an error, and a resume compares the saved run
config with the new one (refused keys: exit 2 naming them; allowed keys: one warning)."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from guard_jax.errors import InputError
from guard_jax.run_config import base_config, load_config
from guard_jax.training import resume
from guard_jax.training.checkpoint import CheckpointExistsError, Checkpointer

ROOT = Path(__file__).resolve().parents[1]
SFT = str(ROOT / "configs" / "tiny_sft.py")
GRPO = str(ROOT / "configs" / "tiny_grpo.py")


def _tiny_state(value: float = 1.0):
    import jax.numpy as jnp
    return {"params": {"w": jnp.full((4, 3), value, jnp.float32)},
            "step": jnp.asarray(0, jnp.int32)}


def _damage(step_dir: Path) -> None:
    """Drops a step's array data, keeping its metadata (a finalised step damaged later)."""
    for p in (step_dir / "state").iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        elif p.name != "_METADATA":
            p.unlink()


def _logged(caplog, level=logging.WARNING) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= level)


# ------------------------------------------------------------------ item 3: damaged steps
def test_damaged_newest_step_is_moved_aside_and_can_be_saved_again(tmp_path, caplog):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(2, _tiny_state(2.0))
        ck.save(4, _tiny_state(4.0))
    _damage(tmp_path / "4")
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path, async_save=False) as ck:
        state, meta = ck.restore(_tiny_state())
        assert meta["step"] == 2 and float(state["params"]["w"][0, 0]) == 2.0
        moved = list((tmp_path / "corrupt").iterdir())
        assert [p.name.split("-")[0] for p in moved] == ["4"], moved
        assert (moved[0] / "state" / "_METADATA").is_file()  # kept, not deleted
        assert ck.all_steps() == [2]
        log = _logged(caplog)
        assert str(tmp_path / "4") in log and str(moved[0]) in log
        ck.save(4, _tiny_state(5.0))  # the step is free again
    with Checkpointer(tmp_path, async_save=False) as ck:
        state, meta = ck.restore(_tiny_state())
    assert meta["step"] == 4 and float(state["params"]["w"][0, 0]) == 5.0


def test_saving_a_step_that_exists_is_an_error(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(3, _tiny_state(1.0))
        with pytest.raises(CheckpointExistsError, match=r"step 3 already exists.*not overwriting"):
            ck.save(3, _tiny_state(2.0))
    assert issubclass(CheckpointExistsError, InputError)  # guard-jax exits 2
    with Checkpointer(tmp_path, async_save=False) as ck:
        state, _ = ck.restore(_tiny_state())
    assert float(state["params"]["w"][0, 0]) == 1.0  # the first save is untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_on_the_damaged_step(tmp_path):
    """Both processes restore step 2 and the damaged step 4 is moved exactly once."""
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(2, _tiny_state(2.0))
        ck.save(4, _tiny_state(4.0))
    _damage(tmp_path / "4")
    port = _free_port()
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_"))}
        env.update(GUARD_JAX_COORDINATOR=f"127.0.0.1:{port}", GUARD_JAX_NUM_PROCESSES="2",
                   GUARD_JAX_PROCESS_ID=str(i), GUARD_JAX_INIT_TIMEOUT="90",
                   JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"step": 2, "w": 2.0}
    assert [p.name.split("-")[0] for p in (tmp_path / "corrupt").iterdir()] == ["4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "corrupt"]


def _restore_worker(workdir: str) -> None:
    """One process of test_two_processes_agree_on_the_damaged_step."""
    import jax

    from guard_jax import distributed
    distributed.initialize(timeout_s=90)
    with Checkpointer(workdir, async_save=False) as ck:
        state, meta = ck.restore(_tiny_state())
        steps = ck.all_steps()
    assert steps == [2], steps
    print(json.dumps({"step": meta["step"], "w": float(state["params"]["w"][0, 0])}),
          flush=True)
    jax.distributed.shutdown()


# ------------------------------------------------------------------ item 8: config changes
def test_every_config_key_has_exactly_one_resume_rule():
    keys = resume.flat_keys(json.loads(base_config().to_json()))
    rules = {k: resume.rule(k) for k in keys}  # raises for a key in no group
    for _, patterns in resume.RESUME_RULES:  # no stale or mistyped pattern
        for p in patterns:
            assert any(resume.fnmatch.fnmatchcase(k, p) for k in keys), p
    assert rules["optim.lr"] == rules["train.steps"] == rules["mesh.fsdp"] == resume.ALLOWED
    assert rules["data.path"] == rules["train.seed"] == resume.REFUSED_ONCE_TRAINED
    assert rules["lora.rank"] == rules["model.preset"] == resume.REFUSED


def _fake_checkpoint(workdir: Path, run, step: int) -> None:
    """A checkpoint recording `run` as its config (the arrays do not matter here)."""
    run.unlock()
    run.workdir = str(workdir)
    with Checkpointer(workdir, async_save=False, config=json.loads(run.to_json())) as ck:
        ck.save(step, _tiny_state())


def test_grpo_resume_refuses_other_data_and_names_every_refused_key(tmp_path):
    from guard_jax.training.grpo import train
    saved = load_config(GRPO, ["--config.data.path=/data/a"])
    _fake_checkpoint(tmp_path, saved, step=2)
    run = load_config(GRPO, ["--config.data.path=/data/b", "--config.train.seed=5",
                             "--config.optim.lr=0.5"])
    with pytest.raises(InputError) as info:
        train(run, str(tmp_path))  # refused before any model or data is built
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "2") in msg
    assert 'data.path ("/data/a" -> "/data/b")' in msg and "train.seed (0 -> 5)" in msg
    assert "optim.lr" not in msg  # allowed: not part of the refusal
    assert "new --workdir" in msg and "--allow-config-change" in msg


def test_allowed_changes_and_the_escape_hatch_warn_with_each_key(tmp_path, caplog):
    saved = load_config(SFT, ["--config.data.path=/data/a"])
    _fake_checkpoint(tmp_path, saved, step=4)
    run = load_config(SFT, ["--config.data.path=/data/b", "--config.optim.lr=0.5",
                            "--config.mesh.data=2"])
    run.workdir = str(tmp_path)
    with pytest.raises(InputError, match=r"data\.path"):
        resume.check_config(run, tmp_path)
    with caplog.at_level(logging.WARNING):
        resume.check_config(run, tmp_path, allow=["data.path"])
    log = _logged(caplog)
    assert "optim.lr (0.001 -> 0.5)" in log and "mesh.data (1 -> 2)" in log
    assert 'data.path ("/data/a" -> "/data/b")' in log
    with pytest.raises(InputError, match="optim.lrr: not a config key"):
        resume.check_config(run, tmp_path, allow=["optim.lrr"])


def test_step_0_import_takes_new_data_but_not_another_model(tmp_path):
    saved = load_config(SFT, ["--config.model.hf_dir=" + str(tmp_path)])  # as `import` writes
    _fake_checkpoint(tmp_path / "ck", saved, step=0)
    run = load_config(SFT, ["--config.model.hf_dir=" + str(tmp_path / "ck" / ".."),
                            "--config.data.path=/data/b", "--config.train.seed=3"])
    run.workdir = str(tmp_path / "ck")
    resume.check_config(run, tmp_path / "ck")  # same directory, and nothing trained yet
    other = load_config(SFT, ["--config.model.preset=tiny_qwen"])
    other.workdir = run.workdir
    with pytest.raises(InputError) as info:
        resume.check_config(other, tmp_path / "ck")
    assert "model.hf_dir (" in str(info.value) and "model.preset (" in str(info.value)
    assert "data.path" not in str(info.value)


def test_train_cli_refusal_is_one_line_and_exit_2(tmp_path, capsys):
    from guard_jax.cli import main as cli
    _fake_checkpoint(tmp_path, load_config(SFT, ["--config.data.path=/data/a"]), step=2)
    code = cli(["train", "--config", SFT, "--workdir", str(tmp_path),
                "--config.data.path=/data/b"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("guard-jax train: cannot resume from checkpoint") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]  # nothing written


# ------------------------------------------------------------------ end to end (SFT)
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two small text datasets and a local Qwen tokenizer."""
    from data_pipeline.build import build_dataset
    from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir
    root = tmp_path_factory.mktemp("resume_data")
    out = {}
    for name in ("a", "b"):
        rows = [json.dumps({"uid": f"{name}{i}", "question": f"{name} request {i}?",
                            "verdict": "bad" if i % 2 else "ok",
                            "target": "<think>x</think><result>Request: "
                                      f"{'harmful' if i % 2 else 'unharmful'}</result>"})
                for i in range(6)]
        (root / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
        build_dataset("generic_jsonl", root / f"{name}.jsonl", root / name, progress=False,
                      echo=False, options={"user_text_field": "question",
                                           "prompt_label_field": "verdict", "id_field": "uid",
                                           "target_field": "target",
                                           "label_words": {"bad": "harmful", "ok": "unharmful"}})
        out[name] = str(root / name)
    out["tok"] = str(write_qwen2_5_vl_tokenizer_dir(root / "tok"))
    return out


def _sft(data, workdir, steps, **extra):
    from guard_jax.training.sft import train
    o = {"model.preset": "tiny_qwen", "model.dtype": "float32", "data.path": data["a"],
         "data.tokenizer_dir": data["tok"], "data.seq_len": 256, "train.global_batch": 2,
         "train.micro_batch": 2, "train.steps": steps, "train.log_every": 1,
         "train.checkpoint_every": 1, "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1, **extra}
    return train(load_config(SFT, [f"--config.{k}={v}" for k, v in o.items()]), str(workdir))


@pytest.fixture(scope="module")
def two_steps(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("two_steps")
    assert _sft(data, work, steps=2)["step"] == 2
    return work


def test_sft_rerun_after_a_damaged_final_step_saves_it_and_export_reads_it(
        data, two_steps, tmp_path, caplog):
    from guard_jax.training.hf_convert import export_checkpoint
    work = tmp_path / "run"
    shutil.copytree(two_steps, work)
    _damage(work / "2")
    with caplog.at_level(logging.WARNING):
        assert _sft(data, work, steps=2)["step"] == 2  # resumes from 1, redoes step 2
    assert "moved " + str(work / "2") in _logged(caplog)
    assert sorted(p.name for p in work.iterdir() if p.name.isdigit()) == ["1", "2"]
    assert [p.name.split("-")[0] for p in (work / "corrupt").iterdir()] == ["2"]
    out = export_checkpoint(work, tmp_path / "hf", progress=False)  # the newest step reads
    assert list(Path(out).glob("*.safetensors"))
    ref = _state_of(two_steps, 2)
    again = _state_of(work, 2)
    worst = max(float(np.abs(ref[k] - again[k]).max()) for k in ref)
    assert worst <= 1e-6, worst  # the redone step is the step that was lost


def _state_of(workdir, step) -> dict:
    import orbax.checkpoint as ocp
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, str(step), "state"))
    return {k: np.asarray(v) for k, v in state.items() if k.startswith("params.")}


def test_sft_resume_with_new_lr_warns_and_with_new_data_refuses(data, two_steps, tmp_path,
                                                                caplog):
    work = tmp_path / "run"
    shutil.copytree(two_steps, work)
    with pytest.raises(InputError, match=r"data\.path"):
        _sft(data, work, steps=3, **{"data.path": data["b"]})
    assert not (work / "3").exists()
    with caplog.at_level(logging.WARNING):
        assert _sft(data, work, steps=3, **{"optim.lr": 0.5})["step"] == 3
    log = _logged(caplog)
    assert "optim.lr (0.001 -> 0.5)" in log and "train.steps (2 -> 3)" in log
    assert "workdir (" in log  # a copied or moved workdir is a change too, an allowed one
    order = [json.loads(line) for line in open(work / "data_order.jsonl")]
    assert all(i.startswith("a") for rec in order for i in rec["ids"])


if __name__ == "__main__":
    _restore_worker(sys.argv[1])
