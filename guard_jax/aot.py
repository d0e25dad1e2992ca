"""Ahead-of-time compilation of a run's programs for a TPU topology, on a host without a TPU.

With libtpu installed (`pip install -e .[tpu-aot]`), `jax.experimental.topologies` describes
the devices of any TPU slice; a mesh built from them lets `jax.jit(...).lower(abstract
inputs).compile()` run the real TPU compiler here. Every program a run jits is compiled this
way from its config, allocating nothing:

- SFT: the train step (LoRA when the config trains adapters);
- GRPO: the update step, the old/reference log-prob forward, the rollout's prefill and decode
  (num_samples = G, images);
- eval: the greedy prefill and decode of `guard-jax eval`.

Each compiled program reports the TPU compiler's per-device memory (`memory_analysis()`), its
FLOPs and bytes accessed (`cost_analysis()`), the collectives in the compiled HLO, whether a
TPU custom call (a Pallas kernel: splash attention) is in it, and its compile time. See
docs/tpu.md.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

from guard_jax.errors import InputError

GIB = 1024**3

# Per JAX device: HBM (GiB), TensorCores the Cloud TPU name counts per device, devices per chip.
TPU_CHIPS = {
    "v5e": (16.0, 1, 1), "v6e": (32.0, 1, 1),
    "v5p": (95.0, 2, 1),  # megacore: one device of two TensorCores per chip
    "tpu7x": (96.0, 1, 2),  # two devices (TensorCores) per chip, 192 GiB per chip
}
_2D = ("v5e", "v6e")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


INSTALL_HINT = ("the TPU compiler needs libtpu on this host: pip install -e '.[tpu-aot]' "
                "(libtpu 0.0.42.*, the version jax[tpu]==0.10.2 pins); no TPU is needed")


@dataclasses.dataclass(frozen=True)
class TpuTarget:
    chip: str
    devices: int  # JAX devices per slice
    slices: int = 1

    @property
    def hbm_gib(self) -> float:
        return TPU_CHIPS[self.chip][0]

    @property
    def chips(self) -> int:
        return self.devices // TPU_CHIPS[self.chip][2]

    def topology(self) -> str:
        """The topology name libtpu takes, e.g. v5e:4x4 or v5p:2x4x4."""
        return f"{self.chip}:" + "x".join(map(str, _chip_grid(self.chip, self.chips)))

    @property
    def name(self) -> str:
        """The Cloud TPU name of one slice (v5e-16, v5p-64, ...), as `parse_tpu_target` reads."""
        return f"{self.chip}-{self.devices * TPU_CHIPS[self.chip][1]}"

    def __str__(self):
        s = f"{self.chip} {self.topology().split(':')[1]} ({self.devices} devices)"
        return s + (f" x {self.slices} slices" if self.slices > 1 else "")


def _chip_grid(chip: str, chips: int) -> tuple[int, ...]:
    """Chip grid of a slice: 2-D for v5e/v6e (2x2, 2x4, 4x4, ...), 3-D otherwise (2x2x1,
    2x2x2, 2x2x4, 2x4x4, 4x4x4, ...: the smallest axis doubles, the last of equals first)."""
    if chips < 1 or chips & (chips - 1):
        raise InputError(f"{chip}: {chips} chips; TPU slices have a power-of-two chip count")
    if chip in _2D:
        a = 2 ** (int(math.log2(chips)) // 2)
        return (a, chips // a)
    if chips < 4:
        raise InputError(f"{chip}: the smallest slice has 4 chips (2x2x1), not {chips}")
    dims = [2, 2, 1]
    while math.prod(dims) < chips:
        k = max(i for i in range(3) if dims[i] == min(dims))
        dims[k] *= 2
    return tuple(dims)


TARGET_RE = re.compile(r"(v5e|v6e|v5p|tpu7x)-(\d+)")


def parse_tpu_target(target: str, slices: int = 1) -> TpuTarget:
    """v5e-16 / v6e-8 (chips), v5p-64 (TensorCores: 2 per chip), tpu7x-8 (devices: 2 per
    chip), as Cloud TPU names slices."""
    m = TARGET_RE.fullmatch(target.lower())
    if not m:
        raise InputError(f"--target {target!r}: TPU targets look like v5e-16, v6e-8, v5p-64, "
                         "tpu7x-8")
    chip, n = m.group(1), int(m.group(2))
    per_device = TPU_CHIPS[chip][1]
    if n % per_device:
        raise InputError(f"{target}: {chip} counts TensorCores, {per_device} per device")
    if slices < 1:
        raise InputError(f"--slices {slices}: must be >= 1")
    t = TpuTarget(chip, n // per_device, slices)
    t.topology()  # validates the chip count
    return t


def tpu_devices(target: TpuTarget):
    """Device descriptions of the target's slices (no TPU needed; libtpu must be installed)."""
    if not libtpu_available():
        raise RuntimeError(INSTALL_HINT)
    import os
    # No chip is opened: several processes may compile at once (libtpu's lock file is for
    # processes sharing real TPU chips).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    quiet_libtpu(target.name)
    from jax.experimental import topologies
    grid = _chip_grid(target.chip, target.chips)
    bounds = (min(grid[0], 2), min(grid[1], 2), 1)  # hosts of up to 2x2 chips
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=target.topology(), chip_config_name="default",
        chips_per_host_bounds=bounds, num_slices=target.slices, wrap=(False, False, False))
    return desc.devices


