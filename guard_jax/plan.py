"""`guard-jax plan --config X [--target v5p-32]`: per-device memory of a run, and whether it fits.

Three methods, always named in the output:
- TPU compiler (TPU targets, when libtpu is installed): every program of the run compiled for
  the target topology on this host (guard_jax/aot.py) and the compiler's memory analysis of
  each; this is what the TPU will allocate. Without libtpu the plan says how to get it.
- arithmetic: parameter, gradient and optimizer bytes from the parameter specs and the sharding
  rules (exact); activations from the configured remat policy (an estimate of what the
  backward pass keeps); the rollout's KV cache and sampling weights for GRPO.
- compiled (--compiled): the train step lowered from abstract shapes on fake CPU devices shaped
  like the target mesh, and XLA's memory analysis of it (arguments + temporaries + outputs -
  donated aliases). Parameters, gradients and optimizer are exact there too; activations are
  what XLA's CPU buffer assignment needs, which is close to, not equal to, a TPU's or GPU's.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re

from guard_jax.errors import InputError

GIB = 1024**3

# HBM per device (GiB) and TensorCores per device for the targets we plan for.
CHIPS = {
    "v5p": (95.0, 2), "v5e": (16.0, 1), "v6e": (32.0, 1), "v4": (32.0, 2),
    "tpu7x": (96.0, 1),
    "h100": (79.6, None), "h200": (140.4, None), "a100": (79.2, None),
}
GPUS = ("h100", "h200", "a100")
HEADROOM = 0.9  # leave 10% for the runtime, fragmentation and collectives buffers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a run config file (configs/*.py)")
    p.add_argument("--target", default="h100x8",
                   help="chip and size: v5p-64 (TensorCores, as Cloud TPU names it), v5e-16, "
                        "v6e-8, tpu7x-8 (devices), h100x8, h200x8, ... (default h100x8). TPU "
                        "targets are compiled with the real TPU compiler when libtpu is "
                        "installed (pip install -e '.[tpu-aot]'; no TPU needed). GPU targets "
                        "cannot be compiled for without a GPU: they get the arithmetic plan and, "
                        "with --compiled, XLA's CPU memory analysis")
    p.add_argument("--slices", type=int, default=1,
                   help="TPU slices joined over DCN (multi-slice); the mesh's data axis spans "
                        "them (default 1)")
    p.add_argument("--phases", default="",
                   help="TPU compiler: which programs, comma-separated from sft, grpo, eval "
                        "(default: the config's trainer)")
    p.add_argument("--compiled", action="store_true",
                   help="also lower the train step on fake CPU devices and report XLA's memory "
                        "analysis (minutes for 7B)")
    p.set_defaults(overrides=[])  # --config.a.b=value arguments land here (see cli.py)


def parse_target(target: str) -> tuple[str, int, float]:
    m = re.fullmatch(r"(v5p|v5e|v6e|v4|tpu7x)-(\d+)|(h100|h200|a100)x(\d+)", target.lower())
    if not m:
        raise InputError(f"--target {target!r}: use e.g. v5p-32, v6e-8, tpu7x-8, h100x8 or "
                         "h200x8")
    if int(m.group(2) or m.group(4)) < 1:
        raise InputError(f"--target {target!r}: the size must be >= 1")
    if m.group(1):
        chip, n = m.group(1), int(m.group(2))
        hbm, cores = CHIPS[chip]
        if n % cores:
            raise InputError(f"{target}: {chip} slices count TensorCores in multiples of {cores}")
        return chip, n // cores, hbm
    chip, n = m.group(3), int(m.group(4))
    return chip, n, CHIPS[chip][0]


@dataclasses.dataclass
class Plan:
    rows: dict[str, float]  # name -> bytes per device
    notes: list[str]
    mesh: tuple[int, int, int]

    def phase_totals(self) -> dict[str, float]:
        r = self.rows
        base = r["parameters"] + r["optimizer state"] + r.get("reference model", 0.0)
        out = {"train step": base + r["gradients"] + r["activations (train step)"]}
        if "rollout KV cache" in r:
            out["rollout"] = (base + r["rollout weights (sampling layout)"]
                              + r["rollout KV cache"] + r["rollout logits"])
        return out


def _bytes(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def _shard_factor(spec, rules, mesh_sizes) -> int:
    from guard_jax.sharding import MESH_AXES, _as_tuple
    sizes = dict(zip(MESH_AXES, mesh_sizes))
    f = 1
    for ax, dim in zip(spec.axes, spec.shape):
        if ax is None:
            continue
        n = math.prod(sizes[m] for m in _as_tuple(rules[ax]))
        if n > 1 and dim % n == 0:
            f *= n
    return f


def arithmetic_plan(run, n_devices: int) -> Plan:
    from guard_jax.models.qwen2_5_vl.params import all_specs
    from guard_jax.run_config import model_config
    from guard_jax.sharding import SAMPLE_RULES, TRAIN_RULES, MeshConfig

    mc = model_config(run)
    mesh = MeshConfig(run.mesh.data, run.mesh.fsdp, run.mesh.tensor).resolve(n_devices)
    data, fsdp, tensor = mesh
    specs = all_specs(mc)
    pb = _bytes(mc.param_dtype)
    cb = _bytes(mc.dtype)
    mb = _bytes(run.optim.mu_dtype) if run.optim.mu_dtype else pb
    params_elems = sum(s.size / _shard_factor(s, TRAIN_RULES, mesh) for s in specs.values())
    rows = {"parameters": params_elems * pb, "gradients": params_elems * pb,
            "optimizer state": params_elems * (mb + pb)}  # adam mu (mu_dtype) and nu
    notes = ["parameters, gradients and optimizer state: exact, from the parameter specs and the "
             "train sharding rules (adamw: mu in optim.mu_dtype, nu in the parameter dtype)"]

    t = mc.text
    batch_par = data * fsdp
    b = run.train.micro_batch / batch_par  # sequences per device
    seq = run.data.seq_len
    e, hd = t.hidden_size, t.head_dim
    h, kv = t.num_attention_heads / tensor, t.num_key_value_heads / tensor
    f = t.intermediate_size / tensor
    tok = b * seq
    attn_probs = b * h * seq * seq * (4 + cb)  # XLA path: float32 scores + probabilities
    per_layer_all = tok * cb * (4 * e + (2 * h + 3 * kv) * hd + h * hd + 3 * f) + attn_probs
    per_layer_dots = tok * cb * ((h + 2 * kv) * hd + e + 2 * f) + attn_probs
    n_layers = t.num_hidden_layers
    policy = mc.remat
    if policy == "full":
        text_act = n_layers * tok * e * cb + 2 * per_layer_all
    elif policy in ("dots", "dots_no_batch"):
        text_act = n_layers * (per_layer_dots + tok * e * cb) + per_layer_all
    else:
        text_act = n_layers * per_layer_all
    # training/head_loss.py keeps one float32 [tokens, V] buffer (exp, then d logits in place);
    # with a narrower compute dtype the logits before the cast (and d logits after it) add cb
    logits = tok * (t.vocab_size / tensor) * (4 + (cb if cb < 4 else 0))
    v = mc.vision
    patches = b * vision_patches(mc, run.data.images_per_sample, run.data.max_pixels,
                                 **video_budget(run))
    vd, vh, vf = v.hidden_size, v.num_heads / tensor, v.intermediate_size / tensor
    window = v.window_merged**2 * v.merge_unit
    vis_probs = vh * patches * window * (4 + cb)  # windows of <= 64 patches (full blocks: chunked)
    vis_layer = patches * cb * (4 * vd + 4 * vh * v.head_dim + 3 * vf) + vis_probs
    vis_act = (v.depth * patches * vd * cb + 2 * vis_layer) if policy == "full" else (
        v.depth * vis_layer)
    rows["activations (train step)"] = text_act + logits + vis_act
    from guard_jax.sharding import unsplit_batch_warning
    warning = unsplit_batch_warning(run.train.micro_batch, "train.micro_batch", data, fsdp)
    if warning:
        notes.insert(0, "WARNING: " + warning)
    notes.append(f"activations: estimate for remat={policy!r}, {b:g} sequence(s) of {seq} "
                 f"tokens and {patches:g} image and video patches per device (images_per_sample "
                 f"x max_pixels / {v.patch_size ** 2} + videos_per_sample x max_frames / "
                 f"{v.temporal_patch_size} x video_max_pixels / {v.patch_size ** 2} per "
                 "sequence); text attention counted with "
                 "materialised float32 scores (the XLA path; cuDNN/splash keep far less)")

    if run.trainer == "grpo":
        g = run.grpo
        if g.kl_coef > 0:
            rows["reference model"] = params_elems * cb
            notes.append("reference model: a frozen copy in the compute dtype (grpo.kl_coef > 0)")
        sample_elems = sum(s.size / _shard_factor(s, SAMPLE_RULES, mesh) for s in specs.values())
        rows["rollout weights (sampling layout)"] = sample_elems * cb
        seqs = g.rollout_chunk_prompts * g.num_generations / batch_par
        cache_len = g.max_prompt_len + g.max_new_tokens
        rows["rollout KV cache"] = 2 * n_layers * seqs * cache_len * kv * hd * cb
        rows["rollout logits"] = seqs * t.vocab_size / tensor * 4 * 2
        notes.append(f"rollout: {g.rollout_chunk_prompts} prompts x G={g.num_generations} = "
                     f"{seqs:g} sequences per device, cache {cache_len} tokens; sampling weights "
                     "are replicated over fsdp and split over tensor (SAMPLE_RULES), in the "
                     "compute dtype")
    return Plan(rows, notes, mesh)


def compiled_plan(run, mesh_shape) -> dict[str, float]:
    """XLA's memory analysis of the train step on fake CPU devices (per device)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from guard_jax.models.qwen2_5_vl import abstract_model
    from guard_jax.run_config import model_config
    from guard_jax.sharding import batch_shardings, make_mesh
    from guard_jax.training.train_step import build_step, state_shardings

    mc = model_config(run)
    mesh = make_mesh(mesh_shape)
    graphdef, params = nnx.split(abstract_model(mc), nnx.Param)
    mu = jnp.dtype(run.optim.mu_dtype) if run.optim.mu_dtype else None
    tx = optax.adamw(run.optim.lr, mu_dtype=mu)
    sh = state_shardings(params, tx, mesh)
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, sh)
    batch = abstract_batch(mc, run.train.micro_batch, run.data.seq_len,
                           run.data.images_per_sample, run.data.max_pixels, **video_budget(run))
    b_sh = batch_shardings(batch, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=b_sh[k]) for k, v in batch.items()}
    step = build_step(graphdef, tx, mesh=mesh)
    compiled = jax.jit(step, in_shardings=(sh, b_sh), out_shardings=(sh, NamedSharding(mesh, P())),
                       donate_argnums=0).lower(state, batch).compile()
    ma = compiled.memory_analysis()
    total = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
             - ma.alias_size_in_bytes)
    return {"arguments": ma.argument_size_in_bytes, "temporaries": ma.temp_size_in_bytes,
            "outputs": ma.output_size_in_bytes, "aliased": ma.alias_size_in_bytes,
            "total": total}


