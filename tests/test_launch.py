"""The launch scripts' --dry-run prints exactly the commands they would run."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = ["--", "guard-jax", "train", "--config", "configs/guardreasoner_vl_grpo_7b.py",
       "--workdir", "gs://bucket/run1"]


def dry(script, *args):
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", script), "--dry-run", *args],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_tpu_pod_dry_run():
    lines = dry("tpu_pod.sh", "--name", "g1", "--zone", "us-east5-a", "--accelerator", "v5p-32",
                "--create", "--project", "proj", *CMD)
    assert lines[0].startswith("gcloud compute tpus tpu-vm create g1 --zone us-east5-a "
                               "--project proj --accelerator-type v5p-32")
    assert lines[1].startswith("git archive")
    assert "scp" in lines[2] and "--worker=all" in lines[2]
    assert lines[3].startswith("gcloud compute tpus tpu-vm ssh g1") and "--worker=all" in lines[3]
    assert "GUARD_JAX_ACCEL=tpu" in lines[3]
    assert "guard-jax\\ train\\ --config\\ configs/guardreasoner_vl_grpo_7b.py" in lines[3]
    assert "scp g1:" in lines[4] and lines[4].rstrip().endswith("--worker=all")
    # without --create nothing is created
    assert not any("create" in ln for ln in dry("tpu_pod.sh", "--name", "g1", "--zone", "z",
                                                  *CMD))


def test_slurm_dry_run_prints_the_batch_script():
    text = "\n".join(dry("slurm.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition",
                         "gpu", *CMD))
    for want in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "GUARD_JAX_ACCEL=cuda12",
                 "srun --kill-on-bad-exit=1",
                 ".venv/bin/guard-jax train --config configs/guardreasoner_vl_grpo_7b.py"):
        assert want in text, want


def test_gpu_node_and_local_dry_runs():
    (line,) = dry("gpu_node.sh", "--gpus", "0,1", *CMD)
    assert "GUARD_JAX_ACCEL=cuda12" in line and "CUDA_VISIBLE_DEVICES=0\\,1" in line
    assert "launch/local.sh train --config configs/guardreasoner_vl_grpo_7b.py" in line
    out = dry("local.sh", "plan", "--config", "configs/tiny_sft.py")
    assert out[-1].endswith("guard-jax plan --config configs/tiny_sft.py ")


def test_missing_command_is_an_error():
    p = subprocess.run(["bash", os.path.join(ROOT, "launch", "slurm.sh"), "--nodes", "2"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "usage" in p.stderr


def test_pathways_dry_run_runs_the_same_cli_under_the_proxy():
    (line,) = dry("pathways.sh", "--cluster", "c1", "--workload", "w1", "--tpu-type", "v5p-32",
                  "--num-slices", "2", "--image", "gcr.io/p/img", "--project", "proj", *CMD)
    assert line.startswith("xpk workload create-pathways --cluster c1 --workload w1 "
                           "--tpu-type v5p-32 --num-slices 2 --docker-image gcr.io/p/img "
                           "--project proj --command ")
    assert ("JAX_PLATFORMS=proxy\\ JAX_BACKEND_TARGET=grpc://127.0.0.1:29000\\ "
            "ENABLE_PATHWAYS_PERSISTENCE=1\\ guard-jax\\ train\\ --config\\ "
            "configs/guardreasoner_vl_grpo_7b.py") in line