def quiet_libtpu(accelerator: str = "v5p-8") -> None:
    """On a host with libtpu installed but no TPU chips, give libtpu's start-up the slice it
    reads from a TPU VM's metadata (the worker hostnames and accelerator type); without them it
    prints alarming but harmless errors whenever JAX starts its backends. They change neither
    what is compiled nor the backend JAX picks (the CPU, or a GPU). No-op elsewhere."""
    import importlib.util
    import os
    if importlib.util.find_spec("libtpu") is None or _host_has_tpu():
        return
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator)


def _host_has_tpu() -> bool:
    """Whether this host has TPU chips (JAX's own check; False where it cannot tell)."""
    try:
        from jax._src import hardware_utils
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001  (a private module: assume a real TPU host, change nothing)
        return True


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass
class Compiled:
    """What the TPU compiler says of one program (bytes per device)."""

    name: str
    argument: int
    output: int
    alias: int
    temp: int
    flops: float
    bytes_accessed: float
    collectives: dict[str, int]
    custom_calls: int  # Mosaic (Pallas) kernels in the compiled HLO
    compile_s: float
    error: str | None = None  # the compiler refused: the program needs more HBM than the chip

    @property
    def peak(self) -> int:
        return self.argument + self.output + self.temp - self.alias


def _analyse(name: str, lowered, t0: float) -> Compiled:
    import jax
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program whose buffers exceed the chip's HBM; report it as
        # not fitting, with the temporaries it asked for, instead of failing the whole plan.
        m = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not m:
            raise
        temp = int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024)
        return Compiled(name, 0, 0, 0, temp, 0.0, 0.0, {}, 0, time.perf_counter() - t0,
                        error=str(e).splitlines()[0][:300])
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    hlo = compiled.as_text()
    counts = {c: len(re.findall(rf"= [^=\n]*\b{c}(?:-start)?\(", hlo)) for c in COLLECTIVES}
    return Compiled(name, ma.argument_size_in_bytes, ma.output_size_in_bytes,
                    ma.alias_size_in_bytes, ma.temp_size_in_bytes,
                    float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                    counts, hlo.count("tpu_custom_call"), seconds)


def _compile(name, fn, *args) -> Compiled:
    t0 = time.perf_counter()
    return _analyse(name, fn.lower(*args), t0)


# ---------------------------------------------------------------------------- programs
def _abstract(tree, shardings):
    import jax
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _state(run, mc, mesh, *, total_steps=None, accumulation=None):
    """(graphdef, abstract state with shardings, tx, lora) of a run on `mesh`."""
    from flax import nnx

    from guard_jax.models.qwen2_5_vl import abstract_model
    from guard_jax.training.checkpoint import abstract_train_state
    from guard_jax.training.lora import from_run, lora_shapes
    from guard_jax.training.optim import make_optimizer, run_optimizer

    graphdef, params = nnx.split(abstract_model(mc), nnx.Param)
    if total_steps is None:
        tx, _, lora = run_optimizer(run, params)
    else:
        lora = from_run(run)
        tx, _ = make_optimizer(run.optim, total_steps=total_steps, accumulation=accumulation,
                               params=params if lora is None else lora_shapes(params, lora))
    return graphdef, abstract_train_state(mc, tx, mesh, lora=lora), tx, lora


def _batch(fields: dict, mesh, rules=None):
    import jax

    from guard_jax.sharding import TRAIN_RULES, batch_shardings
    sh = batch_shardings(fields, mesh, rules or TRAIN_RULES)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh[k]) for k, v in fields.items()}


def _prompts(mc, rows: int, length: int, run) -> dict:
    from guard_jax.plan import abstract_batch, video_budget
    from guard_jax.training.grpo import PROMPT_KEYS
    b = abstract_batch(mc, rows, length, run.data.images_per_sample, run.data.max_pixels,
                       **video_budget(run))
    return {k: v for k, v in b.items() if k in PROMPT_KEYS}


def sft_programs(run, mc, mesh) -> list[Compiled]:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from guard_jax.plan import abstract_batch, video_budget
    from guard_jax.training.train_step import build_step

    graphdef, state, tx, lora = _state(run, mc, mesh)
    batch = _batch(abstract_batch(mc, run.train.micro_batch, run.data.seq_len,
                                  run.data.images_per_sample, run.data.max_pixels,
                                  **video_budget(run)), mesh)
    sh = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(build_step(graphdef, tx, mesh=mesh, lora=lora),
                   in_shardings=(sh, {k: v.sharding for k, v in batch.items()}),
                   out_shardings=(sh, NamedSharding(mesh, P())), donate_argnums=0)
    name = "sft train step" + (" (LoRA)" if lora is not None else "")
    return [_compile(name, step, state, batch)]


