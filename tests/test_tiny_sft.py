"""configs/tiny_sft.py runs as its docstring says, on a single CPU device, on the demo's data,
tokenizer and initial model (whose samples are the longest a user meets with this config)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import guard_jax
from data_pipeline import synthetic
from data_pipeline.local_files import load_tokenizer
from guard_jax.demo import demo_model_config, make_task

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_sft.py"


def docstring_command() -> list[str]:
    """The config docstring's first `guard-jax train` command (continuation lines joined)."""
    text = CONFIG.read_text()
    m = re.search(r"^ *(guard-jax train (?:.*\\\n)*.*)$", text, re.M)
    assert m, "no guard-jax train command in the docstring"
    return shlex.split(m.group(1).replace("\\\n", " "))


def test_docstring_command_runs_on_one_cpu_device(tmp_path):
    demo = tmp_path / "demo"
    paths = make_task(str(demo), seed=0, n_train=8, n_test=1)
    tok_dir = synthetic.train_tokenizer(synthetic.tokenizer_corpus(paths["train_samples"]),
                                        str(demo / "tokenizer"), vocab_size=1024)
    config = demo_model_config(load_tokenizer(tok_dir))
    guard_jax.save_hf(guard_jax.init_model(config, seed=0), demo / "init_hf",
                      assets_from=str(tok_dir), progress=False)

    argv = docstring_command()
    assert argv[:2] == ["guard-jax", "train"] and "--config.train.steps=20" in argv
    work = tmp_path / "run"
    argv = [a.replace("DEMO", str(demo)).replace("/tmp/tiny_sft", str(work))
              .replace("configs/tiny_sft.py", str(CONFIG))
              .replace("--config.train.steps=20", "--config.train.steps=2") for a in argv]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    proc = subprocess.run([sys.executable, "-m", "guard_jax.cli", *argv[1:]], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "loss" in r][-1]
    assert last["step"] == 2 and 0 < last["loss"] < 100, last
