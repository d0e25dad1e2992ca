"""The command-line convention of every `guard-jax` command (docs/errors.md): a user error is one
line `guard-jax COMMAND: ...` naming the argument, file, record or field, exit 2; `--debug` or
GUARD_JAX_DEBUG=1 adds the traceback; any other exception is a bug and keeps its traceback and
exit 1; every flag has help text."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guard_jax import cli
from guard_jax.errors import EXIT_INPUT, InputError
from guard_jax.evaluation.parsers import CLASSIFIER_RECIPES, TASK_ALIASES
from guard_jax.run_config import load_config

ROOT = Path(__file__).resolve().parents[1]
SFT = str(ROOT / "configs" / "tiny_sft.py")
GRPO = str(ROOT / "configs" / "tiny_grpo.py")


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"guard-jax {command}: "), err
    assert "Traceback" not in err
    return err


# ---- one user error per command --------------------------------------------------------------
def _cases(tmp: Path):
    a_file = tmp / "a_file"
    a_file.write_text("x")
    bad_record = tmp / "outputs.jsonl"
    bad_record.write_text('{"prompt": "hi", "label": "weird", "predict": "Request: harmful"}\n')
    return {
        "demo": (["demo", "--workdir", str(a_file)], "--workdir"),
        "train": (["train", "--config", SFT, "--workdir", str(tmp / "w"),
                   "--config.train.micro_batch=0"], "train.micro_batch=0"),
        "export": (["export", "--checkpoint", str(tmp / "absent"), "--out", str(tmp / "hf")],
                   str(tmp / "absent")),
        "import": (["import", "--hf-dir", str(tmp), "--out", str(tmp / "ck"), "--config",
                    str(tmp / "absent.py")], "absent.py"),
        "bench": (["bench", "model", "--image-size", "30", "--skip-torch", "--skip-compile"],
                  "--image-size 30"),
        "data": (["data", "build", "generic_jsonl", "--source", str(tmp / "raw.jsonl"), "--out",
                  str(tmp / "d"), "--no-progress", "--option", "oops"], "--option"),
        "plan": (["plan", "--config", SFT, "--config.train.stepz=3"], "--config.train.stepz"),
        "eval": (["eval", "--predictions", str(bad_record), "--recipe", "guardreasoner",
                  "--task", "prompt"], "line 1 field 'label'"),
        "moderate": (["moderate", "--model", str(tmp / "absent"), "--recipe", "proguard",
                      "--prompt", "hi"], "--model"),
    }


def test_every_command_has_a_case(tmp_path):
    assert set(_cases(tmp_path)) == set(cli.COMMANDS)


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_user_error_is_one_line_and_exit_2(command, tmp_path, capsys):
    argv, names = _cases(tmp_path)[command]
    assert cli.main(argv) == EXIT_INPUT
    assert names in _one_line(capsys, command)
    assert not (tmp_path / "w").exists() and not (tmp_path / "d").exists()


def test_a_missing_config_file_is_a_user_error(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "nope.py"), "--workdir",
                     str(tmp_path / "w")]) == EXIT_INPUT
    assert "config file" in _one_line(capsys, "train")


def test_a_broken_config_file_is_a_user_error(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    return undefined_name\n")
    assert cli.main(["plan", "--config", str(broken)]) == EXIT_INPUT
    err = _one_line(capsys, "plan")
    assert str(broken) in err and "NameError" in err


def test_train_without_data_or_tokenizer_makes_no_workdir(tmp_path, capsys):
    base = ["train", "--config", SFT, "--workdir", str(tmp_path / "w")]
    assert cli.main(base) == EXIT_INPUT
    assert "data.path is empty" in _one_line(capsys, "train")
    assert cli.main([*base, f"--config.data.path={tmp_path}"]) == EXIT_INPUT
    assert "no tokenizer" in _one_line(capsys, "train")
    assert cli.main([*base, f"--config.data.path={tmp_path / 'nope'}",
                     f"--config.data.tokenizer_dir={tmp_path}"]) == EXIT_INPUT
    assert "data.path=" in _one_line(capsys, "train")
    assert not (tmp_path / "w").exists()


def test_predictions_that_do_not_exist(tmp_path, capsys):
    assert cli.main(["eval", "--predictions", str(tmp_path / "none.jsonl"), "--recipe",
                     "proguard", "--task", "prompt"]) == EXIT_INPUT
    assert "--predictions" in _one_line(capsys, "eval")


def test_missing_data_source_has_no_record_hint(tmp_path, capsys):
    assert cli.main(["data", "build", "generic_jsonl", "--source", str(tmp_path / "raw.jsonl"),
                     "--out", str(tmp_path / "d"), "--no-progress"]) == EXIT_INPUT
    err = _one_line(capsys, "data")
    assert "missing_source" in err and "--on-error skip" not in err


def test_plan_mesh_that_does_not_fit_the_target(capsys):
    assert cli.main(["plan", "--config", SFT, "--target", "h100x8",
                     "--config.mesh.data=3"]) == EXIT_INPUT
    assert "mesh.*" in _one_line(capsys, "plan")


def test_bad_flags_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--config", SFT])
    assert info.value.code == EXIT_INPUT
    assert "--workdir" in _one_line(capsys, "train")
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--checkpoint", "a", "--out", "b", "--config.train.steps=3"])
    assert info.value.code == EXIT_INPUT
    assert "--config.train.steps=3" in _one_line(capsys, "export")


# ---- config errors name the key ---------------------------------------------------------------
@pytest.mark.parametrize("override, names", [
    ("train.micro_batch=0", "train.micro_batch=0 must be >= 1"),
    ("train.global_batch=0", "train.global_batch=0 must be >= 1"),
    ("train.global_batch=6", "train.global_batch 6 is not a multiple of train.micro_batch"),
    ("train.log_every=0", "train.log_every"),
    ("train.stepz=3", "--config.train.stepz"),
    ("trian.steps=3", "unknown config section 'trian'"),
    ("train.steps=three", "--config.train.steps='three': expected a int"),
    ("train.steps", "must look like --config.section.key=value"),
    ("grpo.num_generations=0", "grpo.num_generations=0 must be >= 1"),
    ("grpo.rollout_chunk_prompts=0", "grpo.rollout_chunk_prompts=0"),
    ("mesh.data=0", "mesh.data=0"),
    ("optim.freeze=(", "optim.freeze='('"),
    ("optim.schedule=cosin", "optim.schedule='cosin'"),
    ("data.buckets=9999999", "data.buckets='9999999' exceed data.seq_len"),
    ("data.on_error=ignore", "data.on_error='ignore'"),
])
def test_config_errors_are_input_errors_naming_the_key(override, names):
    for config in (SFT, GRPO):
        with pytest.raises(InputError) as info:
            load_config(config, [f"--config.{override}"])
        assert names in str(info.value) and "\n" not in str(info.value)
        if str(info.value).startswith("invalid config"):
            assert config in str(info.value)


def test_unknown_key_is_still_a_key_error():
    with pytest.raises(KeyError) as info:
        load_config(SFT, ["--config.train.stepz=3"])
    assert str(info.value).startswith("unknown config key")  # not KeyError's quoted repr


# ---- --debug ----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["global", "after", "env"])
def test_debug_shows_the_traceback(how, monkeypatch, capsys):
    argv = ["plan", "--config", SFT, "--config.train.micro_batch=0"]
    if how == "global":
        argv = ["--debug", *argv]
    elif how == "after":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("GUARD_JAX_DEBUG", "1")
    assert cli.main(argv) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("Traceback")
    assert any("run_config.py" in line for line in err)
    assert err[-1].startswith("guard-jax plan: invalid config")


def test_no_traceback_without_debug(monkeypatch, capsys):
    monkeypatch.setenv("GUARD_JAX_DEBUG", "0")
    assert cli.main(["plan", "--config", SFT, "--config.train.micro_batch=0"]) == EXIT_INPUT
    _one_line(capsys, "plan")


# ---- internal errors --------------------------------------------------------------------------
def test_internal_error_is_not_turned_into_a_user_error(monkeypatch):
    import guard_jax.plan

    def bug(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(guard_jax.plan, "main", bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["plan", "--config", SFT])


def test_internal_error_exits_1_with_the_traceback():
    script = textwrap.dedent(f"""
        import sys
        import guard_jax.plan
        from guard_jax import cli

        def bug(args):
            raise RuntimeError("a bug, not bad input")

        guard_jax.plan.main = bug
        sys.exit(cli.main(["plan", "--config", {SFT!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr


# ---- help -------------------------------------------------------------------------------------
def _actions(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_flag_has_help():
    seen, missing = 0, []
    for path, action in _actions(cli.build_parser(), "guard-jax"):
        seen += 1
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert seen > 150 and not missing, missing


def test_eval_help_explains_fields_recipes_and_task_aliases(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["eval", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--field-* flags name the keys" in out and "dotted name" in out
    for recipe in CLASSIFIER_RECIPES:
        assert recipe in out
    for task in ("prompt", "response", "refusal"):
        aliases = [a for a, t in TASK_ALIASES.items() if t == task]
        assert f"{task}: {', '.join(aliases)}" in out


def test_trainer_side_config_errors_are_input_errors():
    """Errors the trainers find in a config (also on a resume, where train's pre-check does not
    run) are one-line user errors, not tracebacks."""
    from guard_jax.errors import InputError
    from guard_jax.run_config import base_config
    from guard_jax.training.grpo_rewards import parse_knobs
    from guard_jax.training.lora import from_run
    from guard_jax.training.optim import learning_rate_schedule
    c = base_config()
    c.lora.rank, c.optim.freeze = 4, "vision"
    with pytest.raises(InputError, match="lora.rank > 0 and optim.freeze"):
        from_run(c)
    with pytest.raises(InputError, match="warmup_steps 20 exceeds the 10 steps"):
        learning_rate_schedule(1e-3, 10, 20)
    with pytest.raises(InputError, match="grpo.reward_knobs: 'beta' is not key=value"):
        parse_knobs("mode=paper,beta")


def test_import_into_an_existing_checkpoint_is_refused_before_loading(tmp_path, capsys):
    """No model is loaded (the --hf-dir here is empty): the refusal comes first."""
    (tmp_path / "ck" / "0").mkdir(parents=True)
    (tmp_path / "hf").mkdir()
    rc = cli.main(["import", "--hf-dir", str(tmp_path / "hf"), "--out", str(tmp_path / "ck")])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_INPUT and len(err.splitlines()) == 1
    assert "already holds checkpoint steps [0]" in err
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["0"]
