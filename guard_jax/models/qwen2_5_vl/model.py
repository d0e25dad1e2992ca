"""Qwen2.5-VL in Flax NNX: vision tower, text decoder, and the VLM that joins them.

Numerics follow transformers 5.23 (docs/model.md#how-the-model-is-built): RMSNorm normalises in
float32 and casts back before the weight multiply; the vision RoPE rotates in float32; the text
M-RoPE casts cos/sin to the activation dtype; attention softmax is float32. Layer stacks run as one
`lax.scan` each, with optional rematerialisation, so a 36-layer decoder compiles in about one
layer's time.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from guard_jax.models.qwen2_5_vl import positions as pos_lib
from guard_jax.models.qwen2_5_vl.attention import dot_product_attention, grouped_attention
from guard_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from guard_jax.models.qwen2_5_vl.params import ParamSpec, text_specs, vision_specs
from guard_jax.sharding import mesh_axes_of, shard_activation

ACT_BLE = ("act_batch", "act_length", "act_embed")
# Batch fields the vision tower reads (host-computed by positions.vision_attention_index).
VISION_KEYS = ("pixel_values", "pos_hw", "win_idx", "full_idx")
FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids") + VISION_KEYS

VISION_NORM_EPS = 1e-6  # hard-coded in transformers' vision tower, not read from the config


# ---------------------------------------------------------------------------- building blocks
def rms_norm(x, weight, eps):
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(dtype) * x32.astype(dtype)


def swiglu_mlp(h, gate, up, down, gate_bias=None, up_bias=None, axes=None):
    """(silu(h @ gate + gate_bias) * (h @ up + up_bias)) @ down for h [..., E], with a
    hand-written backward pass. `axes`: logical axes of the [..., I] activation, for
    shard_activation.

    Autodiff of the plain expression keeps four arrays of the MLP's width per layer, and XLA:CPU
    fuses their use into slow transposing passes that feed the weight-gradient matmuls. This
    backward keeps h (transposed once, in the forward, so the weight gradients are plain
    matmuls), the two projections and the weights, and recomputes the sigmoid."""
    return _swiglu_mlp(axes, h, gate, up, down, gate_bias, up_bias)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _swiglu_mlp(axes, h, gate, up, down, gate_bias, up_bias):
    return _swiglu_mlp_fwd(axes, h, gate, up, down, gate_bias, up_bias)[0]


def _swiglu_mlp_fwd(axes, h, gate, up, down, gate_bias, up_bias):
    g, u = h @ gate, h @ up
    if gate_bias is not None:
        g, u = g + gate_bias, u + up_bias
    a = jax.nn.silu(g) * u
    if axes is not None:
        a = shard_activation(a, axes)
    h_t = jnp.moveaxis(h, -1, 0)  # [E, ...]
    return a @ down, (h_t, g, u, gate, up, down, gate_bias)


def _swiglu_mlp_bwd(axes, res, dy):
    h_t, g, u, gate, up, down, gate_bias = res
    lead = list(range(dy.ndim - 1))
    g32, u32 = g.astype(jnp.float32), u.astype(jnp.float32)
    sig = jax.nn.sigmoid(g32)
    d_a = jnp.matmul(dy, down.T, preferred_element_type=jnp.float32)
    d_u = (d_a * g32 * sig).astype(u.dtype)
    d_g = (d_a * u32 * sig * (1.0 + g32 * (1.0 - sig))).astype(g.dtype)
    a = (g32 * sig * u32).astype(dy.dtype)
    # as (dy^T a)^T: XLA:CPU would otherwise recompute `a` in transposed order for a^T dy
    d_down = jnp.tensordot(dy, a, axes=(lead, lead)).T
    d_gate = jnp.tensordot(h_t, d_g, axes=([i + 1 for i in lead], lead))
    d_up = jnp.tensordot(h_t, d_u, axes=([i + 1 for i in lead], lead))
    d_h = d_g @ gate.T + d_u @ up.T
    d_bias = (None, None) if gate_bias is None else (d_g.sum(lead), d_u.sum(lead))
    return (d_h.astype(h_t.dtype), d_gate.astype(gate.dtype), d_up.astype(up.dtype),
            d_down.astype(down.dtype)) + d_bias


_swiglu_mlp.defvjp(_swiglu_mlp_fwd, _swiglu_mlp_bwd)


LOGIT_AXES = ("act_batch", "act_length", "act_vocab")


def project_logits(h, weight, vocab_major: bool):
    """h [B, L, E] @ the output projection: [V, E] (vocab_major, the tied embedding) or
    [E, V] (lm_head) -> logits [B, L, V] in h's dtype."""
    out = jnp.einsum("ble,ve->blv" if vocab_major else "ble,ev->blv", h, weight)
    return shard_activation(out, LOGIT_AXES)