def _sampler_programs(name, sampler, params, prompts, mesh) -> list[Compiled]:
    """The prefill and the decode loop of `sampler` over a batch of `prompts`."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from guard_jax.sharding import SAMPLE_RULES, param_shardings
    params = _abstract(params, param_shardings(params, mesh, SAMPLE_RULES))
    batch = _batch(prompts, mesh, SAMPLE_RULES)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=NamedSharding(mesh, P()))
    fns = sampler.functions(params, batch)
    if not isinstance(fns, tuple):  # one program, prefill and slot loop (sampling/continuous.py)
        rows = jax.ShapeDtypeStruct((batch["input_ids"].shape[0] * sampler.params.num_samples,),
                                    "int32", sharding=NamedSharding(mesh, P()))
        return [_compile(f"{name} continuous", fns, params, batch, rng, rows)]
    prefill, decode = fns
    t0 = time.perf_counter()
    lowered = prefill.lower(params, batch)
    out = [_analyse(f"{name} prefill", lowered, t0)]
    cache, logits = lowered.out_info  # ShapeDtypeStructs with the output shardings
    out.append(_compile(f"{name} decode", decode, params, cache, logits, rng))
    return out


def grpo_programs(run, mc, mesh) -> list[Compiled]:
    import jax
    import jax.numpy as jnp

    from guard_jax.training import grpo as G

    g = run.grpo
    rollouts = g.prompts_per_step * g.num_generations
    updates = g.num_epochs * rollouts // run.train.global_batch
    accum = run.train.global_batch // run.train.micro_batch
    graphdef, state, tx, lora = _state(run, mc, mesh, total_steps=run.train.steps * updates,
                                       accumulation=accum)
    sh = jax.tree.map(lambda x: x.sharding, state)
    sampler, _, logprobs, update = G._jitted(run, graphdef, tx, lora, mesh, sh)
    out = []
    # the rollout: prefill and decode of a chunk of prompts, G samples each, with the merged
    # parameters (LoRA folded in), which have the base parameters' shapes
    params = state["params"]
    out += _sampler_programs("rollout", sampler, params,
                             _prompts(mc, g.rollout_chunk_prompts, g.max_prompt_len, run), mesh)
    # one micro-batch of the log-prob forward and of the update
    micro, G_ = run.train.micro_batch, g.num_generations
    n_prompts = max(micro // G_, 1)
    n = g.max_new_tokens
    f32, i32 = jnp.float32, jnp.int32
    sds = jax.ShapeDtypeStruct
    fields = dict(_prompts(mc, n_prompts, g.max_prompt_len, run),
                  completion=sds((micro, n), i32), completion_mask=sds((micro, n), jnp.bool_))
    out.append(_compile("old/ref log-probs", logprobs, state["params"], _batch(fields, mesh)))
    fields.update(old_logp=sds((micro, n), f32), weights=sds((micro, n), f32),
                  advantages=sds((micro,), f32), eps_low=sds((), f32), eps_high=sds((), f32),
                  denom=sds((), f32))
    if g.kl_coef > 0:
        fields["ref_logp"] = sds((micro, n), f32)
    out.append(_compile("grpo update step", update, state, _batch(fields, mesh)))
    return out


def eval_programs(run, mc, mesh) -> list[Compiled]:
    from flax import nnx

    from guard_jax.models.qwen2_5_vl import abstract_model
    from guard_jax.sampling import Sampler, SamplingParams

    graphdef, params = nnx.split(abstract_model(mc), nnx.Param)
    e = run.eval
    sampler = Sampler(graphdef, SamplingParams(
        max_new_tokens=e.max_new_tokens, eos_token_ids=mc.generation_eos_ids,
        pad_token_id=mc.generation_pad_id, temperature=0.0), mesh=mesh)
    return _sampler_programs("eval generation", sampler, params,
                             _prompts(mc, e.batch_size, e.max_prompt_len, run), mesh)


PROGRAMS = {"sft": sft_programs, "grpo": grpo_programs, "eval": eval_programs}


def compile_run(run, devices, *, phases=None) -> tuple[tuple[int, int, int], list[Compiled]]:
    """Compiles every program of `run` (its trainer's, or `phases`) on a mesh over `devices`
    shaped by the run's mesh section. Returns (mesh shape, results)."""
    from guard_jax.run_config import model_config
    from guard_jax.sharding import MeshConfig, make_mesh

    import jax
    mc = model_config(run)
    shape = MeshConfig(run.mesh.data, run.mesh.fsdp, run.mesh.tensor).resolve(len(devices))
    mesh = make_mesh(shape, devices=devices)
    results = []
    # a TPU executable compiled without a TPU client cannot go through the compilation cache
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        for phase in phases or (run.trainer,):
            results += PROGRAMS[phase](run, mc, mesh)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    return shape, results


__all__ = ["Compiled", "TpuTarget", "compile_run", "libtpu_available", "parse_tpu_target",
           "quiet_libtpu",
           "tpu_devices", "INSTALL_HINT", "PROGRAMS"]
