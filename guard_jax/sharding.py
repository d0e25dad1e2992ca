"""Device mesh and logical-axis sharding rules.

Every parameter carries logical axis names (see `models/qwen2_5_vl/params.py`); one rules table
maps them to the mesh axes `('data', 'fsdp', 'tensor')`. A second table serves sampling: it
drops FSDP from the weights so a decode step needs no weight all-gather. Activations are
constrained with the same tables through `shard_activation`, which is a no-op unless a step is
traced inside `use_rules(mesh, rules)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None

TRAIN_RULES: dict[str, MeshAxes] = {
    # activations
    "act_batch": ("data", "fsdp"),
    "act_length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
    "act_patches": None,
    # parameters
    "layers": None,
    "embed": "fsdp",
    "vision_embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "vision_heads": "tensor",
    "mlp": "tensor",
    "vision_mlp": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "vision_patch_in": None,
    "merger_in": "fsdp",
    # KV cache (sampling)
    "cache_batch": ("data", "fsdp"),
    "cache_length": None,
    "cache_kv_heads": "tensor",
    "cache_head_dim": None,
}

# Sampling: weights replicated over data x fsdp, split over tensor only.
SAMPLE_RULES: dict[str, MeshAxes] = {**TRAIN_RULES, "embed": None, "vision_embed": None,
                                     "merger_in": None}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def resolve(self, n_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sum(s == -1 for s in sizes) > 1:
            raise ValueError(f"mesh {sizes}: at most one axis may be -1 (= the rest)")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh {sizes}: sizes must be positive or -1")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes and n_devices % known:
            raise ValueError(f"mesh data={self.data} fsdp={self.fsdp} tensor={self.tensor} does "
                             f"not divide the {n_devices} devices")
        if known > n_devices:
            raise ValueError(f"mesh data={self.data} fsdp={self.fsdp} tensor={self.tensor} needs "
                             f"{known} devices but {n_devices} are available")
        # Fully explicit sizes may use a subset of the devices (the first ones).
        return tuple(n_devices // known if s == -1 else s for s in sizes)


def make_mesh(config: MeshConfig | Mapping | Sequence | None = None, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; `-1` in one axis takes the remaining devices."""
    if config is None:
        config = MeshConfig()
    elif isinstance(config, Mapping):
        unknown = set(config) - set(MESH_AXES)
        if unknown:
            raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid: {MESH_AXES}")
        config = MeshConfig(**config)
    elif not isinstance(config, MeshConfig):
        config = MeshConfig(*config)
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    devices = devices[:math.prod(shape)]
    auto = (AxisType.Auto,) * len(MESH_AXES)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        return Mesh(_multislice_devices(shape, devices, slices), MESH_AXES, axis_types=auto)
    # Auto axes: GSPMD propagates shardings between the explicit in/out shardings of a step.
    return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)


def auto_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with Auto axis types (the same mesh when it has them already).

    guard_jax's steps give shardings at their inputs and outputs and let the compiler propagate
    the rest, which needs Auto axes; `jax.make_mesh` defaults to Explicit ones (sharding in
    types), so such a mesh is converted here (same devices, names and sizes). Axis names other
    than ('data', 'fsdp', 'tensor') are refused with what to pass instead (docs/sharding.md)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}; build "
                        "one with guard_jax.sharding.make_mesh")
    unknown = [a for a in mesh.axis_names if a not in MESH_AXES]
    if unknown:
        raise ValueError(f"mesh axes {tuple(mesh.axis_names)}: guard_jax shards over "
                         f"{MESH_AXES} and knows no axis {unknown}; pass "
                         "guard_jax.sharding.make_mesh({'data': D, 'fsdp': F, 'tensor': T}) or "
                         f"jax.make_mesh(shape, {MESH_AXES})")
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def _multislice_devices(shape, devices, slices: int) -> np.ndarray:
    """Devices of several TPU slices joined over DCN: the slow links carry the data axis (one
    gradient all-reduce a step), or fsdp when data does not split over the slices; the other
    axes stay inside a slice (ICI). See docs/tpu.md."""
    from jax.experimental import mesh_utils
    axis = next((i for i in (0, 1) if shape[i] % slices == 0), None)
    if axis is None:
        raise ValueError(f"mesh data={shape[0]} fsdp={shape[1]} tensor={shape[2]} over {slices} "
                         f"slices: data (or fsdp) must be a multiple of {slices}, the axis that "
                         "spans the slices")
    ici, dcn = list(shape), [1, 1, 1]
    ici[axis] //= slices
    dcn[axis] = slices
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)


