"""Builds are quiet: `guard-jax data build` and the demo's data stage print their own summary
and nothing from tfds (no download banner) or absl (no custom-config warning); reading the
build back is silent too. Run in a fresh process, so every print and log record reaches the
real stdout and stderr with Python's and absl's default logging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from data_pipeline import synthetic

NOISE = ("Downloading and preparing", "downloaded and prepared", "Using custom data configuration",
         "WARNING", "absl")

SCRIPT = textwrap.dedent("""
    import sys
    from guard_jax.cli import main
    from guard_jax.demo import make_task
    from data_pipeline.build import open_source
    out, source, options = sys.argv[1:4]
    rc = main(["data", "build", "generic_jsonl", "--source", source, "--out", out + "/cli",
               "--no-progress"] + [f"--option={o}" for o in options.split(";")])
    assert rc == 0, rc
    paths = make_task(out + "/demo", seed=0, n_train=3, n_test=1)
    print("samples read back:", len(open_source(out + "/cli")), len(open_source(paths["train"])))
""")


def test_data_build_and_demo_data_print_no_tfds_or_absl_noise(tmp_path):
    samples = synthetic.make_samples(3, 0, prefix="q")
    source = synthetic.write_split(tmp_path / "raw", samples, seed=0, name="train")
    options = ";".join(f"{k}={json.dumps(v)}" for k, v in
                       synthetic.DEMO_CONVERTER_OPTIONS.items())
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out"), str(source),
                           options], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "samples read back: 3 3" in proc.stdout
    assert "read 3, written 3, skipped 0" in proc.stdout  # the build's own summary stays
    noise = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noise, "\n".join(noise)