def rotate_half(x):
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    policies = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.dots_saveable,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    return jax.checkpoint(fn, policy=policies[policy], prevent_cse=False)


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


class ParamGroup(nnx.Module):
    """A bag of parameters created from specs (random normal / zeros / ones).

    With `rngs` the normals come from jax.random (traceable: sharded init under jit, abstract
    shapes under eval_shape); with a numpy Generator they are drawn on the host, which costs no
    compilation (an unsharded init of a small model in well under a second)."""

    def __init__(self, specs: dict[str, ParamSpec], *, dtype, init_std: float,
                 rngs: nnx.Rngs | None = None, np_rng: np.random.Generator | None = None):
        for name, spec in specs.items():
            if spec.init == "normal":
                if rngs is not None:
                    value = init_std * jax.random.normal(rngs.params(), spec.shape, jnp.float32)
                    value = value.astype(dtype)
                else:
                    value = np_rng.standard_normal(spec.shape, dtype=np.float32) * init_std
                    value = jnp.asarray(value.astype(np.dtype(dtype)))
            elif spec.init == "zeros":
                value = jnp.zeros(spec.shape, dtype)
            else:
                value = jnp.ones(spec.shape, dtype)
            setattr(self, name, nnx.Param(value, logical_axes=spec.axes))

    def arrays(self) -> dict[str, jax.Array]:
        return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