def _as_tuple(a: MeshAxes) -> tuple[str, ...]:
    if a is None:
        return ()
    return (a,) if isinstance(a, str) else tuple(a)


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, MeshAxes],
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None,
                    name: str = "array", strict: bool = True) -> P:
    """Logical axis names -> PartitionSpec; checks axes used twice and divisibility.

    With strict=False a dimension that does not divide is replicated instead (activations,
    e.g. a batch of 1 during sampling)."""
    out, used = [], {}
    for i, a in enumerate(axes):
        if a is None:
            out.append(None)
            continue
        if a not in rules:
            raise KeyError(f"{name}: logical axis {a!r} has no sharding rule; known: "
                           f"{sorted(rules)}")
        for m in _as_tuple(rules[a]):  # checked on the rules, whatever the mesh sizes
            if m in used:
                raise ValueError(f"{name}: mesh axis {m!r} used twice (for {used[m]!r} and {a!r}); "
                                 "fix the rules table")
            if m not in MESH_AXES:
                raise ValueError(f"{name}: rule for {a!r} names mesh axis {m!r}; valid: {MESH_AXES}")
            used[m] = a
        mesh_axes = tuple(m for m in _as_tuple(rules[a])
                          if mesh is None or mesh.shape.get(m, 1) > 1)
        if shape is not None and mesh is not None and mesh_axes:
            n = math.prod(mesh.shape[m] for m in mesh_axes)
            if shape[i] % n:
                if strict:
                    raise ValueError(_divisibility_message(name, a, shape[i], mesh_axes, n))
                mesh_axes = ()
        out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def _divisibility_message(name, axis, size, mesh_axes, n) -> str:
    msg = (f"{name}: dimension {axis!r} of size {size} does not split over mesh axes "
           f"{'x'.join(mesh_axes)} = {n}")
    if axis == "kv_heads":
        msg += (f". More tensor shards than KV heads ({size}): use mesh.tensor <= {size} (a "
                "divisor of it) and put the remaining devices on fsdp or data")
    elif axis in ("heads", "vision_heads"):
        msg += f". Choose mesh.tensor as a divisor of the head count {size}"
    else:
        msg += ". Choose mesh sizes that divide it"
    return msg


def param_shardings(state, mesh: Mesh, rules: Mapping[str, MeshAxes] = TRAIN_RULES):
    """NamedShardings for an nnx State of Params (or abstract ones), from their logical_axes."""
    mesh = auto_mesh(mesh)
    def one(path, var):
        axes = var.get_metadata().get("logical_axes")
        value = var.get_value()
        if axes is None:
            spec = P()
        else:
            spec = logical_to_spec(axes, rules, value.shape, mesh,
                                   name=".".join(str(p) for p in path))
        return var.replace(NamedSharding(mesh, spec))

    from flax import nnx
    return nnx.map_state(one, state)


