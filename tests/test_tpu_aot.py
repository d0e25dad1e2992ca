"""Every program of the stack compiles for real TPU topologies with the TPU compiler (libtpu)
on this CPU host, with attention_impl=auto resolving to the splash kernel; the planner's TPU
method reports the compiler's own memory analysis. Assertions on compilation and memory only."""

import jax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from guard_jax import aot, plan
from guard_jax.run_config import load_config

AUTO = ["--config.model.attention_impl=auto"]


def _devices(target, slices=1):
    return aot.tpu_devices(aot.parse_tpu_target(target, slices))


def _by_name(results):
    return {r.name: r for r in results}


def test_targets_and_topologies():
    assert aot.parse_tpu_target("v5e-4").topology() == "v5e:2x2"
    assert aot.parse_tpu_target("v5e-16").topology() == "v5e:4x4"
    assert aot.parse_tpu_target("v6e-8").topology() == "v6e:2x4"
    assert aot.parse_tpu_target("v5p-8").topology() == "v5p:2x2x1"  # 8 TensorCores, 4 chips
    assert aot.parse_tpu_target("v5p-64").topology() == "v5p:2x4x4"
    assert aot.parse_tpu_target("tpu7x-8").topology() == "tpu7x:2x2x1"  # 8 devices, 4 chips
    for name in ("v5e-16", "v6e-8", "v5p-64", "tpu7x-8"):  # the Cloud TPU name round-trips
        assert aot.parse_tpu_target(name).name == name
    with pytest.raises(ValueError, match="TensorCores"):
        aot.parse_tpu_target("v5p-5")
    with pytest.raises(ValueError, match="power-of-two"):
        aot.parse_tpu_target("v5e-12")
    assert len(_devices("tpu7x-8")) == 8 and len(_devices("v5p-8")) == 4
    assert len(_devices("v5e-4", slices=2)) == 8


def test_sft_step_and_lora_compile_for_v5e_with_splash():
    """v5e 2x2, mesh data 2 x tensor 2: the reproduction of the 'Mosaic kernels cannot be
    automatically partitioned' failure, now compiling with the kernel in the HLO."""
    devices = _devices("v5e-4")
    run = load_config("configs/tiny_sft.py", ["--config.mesh.data=2", "--config.mesh.fsdp=1",
                                              "--config.mesh.tensor=2"])
    shape, results = aot.compile_run(run, devices)
    assert shape == (2, 1, 2)
    (step,) = results
    assert step.custom_calls > 0, "the splash kernel is not in the compiled step"
    assert step.peak > step.argument > 0 and step.flops > 0
    assert step.collectives["all-reduce"] > 0
    lora = load_config("configs/tiny_sft.py", ["--config.lora.rank=4", "--config.mesh.data=2",
                                               "--config.mesh.fsdp=1", "--config.mesh.tensor=2"])
    (lstep,) = aot.compile_run(lora, devices)[1]
    assert lstep.name == "sft train step (LoRA)" and lstep.custom_calls > 0
    assert lstep.argument < step.argument  # adapters' optimizer state only


def test_grpo_programs_compile_for_v5p_megacore():
    """v5p 2x2x1 (megacore), mesh fsdp 2 x tensor 2: rollout prefill (G samples, images) and
    decode, the log-prob forward and the update step."""
    run = load_config("configs/tiny_grpo.py", AUTO + [
        "--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"])
    shape, results = aot.compile_run(run, _devices("v5p-8"))
    assert shape == (1, 2, 2)
    r = _by_name(results)
    assert set(r) == {"rollout prefill", "rollout decode", "old/ref log-probs",
                      "grpo update step"}
    for name in ("rollout prefill", "old/ref log-probs", "grpo update step"):
        assert r[name].custom_calls > 0, f"{name}: no splash kernel"
    assert r["rollout decode"].custom_calls == 0  # one query a row: XLA (docs/tpu.md)
    assert all(x.peak > 0 for x in results)


def test_eval_generation_and_multislice_compile():
    """Two v5e 2x2 slices over DCN (8 devices, mesh 2 x 2 x 2): the SFT step, and the eval
    generation's greedy prefill and decode."""
    run = load_config("configs/tiny_sft.py", [
        "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
        "--config.eval.batch_size=4", "--config.eval.max_prompt_len=256",
        "--config.eval.max_new_tokens=16"])
    shape, results = aot.compile_run(run, _devices("v5e-4", slices=2), phases=["sft", "eval"])
    assert shape == (2, 2, 2)
    r = _by_name(results)
    assert r["sft train step"].custom_calls > 0
    assert r["eval generation prefill"].custom_calls > 0
    assert r["eval generation decode"].peak > 0