# ---------------------------------------------------------------------------- vision tower
def run_vision_blocks(x, params, depth, full_indexes, windowed, full):
    """Runs the stacked vision blocks without a per-block branch (a `lax.cond` in the scan
    would keep both branches' buffers for every block).

    When full-attention blocks recur with a period p (every p-th block, as the published
    7, 15, 23, 31), an outer scan over the depth/p groups runs p-1 windowed blocks (inner scan)
    then one full block: two loop bodies, whatever the depth. Otherwise each run of consecutive
    blocks of one kind is its own scan."""
    full_set = sorted(set(full_indexes))
    p = full_set[0] + 1 if full_set else 0
    periodic = (p > 1 and depth % p == 0
                and full_set == list(range(p - 1, depth, p)))
    if periodic:
        groups = jax.tree.map(lambda a: a.reshape((depth // p, p) + a.shape[1:]), params)

        def group(x, gp):
            x, _ = jax.lax.scan(windowed, x, jax.tree.map(lambda a: a[:p - 1], gp))
            x, _ = full(x, jax.tree.map(lambda a: a[p - 1], gp))
            return x, None

        x, _ = jax.lax.scan(group, x, groups)
        return x
    kinds = [i in full_set for i in range(depth)]
    start = 0
    while start < depth:
        end = start
        while end < depth and kinds[end] == kinds[start]:
            end += 1
        body = full if kinds[start] else windowed
        x, _ = jax.lax.scan(body, x, jax.tree.map(lambda a, s=start, e=end: a[s:e], params))
        start = end
    return x


class VisionTower(nnx.Module):
    def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs | None, np_rng=None):
        self.config = config
        specs = vision_specs(config)
        kw = dict(dtype=jnp.dtype(config.param_dtype), init_std=config.vision.initializer_range,
                  rngs=rngs, np_rng=np_rng)
        self.patch_embed = ParamGroup(specs["patch_embed"], **kw)
        self.blocks = ParamGroup(specs["blocks"], **kw)
        self.merger = ParamGroup(specs["merger"], **kw)

    def __call__(self, pixel_values, pos_hw, win_idx, full_idx):
        """Batch-major: pixel_values [B, P, C*T*P*P] -> merged features [B, P/4, out_hidden]
        (see positions.vision_batch); each sample's row runs independently. On a mesh the rows
        are split like the activations' batch, which kernels under shard_map inside the tower
        (splash attention) are told through vmap's spmd_axis_name."""
        rows = mesh_axes_of("act_batch", pixel_values.shape[0])
        return jax.vmap(self.tower, spmd_axis_name=rows)(pixel_values, pos_hw, win_idx, full_idx)

    def tower(self, pixel_values, pos_hw, win_idx, full_idx):
        """One sample: pixel_values [N, C*T*P*P] in processor order -> [N/4, out_hidden].

        Windowed blocks attend within the rows of `win_idx`, full-attention blocks within the
        rows of `full_idx` (one per image frame); see positions.vision_attention_index."""
        vc = self.config.vision
        dtype = jnp.dtype(self.config.dtype)
        hd = vc.head_dim
        n = pixel_values.shape[0]
        x = pixel_values.astype(dtype) @ self.patch_embed.kernel[...].astype(dtype)

        # 2-D rotary table ("axial"): angles = concat(h * inv_freq, w * inv_freq), float32.
        inv = 1.0 / (vc.rope_theta ** (jnp.arange(0, hd // 2, 2, dtype=jnp.float32) / (hd // 2)))
        ang = jnp.concatenate([pos_hw[:, :1].astype(jnp.float32) * inv,
                               pos_hw[:, 1:].astype(jnp.float32) * inv], axis=-1)
        ang = jnp.concatenate([ang, ang], axis=-1)[:, None, :]  # [N, 1, hd]
        cos, sin = jnp.cos(ang), jnp.sin(ang)

        impl = self.config.attention_impl

        def make_block(idx):
            def block(x, p):
                p = _cast(p, dtype)
                h = rms_norm(x, p["norm1"], VISION_NORM_EPS)
                qkv = jnp.einsum("nd,dchk->nchk", h, p["qkv"]) + p["qkv_bias"]
                q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
                q32, k32 = q.astype(jnp.float32), k.astype(jnp.float32)
                q = (q32 * cos + rotate_half(q32) * sin).astype(dtype)
                k = (k32 * cos + rotate_half(k32) * sin).astype(dtype)
                a = grouped_attention(q, k, v, idx, impl=impl)
                x = x + jnp.einsum("nhk,hkd->nd", a, p["proj"]) + p["proj_bias"]
                h = rms_norm(x, p["norm2"], VISION_NORM_EPS)
                x = x + swiglu_mlp(h, p["gate"], p["up"], p["down"], p["gate_bias"],
                                   p["up_bias"]) + p["down_bias"]
                return x, None
            return _remat(block, self.config.remat)

        x = run_vision_blocks(x, self.blocks.arrays(), vc.depth, vc.fullatt_block_indexes,
                              make_block(win_idx), make_block(full_idx))

        m = _cast(self.merger.arrays(), dtype)
        y = rms_norm(x, m["ln_q"], VISION_NORM_EPS)
        y = y.reshape(n // vc.merge_unit, vc.merge_unit * vc.hidden_size)
        y = jax.nn.gelu(y @ m["fc1"] + m["fc1_bias"], approximate=False)
        return y @ m["fc2"] + m["fc2_bias"]


# ---------------------------------------------------------------------------- text decoder
def mrope_cos_sin(position_ids, config: Qwen25VLConfig, dtype):
    """position_ids (3, B, L) -> cos, sin [B, L, 1, head_dim] in `dtype` (contiguous sections)."""
    t = config.text
    hd = t.head_dim
    inv = 1.0 / (t.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))  # [hd/2]
    axis = np.repeat(np.arange(3), t.mrope_section)  # which of (t, h, w) drives frequency j
    pos = position_ids.astype(jnp.float32)[axis]  # [hd/2, B, L]
    ang = jnp.moveaxis(pos, 0, -1) * inv  # [B, L, hd/2]
    ang = jnp.concatenate([ang, ang], axis=-1)[:, :, None, :]
    return jnp.cos(ang).astype(dtype), jnp.sin(ang).astype(dtype)


_HEADS = ("act_batch", "act_length", "act_heads", None)
_KV_HEADS = ("act_batch", "act_length", "act_kv_heads", None)
# KV cache [layers, B, S, kv_heads, head_dim]: rows shard like the batch, heads like attention.
CACHE_AXES = ("layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim")


def _project_qkv(h, p, cos, sin):
    """A decoder layer's q, k, v ([B, L, heads, head_dim]) from normed h, M-RoPE applied."""
    q = shard_activation(jnp.einsum("ble,ehd->blhd", h, p["q"]) + p["q_bias"], _HEADS)
    k = shard_activation(jnp.einsum("ble,ehd->blhd", h, p["k"]) + p["k_bias"], _KV_HEADS)
    v = shard_activation(jnp.einsum("ble,ehd->blhd", h, p["v"]) + p["v_bias"], _KV_HEADS)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


def _attention_out_and_mlp(x, a, p, eps):
    """The rest of a decoder layer after attention: output projection, residual, MLP."""
    x = shard_activation(x + jnp.einsum("blhd,hde->ble", a, p["o"]), ACT_BLE)
    h = rms_norm(x, p["post_norm"], eps)
    mlp = swiglu_mlp(h, p["gate"], p["up"], p["down"],
                     axes=("act_batch", "act_length", "act_mlp"))
    return shard_activation(x + mlp, ACT_BLE)


class TextModel(nnx.Module):
    def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs | None, np_rng=None):
        self.config = config
        specs = text_specs(config)
        kw = dict(dtype=jnp.dtype(config.param_dtype), init_std=config.text.initializer_range,
                  rngs=rngs, np_rng=np_rng)
        top = specs["top"]
        self.embed = nnx.Param(ParamGroup({"w": top["embed"]}, **kw).w[...],
                               logical_axes=top["embed"].axes)
        self.layers = ParamGroup(specs["layers"], **kw)
        self.norm = nnx.Param(jnp.ones(top["norm"].shape, kw["dtype"]), logical_axes=("embed",))
        if "lm_head" in top:
            self.lm_head = nnx.Param(ParamGroup({"w": top["lm_head"]}, **kw).w[...],
                                     logical_axes=top["lm_head"].axes)

    def embed_tokens(self, input_ids):
        return jnp.take(self.embed[...], input_ids, axis=0).astype(jnp.dtype(self.config.dtype))

    def decoder(self, x, position_ids, attention_mask, *, return_kv: bool = False):
        """x [B, L, E] embeddings -> final-normed hidden states [B, L, E].

        With `return_kv` also the rotated keys and the values of every layer,
        [layers, B, L, kv_heads, head_dim] each: a sampler's prefill writes them to its cache."""
        tc = self.config.text
        dtype = x.dtype
        cos, sin = mrope_cos_sin(position_ids, self.config, dtype)
        mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
        impl = self.config.attention_impl
        eps = tc.rms_norm_eps

        def layer(x, p):
            p = _cast(p, dtype)
            q, k, v = _project_qkv(rms_norm(x, p["input_norm"], eps), p, cos, sin)
            a = dot_product_attention(q, k, v, mask=mask, is_causal=True, impl=impl)
            return _attention_out_and_mlp(x, a, p, eps), ((k, v) if return_kv else None)

        layer = _remat(layer, self.config.remat)
        x = shard_activation(x, ACT_BLE)
        x, kv = jax.lax.scan(layer, x, self.layers.arrays(), unroll=self.config.scan_unroll)
        x = rms_norm(x, self.norm[...], eps)
        return (x, kv) if return_kv else x

    def decode_step(self, x, position_ids, cache_k, cache_v, index, key_mask):
        """One new token per row against a static KV cache.

        x [B, 1, E] embeddings of the tokens fed now; position_ids (3, B, 1); cache_k, cache_v
        [layers, B, S, kv_heads, head_dim]; index: the cache slot (same for every row, prompts
        being left-padded) that receives this token's keys and values; key_mask [B, S] bool,
        the slots holding real tokens (slots past `index` are ignored whatever it says).
        Returns (final-normed hidden [B, 1, E], cache_k, cache_v). The caches travel through
        the layer scan as carries and are updated in place (dynamic_update_slice)."""
        if x.shape[1] != 1:
            raise ValueError(f"decode_step takes one token per row; got x of shape {x.shape}")
        tc = self.config.text
        dtype = x.dtype
        cos, sin = mrope_cos_sin(position_ids, self.config, dtype)
        s = cache_k.shape[2]
        mask = (key_mask.astype(bool) & (jnp.arange(s) <= index)[None, :])[:, None, None, :]
        eps = tc.rms_norm_eps

        def layer(carry, xs):
            x, ck, cv = carry
            p, i = xs
            p = _cast(p, dtype)
            q, k, v = _project_qkv(rms_norm(x, p["input_norm"], eps), p, cos, sin)
            start = (i, 0, index, 0, 0)
            ck = shard_activation(
                jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), start), CACHE_AXES)
            cv = shard_activation(
                jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), start), CACHE_AXES)
            keys = jax.lax.dynamic_index_in_dim(ck, i, 0, keepdims=False).astype(dtype)
            values = jax.lax.dynamic_index_in_dim(cv, i, 0, keepdims=False).astype(dtype)
            # one query against S keys: memory-bound, so the plain XLA path on every backend
            a = dot_product_attention(q, keys, values, mask=mask, impl="xla")
            return (_attention_out_and_mlp(x, a, p, eps), ck, cv), None

        n = tc.num_hidden_layers
        x = shard_activation(x, ACT_BLE)
        (x, cache_k, cache_v), _ = jax.lax.scan(
            layer, (x, cache_k, cache_v), (self.layers.arrays(), jnp.arange(n)))
        return rms_norm(x, self.norm[...], eps), cache_k, cache_v

    def head_weight(self, dtype) -> tuple[jax.Array, bool]:
        """(output projection in `dtype`, vocab_major): the tied embedding [V, E] (True) or
        lm_head [E, V] (False)."""
        if self.config.tie_word_embeddings:
            return self.embed[...].astype(dtype), True
        return self.lm_head[...].astype(dtype), False

    def logits(self, h):
        return project_logits(h, *self.head_weight(h.dtype))