# ------------------------------------------------------------------ activation constraints
_RULES: contextvars.ContextVar = contextvars.ContextVar("guard_jax_rules", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Mapping[str, MeshAxes] = TRAIN_RULES):
    """Activations traced inside get sharding constraints from `rules` on `mesh`."""
    token = _RULES.set((auto_mesh(mesh), rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def shard_activation(x, axes: Sequence[str | None]):
    ctx = _RULES.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    spec = logical_to_spec(axes, rules, x.shape, mesh, strict=False)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def current_mesh() -> Mesh | None:
    ctx = _RULES.get()
    return None if ctx is None else ctx[0]


def mesh_axes_of(logical: str, size: int) -> MeshAxes:
    """The mesh axes an activation dimension `logical` of `size` is split over in the current
    `use_rules` context (None outside one, or when the size does not divide)."""
    ctx = _RULES.get()
    if ctx is None:
        return None
    spec = logical_to_spec((logical,), ctx[1], (size,), ctx[0], strict=False)
    return spec[0] if len(spec) else None


def unsplit_batch_warning(rows: int, what: str, data: int, fsdp: int) -> str | None:
    """A warning when `rows` (a batch dimension) does not split over the data x fsdp devices:
    the batch is then replicated and every device computes all of it (docs/sharding.md)."""
    n = data * fsdp
    if n <= 1 or rows % n == 0:
        return None
    return (f"{what} {rows} does not split over the {n} data x fsdp devices: every device "
            f"computes all {rows} rows (replicated); use a multiple of {n}")




# Logical axes of each batch field; everything else is replicated.
BATCH_AXES = {
    "input_ids": ("act_batch", "act_length"),
    "attention_mask": ("act_batch", "act_length"),
    "labels": ("act_batch", "act_length"),
    "loss_mask": ("act_batch", "act_length"),
    "position_ids": (None, "act_batch", "act_length"),
    # batch-major vision inputs: each device runs the vision tower on its own samples
    "pixel_values": ("act_batch", None, None),
    "pos_hw": ("act_batch", None, None),
    "win_idx": ("act_batch", None, None),
    "full_idx": ("act_batch", None, None),
    # GRPO micro-batches: rollouts split like the batch (training/grpo.py)
    "completion": ("act_batch", None),
    "completion_mask": ("act_batch", None),
    "old_logp": ("act_batch", None),
    "ref_logp": ("act_batch", None),
    "weights": ("act_batch", None),
    "advantages": ("act_batch",),
    "rollout_is_weights": ("act_batch", None),
    "sampler_logp": ("act_batch", None),
    "head_index": ("act_batch", None),  # one row of filled positions per row shard
}


def row_shards(rows: int, mesh, rules=TRAIN_RULES) -> int:
    """How many contiguous blocks a batch's `rows` split into on `mesh` (1 without one)."""
    if mesh is None:
        return 1
    mesh = auto_mesh(mesh)
    spec = logical_to_spec(("act_batch",), rules, (rows,), mesh, strict=False)
    return math.prod(mesh.shape[a] for a in _as_tuple(spec[0] if len(spec) else None))


def batch_shardings(batch: dict, mesh, rules=TRAIN_RULES) -> dict:
    """NamedShardings for a batch dict: fields in BATCH_AXES by their logical axes, the rest
    replicated."""
    mesh = auto_mesh(mesh)
    out = {}
    for k, v in batch.items():
        axes = BATCH_AXES.get(k)
        spec = P() if axes is None else logical_to_spec(axes, rules, v.shape, mesh, strict=False)
        out[k] = NamedSharding(mesh, spec)
    return out


def put_batch(batch: dict, shardings: dict) -> dict:
    """Host arrays holding the GLOBAL batch (same on every process) -> global jax Arrays;
    jax Arrays already on the mesh are resharded where their layout differs.

    Each process copies only the slices its own devices hold, so this is also how a
    multi-process job feeds a step. (Per-process data shards go through
    `jax.make_array_from_process_local_data` instead.)"""
    out = {}
    for k, v in batch.items():
        if isinstance(v, jax.Array):  # already global: moved only if laid out otherwise
            same = v.sharding.is_equivalent_to(shardings[k], v.ndim)
            out[k] = v if same else jax.device_put(v, shardings[k])
            continue
        v = np.asarray(v)
        out[k] = jax.make_array_from_callback(v.shape, shardings[k], lambda idx, v=v: v[idx])
    return out