def test_planner_tpu_method_equals_direct_memory_analysis(capsys):
    """`plan`'s TPU compiler figures are the compiler's memory_analysis() of the same step."""
    from guard_jax.models.qwen2_5_vl import abstract_model
    from guard_jax.run_config import model_config
    from guard_jax.sharding import make_mesh
    from guard_jax.training.checkpoint import abstract_train_state
    from guard_jax.training.optim import run_optimizer
    from guard_jax.training.train_step import build_step

    overrides = ["--config.mesh.data=2", "--config.mesh.fsdp=1", "--config.mesh.tensor=2"]
    run = load_config("configs/tiny_sft.py", overrides)
    _, (ours,) = aot.compile_run(run, _devices("v5e-4"))
    mc = model_config(run)
    mesh = make_mesh((2, 1, 2), devices=_devices("v5e-4"))
    graphdef, params = nnx.split(abstract_model(mc), nnx.Param)
    tx, _, _ = run_optimizer(run, params)
    state = abstract_train_state(mc, tx, mesh)
    batch = plan.abstract_batch(mc, run.train.micro_batch, run.data.seq_len,
                                run.data.images_per_sample, run.data.max_pixels)
    from guard_jax.sharding import batch_shardings
    b_sh = batch_shardings(batch, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=b_sh[k]) for k, v in batch.items()}
    sh = jax.tree.map(lambda x: x.sharding, state)
    ma = jax.jit(build_step(graphdef, tx, mesh=mesh), in_shardings=(sh, b_sh),
                 out_shardings=(sh, NamedSharding(mesh, P())), donate_argnums=0
                 ).lower(state, batch).compile().memory_analysis()
    direct = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
              - ma.alias_size_in_bytes)
    assert abs(ours.peak - direct) <= 0.02 * direct, (ours.peak, direct)
    assert abs(ours.argument - ma.argument_size_in_bytes) <= 0.02 * ma.argument_size_in_bytes

    from guard_jax.cli import main
    assert main(["plan", "--config", "configs/tiny_sft.py", "--target", "v5e-4"] + overrides) == 0
    out = capsys.readouterr().out
    assert "TPU compiler: v5e 2x2 (4 devices)" in out and "method: TPU compiler" in out
    assert "Pallas kernel calls" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("sft train step"))
    assert f"{ours.peak / plan.GIB:.2f}" in row.split()


def test_program_over_hbm_is_reported_as_not_fitting():
    """The TPU compiler refuses a program whose temporaries exceed HBM; the plan reports it
    (with the temporaries asked for) instead of failing."""
    class Refused:
        def compile(self):
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
                "HLO temporaries (169.64G) exceeds available HBM (95.74G).")

    r = aot._analyse("sft train step", Refused(), 0.0)
    assert r.error and abs(r.temp / plan.GIB - 169.64) < 0.01 and r.peak == r.temp
    target = aot.parse_tpu_target("v5p-16")
    text = plan.format_tpu([r], target, (1, 8, 1), None)
    assert "DOES NOT FIT (the compiler needs 169.64 GiB" in text and "not compiled" in text


def test_plan_without_libtpu_says_how_and_falls_back(monkeypatch, capsys):
    monkeypatch.setattr(aot, "libtpu_available", lambda: False)
    from guard_jax.cli import main
    assert main(["plan", "--config", "configs/tiny_sft.py", "--target", "v5e-4"]) == 0
    out = capsys.readouterr().out
    assert "pip install -e '.[tpu-aot]'" in out and "falling back to the arithmetic plan" in out
    assert "method: arithmetic." in out and "TPU compiler:" not in out


def test_plan_on_a_host_without_tpu_prints_no_libtpu_start_up_errors():
    """libtpu's start-up on a host without TPU chips printed 'could not determine TPU
    accelerator type' and an INVALID_ARGUMENT trace for TPU_WORKER_HOSTNAMES; plan now gives
    it the target's slice, which does not change what is compiled."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    env.pop("JAX_PLATFORMS", None)
    p = subprocess.run([sys.executable, "-m", "guard_jax.cli", "plan", "--config",
                        "configs/tiny_sft.py", "--target", "v5e-4"], capture_output=True,
                       text=True, env=env, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "TPU compiler: v5e 2x2 (4 devices)" in p.stdout
    for noise in ("could not determine", "INVALID_ARGUMENT", "Source Location Trace"):
        assert noise not in p.stderr, p.stderr[-2000:]


def test_commands_on_a_host_without_tpu_print_no_libtpu_start_up_errors():
    """Every command starts JAX's backends; with libtpu installed and no TPU chips that used to
    print the same start-up errors (`guard-jax bench rollout` did). The CLI's runtime set-up
    now quiets them, and JAX still picks the CPU."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    env.pop("JAX_PLATFORMS", None)
    code = ("from guard_jax.cli import _setup_runtime; _setup_runtime(); import jax; "
            "print(jax.default_backend())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.split() == ["cpu"], p.stderr[-2000:]
    for noise in ("could not determine", "INVALID_ARGUMENT", "Source Location Trace"):
        assert noise not in p.stderr, p.stderr[-2000:]