# ---------------------------------------------------------------------------- the VLM
class Qwen25VL(nnx.Module):
    """Qwen2.5-VL for conditional generation.

    Call it like transformers' `Qwen2_5_VLForConditionalGeneration.forward`:
    `model(input_ids, attention_mask=..., pixel_values=..., image_grid_thw=...)` -> logits
    [B, L, vocab]. That entry point does the host-side index work (M-RoPE positions, vision
    segments) and then runs `forward`, which is pure array code suitable for `jit`.
    """

    def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs | None = None, seed: int = 0):
        """Random weights: from `rngs` (jax.random; use under jit or eval_shape) or, without
        it, from a numpy Generator seeded with `seed` (fast on the host, no compilation)."""
        np_rng = np.random.default_rng(seed) if rngs is None else None
        self.config = config
        self.visual = VisionTower(config, rngs=rngs, np_rng=np_rng)
        self.text = TextModel(config, rngs=rngs, np_rng=np_rng)

    # -- host side
    def prepare_inputs(self, input_ids, *, attention_mask=None, pixel_values=None,
                       image_grid_thw=None, position_ids=None, pixel_values_videos=None,
                       video_grid_thw=None, second_per_grid_ts=None,
                       **kw) -> dict[str, Any]:
        """Host-side work: validation, M-RoPE positions and vision segments, as numpy arrays.

        Images and videos share the vision rows: each sample's row holds its images' patches,
        then its videos' (docs/model.md#video)."""
        c = self.config
        unknown = sorted(k for k in kw if kw[k] is not None and k != "mm_token_type_ids")
        if unknown:
            raise TypeError(f"unexpected arguments: {unknown}")
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length]; got shape {ids.shape}")
        if (ids < 0).any() or (ids >= c.text.vocab_size).any():
            raise ValueError(f"input_ids hold ids outside [0, {c.text.vocab_size})")
        mask = (np.ones(ids.shape, np.int32) if attention_mask is None
                else np.asarray(attention_mask).reshape(ids.shape).astype(np.int32))
        out: dict[str, Any] = {"input_ids": ids.astype(np.int32), "attention_mask": mask}
        images = _check_visual(ids, mask, pixel_values, image_grid_thw, c, video=False)
        videos = _check_visual(ids, mask, pixel_values_videos, video_grid_thw, c, video=True)
        if second_per_grid_ts is not None and pixel_values_videos is None:
            raise ValueError("second_per_grid_ts given without pixel_values_videos")
        if images or videos:
            n_samples = ids.shape[0]
            pv, grid, per_sample = pos_lib.join_images_and_videos(
                pixel_values, image_grid_thw, images or [[]] * n_samples,
                pixel_values_videos, video_grid_thw, videos or [[]] * n_samples)
            out.update(pos_lib.vision_batch(pv, grid, per_sample, c))
        if position_ids is None:
            position_ids, _ = pos_lib.get_rope_index(
                ids, image_grid_thw if images else None, mask, c,
                video_grid_thw=video_grid_thw if videos else None,
                second_per_grid_ts=second_per_grid_ts if videos else None)
        else:
            position_ids = np.asarray(position_ids)
            if position_ids.ndim == 2:
                position_ids = np.broadcast_to(position_ids[None], (3,) + position_ids.shape)
            if position_ids.shape != (3,) + ids.shape:
                raise ValueError(f"position_ids must be (3, B, L) or (B, L); got "
                                 f"{position_ids.shape} for input_ids {ids.shape}")
        out["position_ids"] = np.asarray(position_ids, np.int32)
        return out

    def __call__(self, input_ids, *, attention_mask=None, pixel_values=None, image_grid_thw=None,
                 position_ids=None, pixel_values_videos=None, video_grid_thw=None,
                 second_per_grid_ts=None, **kw):
        batch = self.prepare_inputs(input_ids, attention_mask=attention_mask,
                                    pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                                    position_ids=position_ids,
                                    pixel_values_videos=pixel_values_videos,
                                    video_grid_thw=video_grid_thw,
                                    second_per_grid_ts=second_per_grid_ts, **kw)
        return _jitted_forward(self, batch)

    # -- device side (pure array code)
    def embed(self, input_ids, pixel_values=None, pos_hw=None, win_idx=None, full_idx=None):
        x = self.text.embed_tokens(input_ids)
        if pixel_values is None:
            return x
        feats = self.visual(pixel_values, pos_hw, win_idx, full_idx).astype(x.dtype)
        # a sample's row holds its images' features, then its videos': the k-th image token
        # takes feature k, the k-th video token feature (image tokens of the sample) + k
        is_img = input_ids == self.config.image_token_id
        is_vid = input_ids == self.config.video_token_id
        idx = jnp.where(is_vid, jnp.sum(is_img, axis=1, keepdims=True) + jnp.cumsum(is_vid, axis=1),
                        jnp.cumsum(is_img, axis=1))
        idx = jnp.clip(idx - 1, 0, feats.shape[1] - 1)
        picked = jnp.take_along_axis(feats, idx[..., None], axis=1)
        return jnp.where((is_img | is_vid)[..., None], picked, x)

    def hidden_states(self, input_ids, attention_mask, position_ids, pixel_values=None,
                      pos_hw=None, win_idx=None, full_idx=None):
        x = self.embed(input_ids, pixel_values, pos_hw, win_idx, full_idx)
        return self.text.decoder(x, position_ids, attention_mask)

    def forward(self, input_ids, attention_mask, position_ids, pixel_values=None, pos_hw=None,
                win_idx=None, full_idx=None):
        h = self.hidden_states(input_ids, attention_mask, position_ids, pixel_values, pos_hw,
                               win_idx, full_idx)
        return self.text.logits(h)


