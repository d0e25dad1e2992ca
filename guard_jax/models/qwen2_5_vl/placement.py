"""Creating and loading Qwen2.5-VL straight into shards on a device mesh.

Random init runs under `jax.jit(out_shardings=...)`, so each device materialises only its own
shards. Loading builds every array with `jax.make_array_from_callback`: each process reads, for
each of its devices, only the slice of the safetensors tensor that the device owns (a
contiguous row or column range of the HF tensor where the layout allows, else the tensor of
one layer), so no host ever holds a full replica of a sharded model.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from guard_jax.models.qwen2_5_vl.hf_keys import KeyMap, key_maps
from guard_jax.models.qwen2_5_vl.model import Qwen25VL, abstract_model
from guard_jax.sharding import TRAIN_RULES, param_shardings


def model_shardings(config: Qwen25VLConfig, mesh, rules=TRAIN_RULES):
    """(graphdef, abstract state, State of NamedShardings) for the config on the mesh."""
    graphdef, abstract = nnx.split(abstract_model(config))
    return graphdef, abstract, param_shardings(abstract, mesh, rules)


def init_sharded(config: Qwen25VLConfig, mesh, *, seed: int = 0, rules=TRAIN_RULES) -> Qwen25VL:
    graphdef, _, shardings = model_shardings(config, mesh, rules)

    @functools.partial(jax.jit, out_shardings=shardings)
    def make():
        return nnx.state(Qwen25VL(config, rngs=nnx.Rngs(seed)))

    return nnx.merge(graphdef, make())


def shard_model(model: Qwen25VL, mesh, *, rules=TRAIN_RULES) -> Qwen25VL:
    """Places an existing (e.g. host-initialised) model onto the mesh. Every process must hold
    the same values; each copies only the slices its devices own."""
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, mesh, rules)

    def put(var, sh):
        value = var.get_value()
        host = np.asarray(value)
        return var.replace(jax.make_array_from_callback(host.shape, sh.get_value(),
                                                        lambda idx: host[idx]))

    flat_sh = dict(nnx.to_flat_state(shardings))
    flat = [(k, put(v, flat_sh[k])) for k, v in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _flat_range(index: tuple[slice, ...], dims: tuple[int, ...]):
    """The [start, stop) range of the row-major flattening of `dims` covered by `index`, or None
    when the covered elements are not contiguous."""
    norm = [s.indices(d) for s, d in zip(index, dims)]
    partial = [i for i, (a, b, _) in enumerate(norm) if (a, b) != (0, dims[i])]
    if not partial:
        return 0, math.prod(dims)
    first = partial[0]
    # Contiguous iff one dim is partial, the dims after it are full and those before it have
    # size 1; anything else is read whole and sliced in memory.
    if len(partial) > 1 or any(dims[i] > 1 for i in range(first)):
        return None
    a, b, _ = norm[first]
    inner = math.prod(dims[first + 1:])
    return a * inner, b * inner


def _read_block(index, km: KeyMap, key: str, ours_shape: tuple[int, ...], sl: tuple[slice, ...],
                dtype) -> np.ndarray:
    """Our per-layer array's block `sl`, reading as little of the HF tensor as the layout allows."""
    fname, raw = index.where[key]
    handle = index.handles[fname]
    if km.in_dims and len(km.hf_shape) == 2:
        in_dims, out_dims = ours_shape[:km.in_dims], ours_shape[km.in_dims:]
        rin = _flat_range(sl[:km.in_dims], in_dims)
        rout = _flat_range(sl[km.in_dims:], out_dims)
        if rin is not None and rout is not None:
            w = handle.get_slice(raw)[rout[0]:rout[1], rin[0]:rin[1]]
            block_shape = tuple(len(range(*s.indices(d))) for s, d in zip(sl, ours_shape))
            return np.ascontiguousarray(w.T).reshape(block_shape).astype(dtype)
    elif not km.in_dims and tuple(ours_shape) == km.hf_shape:
        return np.asarray(handle.get_slice(raw)[sl]).astype(dtype)
    full = km.to_ours(handle.get_tensor(raw), ours_shape, key)
    return np.ascontiguousarray(full[sl]).astype(dtype)


def load_sharded(path, index, config: Qwen25VLConfig, mesh, *, rules=TRAIN_RULES,
                 progress: bool = True) -> Qwen25VL:
    """Fills an abstract model from an open tensor index, shard by shard (see hf_io.load_hf)."""
    graphdef, abstract, shardings = model_shardings(config, mesh, rules)
    shard_of = {".".join(str(p) for p in k): v.get_value()
                for k, v in nnx.to_flat_state(shardings)}
    shapes = {".".join(str(p) for p in k): tuple(v.get_value().shape)
              for k, v in nnx.to_flat_state(abstract)}
    values = {}
    target = np.dtype(jax.numpy.dtype(config.param_dtype))
    for km in tqdm(key_maps(config), desc=f"loading {Path(path).name} (sharded)",
                   disable=not progress, unit="param"):
        sharding = shard_of[km.ours]
        shape = shapes[km.ours]

        def callback(idx, km=km, shape=shape):
            idx = tuple(idx) + (slice(None),) * (len(shape) - len(idx))
            if not km.stacked:
                return _read_block(index, km, km.hf, shape, idx, target)
            layers = range(*idx[0].indices(shape[0]))
            return np.stack([_read_block(index, km, km.hf.format(i=i), shape[1:], idx[1:], target)
                             for i in layers])

        values[km.ours] = jax.make_array_from_callback(shape, sharding, callback)
    flat = [(k, v.replace(values[".".join(str(p) for p in k)]))
            for k, v in nnx.to_flat_state(abstract)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
