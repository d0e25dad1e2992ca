"""LoRA adapters on the stacked parameters, merged into the weights at every forward.

A target weight W of shape [*lead, *in, *out] (lead = the stacked `layers` axis, if any) gets
A [*lead, prod(in), rank] and B [*lead, rank, prod(out)]; the forward uses
W + (alpha / rank) * reshape(A @ B). B starts at zero, so step 0 is the base model. Only A and B
train (the base stays fixed and has no optimizer state), and export writes the merged weights,
so an exported LoRA run is a plain Qwen2.5-VL checkpoint.

Merging at the forward keeps the model code free of adapter plumbing: the cost is one merged
copy of the targeted weights per step, against the full-parameter AdamW moments LoRA saves.
Adapters are small and replicated on the mesh.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from guard_jax.errors import InputError

# Input dimensions (after the stacked-layers axis) of each matmul weight; the rest are outputs.
# Weights not listed here (embeddings, norms, biases) cannot carry adapters.
IN_DIMS = {
    "text.layers.q": 1, "text.layers.k": 1, "text.layers.v": 1, "text.layers.o": 2,
    "text.layers.gate": 1, "text.layers.up": 1, "text.layers.down": 1, "text.lm_head": 1,
    "visual.blocks.qkv": 1, "visual.blocks.proj": 2, "visual.blocks.gate": 1,
    "visual.blocks.up": 1, "visual.blocks.down": 1, "visual.patch_embed.kernel": 1,
    "visual.merger.fc1": 1, "visual.merger.fc2": 1,
}
STACKED = ("text.layers.", "visual.blocks.")
# The usual choice: every projection of the language model's attention and MLP.
DEFAULT_TARGETS = r"^text\.layers\.(q|k|v|o|gate|up|down)$"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float = 16.0
    targets: str = DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def from_run(run) -> LoraConfig | None:
    """The run config's `lora` section, or None when rank is 0."""
    sec = run.lora
    if not sec.rank:
        return None
    if sec.rank < 0:
        raise InputError(f"lora.rank={sec.rank} must be >= 0 (0 = off)")
    if run.optim.freeze:
        raise InputError("lora.rank > 0 and optim.freeze are both set: with LoRA the base "
                         "weights are frozen and lora.targets chooses what adapts")
    return LoraConfig(rank=int(sec.rank), alpha=float(sec.alpha),
                      targets=sec.targets or DEFAULT_TARGETS)


def _dotted(path) -> str:
    return ".".join(str(p) for p in path)


def _split(name: str, shape) -> tuple[tuple[int, ...], int, int]:
    """(lead shape, flat in size, flat out size) of a target weight."""
    lead = shape[:1] if name.startswith(STACKED) else ()
    rest = shape[len(lead):]
    n_in = IN_DIMS[name]
    return lead, math.prod(rest[:n_in]), math.prod(rest[n_in:])


def target_names(params, cfg: LoraConfig) -> list[str]:
    """Matmul weights whose dotted path matches `cfg.targets` (norms, biases and embeddings
    never carry adapters, so a broad regex like 'layers' picks the projections only)."""
    pattern = re.compile(cfg.targets)
    names = [_dotted(p) for p, _ in nnx.to_flat_state(params)]
    hits = [n for n in names if n in IN_DIMS and pattern.search(n)]
    if not hits:
        raise InputError(f"lora.targets={cfg.targets!r} matches no adaptable weight; "
                         f"adaptable: {sorted(n for n in IN_DIMS if n in names)}")
    return hits


def lora_shapes(params, cfg: LoraConfig) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
    """{weight path: {"a", "b"}} as float32 ShapeDtypeStructs (works on abstract params)."""
    shapes = {_dotted(p): v.shape for p, v in nnx.to_flat_state(params)}
    out = {}
    for name in target_names(params, cfg):
        lead, n_in, n_out = _split(name, shapes[name])
        out[name] = {"a": jax.ShapeDtypeStruct(lead + (n_in, cfg.rank), jnp.float32),
                     "b": jax.ShapeDtypeStruct(lead + (cfg.rank, n_out), jnp.float32)}
    return out


def init_lora(params, cfg: LoraConfig, seed: int = 0) -> dict[str, dict[str, jax.Array]]:
    """A ~ N(0, 1/in), B = 0, drawn on the host in float32."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, ab in lora_shapes(params, cfg).items():
        a = rng.standard_normal(ab["a"].shape, dtype=np.float32) / math.sqrt(ab["a"].shape[-2])
        out[name] = {"a": jnp.asarray(a), "b": jnp.zeros(ab["b"].shape, jnp.float32)}
    return out


def delta(weight_shape, a, b, scale: float):
    """(alpha / rank) * A @ B in the weight's shape (float32)."""
    return (scale * jnp.matmul(a, b)).reshape(weight_shape)


def merge(params, lora: dict, cfg: LoraConfig):
    """The parameters with every adapter folded in (same tree and dtypes as `params`)."""
    flat = []
    for path, var in nnx.to_flat_state(params):
        name = _dotted(path)
        if name in lora:
            w = var[...]
            d = delta(w.shape, lora[name]["a"], lora[name]["b"], cfg.scale)
            var = var.replace((w.astype(jnp.float32) + d).astype(w.dtype))
        flat.append((path, var))
    return nnx.from_flat_state(flat)


__all__ = ["LoraConfig", "DEFAULT_TARGETS", "IN_DIMS", "from_run", "target_names", "lora_shapes",
           "init_lora", "merge", "delta"]