def _check_visual(ids, mask, pixel_values, grid_thw, c: Qwen25VLConfig, *, video: bool):
    """Validates one modality's patches against its grids and tokens; -> which items each
    sample uses (None when the modality is absent)."""
    what, pv_name = ("video", "pixel_values_videos") if video else ("image", "pixel_values")
    token = c.video_token_id if video else c.image_token_id
    n_tok = int((ids == token).sum())
    if pixel_values is None:
        if grid_thw is not None and len(np.asarray(grid_thw).reshape(-1, 3)):
            raise ValueError(f"{what}_grid_thw given without {pv_name}")
        if n_tok:
            raise ValueError(f"input_ids hold {n_tok} {what} tokens but no {pv_name}")
        return None
    if grid_thw is None:
        raise ValueError(f"{pv_name} given without {what}_grid_thw")
    grid = np.asarray(grid_thw).reshape(-1, 3)
    n_patch = int(np.prod(grid, axis=1).sum())
    if tuple(pixel_values.shape) != (n_patch, c.vision.patch_dim):
        raise ValueError(
            f"{pv_name} has shape {tuple(pixel_values.shape)}; {what}_grid_thw {grid.tolist()} "
            f"needs ({n_patch}, {c.vision.patch_dim})")
    expected = n_patch // c.vision.merge_unit
    if n_tok != expected:
        raise ValueError(
            f"{what.capitalize()} features and {what} tokens do not match: input_ids hold "
            f"{n_tok} {what} tokens (id {token}) but {what}_grid_thw {grid.tolist()} gives "
            f"{expected} features")
    return pos_lib.split_images_by_sample(ids, grid, c, mask, video=video)


@nnx.jit
def _jitted_forward(model: Qwen25VL, batch):
    return model.forward(**batch)


def init_model(config: Qwen25VLConfig, seed: int = 0, *, mesh=None, rules=None) -> Qwen25VL:
    """Random weights (normal with the config's initializer_range; norms 1, biases 0).

    Without a mesh: drawn on the host with numpy. With a mesh: drawn by jax.random under
    `jit(out_shardings=...)`, so each device creates only its shards (different values from
    the host path for the same seed)."""
    if mesh is None:
        return Qwen25VL(config, seed=seed)
    from guard_jax.models.qwen2_5_vl.placement import init_sharded
    from guard_jax.sharding import TRAIN_RULES
    return init_sharded(config, mesh, seed=seed, rules=rules or TRAIN_RULES)


def abstract_model(config: Qwen25VLConfig) -> Qwen25VL:
    """Shapes and dtypes only; nothing is allocated."""
    return nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0)))


__all__ = ["Qwen25VL", "init_model", "abstract_model", "rms_norm", "mrope_cos_sin", "project_logits",
           "LOGIT_AXES"]