def video_budget(run) -> dict:
    """The video keyword arguments of `abstract_batch` / `vision_patches` from a run config."""
    d = run.data
    return {"videos": d.videos_per_sample, "max_frames": d.max_frames,
            "video_max_pixels": d.video_max_pixels}


def _frame_side(v, max_pixels: int) -> int:
    """Patches per side of the largest square frame under max_pixels (a multiple of the
    merge size, at least one merged token)."""
    side = int(math.isqrt(max_pixels)) // (v.patch_size * v.spatial_merge_size)
    return max(side, 1) * v.spatial_merge_size


def _temporal_patches(v, max_frames: int) -> int:
    return -(-max_frames // v.temporal_patch_size)  # odd counts are padded with the last frame


def vision_patches(mc, images: int, max_pixels: int, *, videos: int = 0, max_frames: int = 0,
                   video_max_pixels: int = 0) -> int:
    """Vision-tower patches per sequence at most: images of max_pixels and videos of
    max_frames frames of video_max_pixels (docs/model.md#video)."""
    v = mc.vision
    out = images * (max_pixels // v.patch_size**2)
    if videos:
        out += videos * _temporal_patches(v, max_frames) * (video_max_pixels // v.patch_size**2)
    return out


def abstract_batch(mc, batch: int, seq: int, images: int, max_pixels: int, *, videos: int = 0,
                   max_frames: int = 0, video_max_pixels: int = 0) -> dict:
    """Shapes of a train batch: `images` images per sample of the largest grid under
    max_pixels (square) and `videos` videos of max_frames frames of the largest square frame
    under video_max_pixels, token layout of the model's forward (images and videos share the
    vision rows: docs/model.md#video)."""
    import jax
    import jax.numpy as jnp
    v = mc.vision
    vmw = v.window_merged
    side = _frame_side(v, max_pixels)
    # (frames, patches per frame, windows per frame) of each kind of item
    kinds = [(images, side)]
    if videos:
        kinds.append((videos * _temporal_patches(v, max_frames), _frame_side(v, video_max_pixels)))
    frames = sum(n for n, _ in kinds)
    patches = sum(n * sd * sd for n, sd in kinds)  # per sample
    windows = sum(n * (-(-(sd // v.spatial_merge_size) // vmw)) ** 2 for n, sd in kinds)
    i32 = jnp.int32
    out = {k: jax.ShapeDtypeStruct((batch, seq), i32)
           for k in ("input_ids", "attention_mask", "labels", "loss_mask")}
    out["position_ids"] = jax.ShapeDtypeStruct((3, batch, seq), i32)
    if frames:
        out["pixel_values"] = jax.ShapeDtypeStruct((batch, patches, v.patch_dim), jnp.float32)
        out["pos_hw"] = jax.ShapeDtypeStruct((batch, patches, 2), i32)
        out["win_idx"] = jax.ShapeDtypeStruct((batch, windows, vmw * vmw * v.merge_unit), i32)
        out["full_idx"] = jax.ShapeDtypeStruct(
            (batch, frames, max(sd * sd for n, sd in kinds if n)), i32)
    return out


def format_plan(plan: Plan, chip: str, n_devices: int, hbm_gib: float,
                compiled: dict[str, float] | None = None) -> str:
    lines = [f"guard-jax plan: {n_devices} x {chip} ({hbm_gib:g} GiB HBM each), mesh "
             f"data={plan.mesh[0]} fsdp={plan.mesh[1]} tensor={plan.mesh[2]}", ""]
    lines.append(f"{'per device':<36}{'GiB':>10}")
    for k, v in plan.rows.items():
        lines.append(f"  {k:<34}{v / GIB:>10.2f}")
    lines.append("")
    budget = hbm_gib * HEADROOM
    for phase, total in plan.phase_totals().items():
        verdict = "fits" if total / GIB <= budget else "DOES NOT FIT"
        lines.append(f"  {phase + ' peak':<34}{total / GIB:>10.2f}   {verdict} "
                     f"({100 * total / GIB / hbm_gib:.0f}% of {hbm_gib:g} GiB; budget "
                     f"{budget:.1f} GiB with 10% headroom)")
    if compiled:
        lines.append("")
        lines.append("compiled train step (XLA memory analysis on fake CPU devices, per device):")
        for k, v in compiled.items():
            lines.append(f"  {k:<34}{v / GIB:>10.2f}")
        arith = plan.phase_totals()["train step"]
        lines.append(f"  arithmetic / compiled train step: {arith / compiled['total']:.2f}")
    lines.append("")
    lines.append("method: arithmetic" + (" + compiled" if compiled else "") + ".")
    lines.extend(f"  - {n}" for n in plan.notes)
    return "\n".join(lines)


def format_tpu(results, target, mesh_shape, arith_train: float | None) -> str:
    """The TPU compiler's figures of each program, per device, and the fit verdict."""
    hbm = target.hbm_gib
    budget = hbm * HEADROOM
    lines = [f"TPU compiler: {target}, mesh data={mesh_shape[0]} fsdp={mesh_shape[1]} "
             f"tensor={mesh_shape[2]}; per device, GiB", "",
             f"  {'program':<26}{'args':>8}{'temp':>8}{'out':>8}{'alias':>8}{'peak':>8}"
             f"{'TFLOP':>9}{'GB acc.':>9}{'compile s':>11}  verdict"]
    for r in results:
        verdict = "fits" if r.peak / GIB <= budget else "DOES NOT FIT"
        if r.error:
            lines.append(f"  {r.name:<26}{'':>32}{r.peak / GIB:>8.2f}{'':>18}{r.compile_s:>11.1f}"
                         f"  DOES NOT FIT (the compiler needs {r.temp / GIB:.2f} GiB of "
                         "temporaries alone)")
            continue
        lines.append(f"  {r.name:<26}{r.argument / GIB:>8.2f}{r.temp / GIB:>8.2f}"
                     f"{r.output / GIB:>8.2f}{r.alias / GIB:>8.2f}{r.peak / GIB:>8.2f}"
                     f"{r.flops / 1e12:>9.3f}{r.bytes_accessed / 1e9:>9.2f}{r.compile_s:>11.1f}"
                     f"  {verdict}")
    lines.append("")
    lines.append("  collectives in the compiled HLO (count of ops):")
    for r in results:
        if r.error:
            lines.append(f"    {r.name:<24}(not compiled: {r.error})")
            continue
        found = ", ".join(f"{k} {v}" for k, v in r.collectives.items() if v) or "none"
        kernel = f"; {r.custom_calls} Pallas kernel calls" if r.custom_calls else ""
        lines.append(f"    {r.name:<24}{found}{kernel}")
    worst = max(r.peak for r in results)
    lines.append("")
    lines.append(f"  peak over programs {worst / GIB:.2f} GiB of {hbm:g} GiB HBM: "
                 + ("fits" if worst / GIB <= budget else "DOES NOT FIT")
                 + f" (budget {budget:.1f} GiB with 10% headroom)")
    train = next((r for r in results if "step" in r.name and not r.error), None)
    if arith_train is not None and train is not None:
        lines.append(f"  arithmetic / TPU compiler, {train.name}: "
                     f"{arith_train / train.peak:.2f}")
    return "\n".join(lines)


def _tpu_compiler_plan(args, run, arith: Plan) -> str | None:
    """The TPU compiler's section for a TPU target, or None (with a hint) without libtpu."""
    from guard_jax import aot
    if not aot.libtpu_available():
        print(f"[plan] {aot.INSTALL_HINT}; falling back to the arithmetic plan", flush=True)
        return None
    target = aot.parse_tpu_target(args.target, args.slices)
    phases = [p for p in args.phases.split(",") if p] or [run.trainer]
    unknown = set(phases) - set(aot.PROGRAMS)
    if unknown:
        raise InputError(f"--phases {sorted(unknown)}: choose from {', '.join(aot.PROGRAMS)}")
    print(f"[plan] compiling {', '.join(phases)} for {target} with the TPU compiler...",
          flush=True)
    shape, results = aot.compile_run(run, aot.tpu_devices(target), phases=phases)
    arith_train = arith.phase_totals()["train step"] if arith.mesh == shape else None
    return format_tpu(results, target, shape, arith_train)


def main(args) -> int:
    chip, n_devices, hbm = parse_target(args.target)
    tpu = chip not in GPUS
    if args.slices != 1 and not tpu:
        raise InputError("--slices is for TPU targets")
    if args.slices < 1:
        raise InputError(f"--slices {args.slices} must be >= 1")
    n_devices *= args.slices
    if tpu and not args.compiled:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # topology descriptions need no TPU
    if args.compiled:
        # Fake CPU devices shaped like the target: only possible before jax initialises.
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}"
    from guard_jax.run_config import check_mesh, load_config
    run = load_config(args.config, args.overrides)
    check_mesh(run, n_devices, f"--target {args.target}"
               f"{f' x {args.slices} slices' if args.slices > 1 else ''} ({args.config})")
    plan = arithmetic_plan(run, n_devices)
    compiled = None
    if args.compiled:
        import jax
        if jax.device_count() != n_devices:
            raise RuntimeError(f"--compiled needs {n_devices} fake CPU devices but jax has "
                               f"{jax.device_count()} (was jax initialised earlier?)")
        print(f"[plan] lowering and compiling the train step on {n_devices} fake CPU devices...",
              flush=True)
        compiled = compiled_plan(run, plan.mesh)
    text = format_plan(plan, chip, n_devices, hbm, compiled)
    if tpu:
        section = _tpu_compiler_plan(args, run, plan)
        if section:
            text = text.replace("\nmethod: arithmetic", "\n\n" + section + "\n\nmethod: TPU compiler "
                                "(authoritative for TPU) + arithmetic", 1)
    print(text)
    return 0
