"""`guard-jax bench sft`: SFT training throughput of ours against transformers + torch.

Ours is the step `guard-jax train` runs, built the same way from a run config (model_config,
init_model on a mesh, make_optimizer, init_train_state, make_train_step) on ONE device, fed a
synthetic loader batch (data_pipeline's pad_batch output: images, right padding, an
assistant-only loss mask) through `to_model_batch` every step, as the training loop does.

The peer is transformers' Qwen2_5_VLForConditionalGeneration loaded from our HF export of the
same initial weights, trained on the same batch with the same loss (mean cross-entropy over the
same tokens, via labels = -100 outside the loss mask), torch.optim.AdamW with the optimizer
section's hyperparameters, the same learning-rate schedule values, global-norm clipping and
gradient accumulation, in the same dtype, with torch using as many threads as the cores.

Both sides time the same number of micro-steps after one warm-up step; the first-step losses
must agree (the weights and the batch are the same), else the run fails. With --mfu on a GPU, the
3B SFT config's step is timed alone and reported as MFU (guard_jax/bench/flops.py conventions).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from typing import Any

import numpy as np

from guard_jax.bench import flops as flops_lib
from guard_jax.bench.model_bench import (
    _fmt_s, _table, cpu_cores, describe, image_grid, progress, summarize, time_steps)
from guard_jax.errors import InputError

DEFAULT_CONFIG = "configs/tiny_sft.py"
DEFAULT_MFU_CONFIG = "configs/guardreasoner_vl_sft_3b.py"


# ---------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config", default=DEFAULT_CONFIG,
      help=f"run config whose model, data shapes and optimizer are benchmarked "
           f"({DEFAULT_CONFIG}); --config.a.b=v overrides a field as in `guard-jax train`. "
           "The step runs on one device whatever mesh the config names.")
    a("--steps", type=int, default=5,
      help="timed micro-steps per side after one warm-up step; the median is reported (5)")
    a("--min-fill", type=float, default=0.75,
      help="each synthetic sequence holds between this fraction of data.seq_len and all of it "
           "in real tokens, the rest is padding (0.75)")
    a("--seed", type=int, default=0, help="seed of the synthetic batch (0)")
    a("--threads", type=int, default=0,
      help="torch intra-op threads (default: the CPU cores this process may use)")
    a("--interleave", action="store_true",
      help="alternate our steps and torch's instead of timing one side after the other "
           "(spreads a varying load over both sides, but each torch step then starts while "
           "XLA's worker threads may still be spinning, which favours ours)")
    a("--skip-torch", action="store_true", help="time ours only (no ratio, no loss check)")
    a("--loss-rtol", type=float, default=1e-3,
      help="largest relative difference of the first-step losses before the run fails (1e-3)")
    a("--profile", metavar="DIR", default=None,
      help="also trace 3 of our steps with jax.profiler into DIR (Perfetto trace)")
    a("--mfu", action="store_true",
      help="on a GPU: time the 3B SFT config's step on one device and print MFU")
    a("--mfu-config", default=DEFAULT_MFU_CONFIG,
      help=f"run config for --mfu ({DEFAULT_MFU_CONFIG}); its dtype and remat are used as is")
    a("--mfu-set", action="append", default=[], metavar="KEY=VALUE",
      help="override a field of the --mfu config (e.g. train.micro_batch=1); repeatable")
    a("--mfu-steps", type=int, default=10, help="timed steps for --mfu (10)")
    a("--mfu-only", action="store_true", help="with --mfu: skip the side-by-side comparison")
    a("--json", metavar="PATH", help="also write every number to this JSON file")
    parser.set_defaults(overrides=[])  # --config.a.b=value arguments land here (see cli.py)


# ---------------------------------------------------------------------------- synthetic batch
def image_side(run) -> int:
    """The largest square image (a multiple of 28 px) within data.max_pixels; 0 = text only."""
    if run.data.images_per_sample <= 0:
        return 0
    return math.isqrt(int(run.data.max_pixels)) // 28 * 28


def synthetic_batch(mc, *, batch: int, seq_len: int, images_per_sample: int, image_size: int,
                    min_fill: float = 0.75, seed: int = 0) -> dict[str, np.ndarray]:
    """A loader batch as data_pipeline.loader.pad_batch makes it: per sample a few text tokens,
    `images_per_sample` square images (<vision_start>, image tokens, <vision_end>), prompt text,
    then the assistant target (the last third of the text, the only loss tokens), right-padded
    to seq_len with random real lengths in [min_fill * seq_len, seq_len]."""
    from data_pipeline.loader import LoaderConfig, pad_batch

    if not 0.0 < min_fill <= 1.0:
        raise InputError(f"--min-fill {min_fill} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    grid = image_grid(mc, image_size) if images_per_sample else None
    n_patch = int(np.prod(grid)) if grid else 0
    n_img_tok = n_patch // mc.vision.merge_unit
    image_part = ([mc.vision_start_token_id] + [mc.image_token_id] * n_img_tok
                  + [mc.vision_end_token_id]) * (images_per_sample if grid else 0)
    specials = (mc.image_token_id, mc.video_token_id, mc.vision_start_token_id,
                mc.vision_end_token_id, mc.vision_token_id)
    high = min(min(specials), mc.text.vocab_size)
    shortest = len(image_part) + 4
    if seq_len < shortest:
        raise InputError(f"data.seq_len {seq_len} cannot hold {images_per_sample} image(s) of "
                         f"{image_size} px ({len(image_part)} tokens) and a target")
    n_images = images_per_sample if grid else 0
    examples = []
    for i in range(batch):
        n = int(rng.integers(max(shortest, math.ceil(min_fill * seq_len)), seq_len + 1))
        text = rng.integers(0, high, n - len(image_part))
        head = min(4, len(text) // 2)
        ids = np.concatenate([text[:head], image_part, text[head:]]).astype(np.int32)
        loss_mask = np.zeros(n, np.int32)
        loss_mask[n - max(1, (len(text) - head) // 3):] = 1
        grids = np.zeros((max(images_per_sample, 1), 3), np.int32)
        grids[:n_images] = grid if grid else 0
        pv = rng.standard_normal((n_images * n_patch, mc.vision.patch_dim)).astype(np.float32)
        examples.append({"input_ids": ids, "loss_mask": loss_mask, "pixel_values": pv,
                         "image_grid_thw": grids, "num_images": np.int32(n_images),
                         "id": f"synthetic-{i}"})
    cfg = LoaderConfig(recipe="synthetic", buckets=(seq_len,), batch_size=batch,
                       images_per_sample=max(images_per_sample, 1),
                       max_pixels=max(image_size * image_size, 196),
                       pad_id=mc.generation_pad_id)
    return pad_batch(examples, cfg)


def flat_images(batch) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Loader batch -> transformers' image inputs: the real patches of all images, flattened
    in sample order, and their grid rows."""
    grids = [np.asarray(batch["image_grid_thw"][i][:int(n)])
             for i, n in enumerate(batch["num_images"])]
    if not sum(len(g) for g in grids):
        return None, None
    rows = [batch["pixel_values"][i, :int(np.prod(g, axis=1).sum())]
            for i, g in enumerate(grids)]
    return np.concatenate(rows), np.concatenate([g for g in grids if len(g)])


# ---------------------------------------------------------------------------- memory
def reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM) from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_peak_bytes() -> int | None:
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


# ---------------------------------------------------------------------------- ours
class _Runner:
    """Per-step bookkeeping both sides share: every micro-step's loss, and the first step's
    time (compilation or warm-up)."""

    def __init__(self):
        self.losses: list[float] = []
        self.first_step_s: float | None = None

    def _record(self, loss: float, t0: float) -> float:
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - t0
        self.losses.append(loss)
        return loss

    def info(self) -> dict[str, Any]:
        return {"first_step_s": self.first_step_s, "losses": self.losses}


class OursSFT(_Runner):
    """The train step of `guard-jax train` on one device. `step()` runs one micro-step on the
    batch (host preparation included) and blocks until the new state is ready."""

    def __init__(self, run, loader_batch, *, export_dir: str | None = None,
                 host_init: bool = False):
        """host_init: draw the random weights on the host (numpy, no compilation: the values
        are needed on the host for the export anyway) and place them on the mesh, instead of
        `guard-jax train`'s jitted on-device init; the train step is built the same either way."""
        import jax

        from guard_jax.models.qwen2_5_vl import init_model, save_hf
        from guard_jax.models.qwen2_5_vl.placement import shard_model
        from guard_jax.run_config import model_config
        from guard_jax.sharding import make_mesh
        from guard_jax.training.sft import initial_model, train_components
        from guard_jax.training.train_step import make_train_step

        self.mc = mc = model_config(run)
        mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
        self.accum = run.train.global_batch // run.train.micro_batch
        with progress(f"ours: initialising {mc.param_dtype} parameters"):
            if host_init and not run.model.hf_dir:
                model = shard_model(init_model(mc, seed=run.train.seed), mesh)
            else:
                model = initial_model(run, mc, mesh)
        if export_dir:
            with progress("ours: exporting the initial weights for torch"):
                save_hf(model, export_dir, progress=False)
        self.graphdef, self.state, self.tx, self.schedule, lora = train_components(run, model,
                                                                                   mesh)
        del model
        self.step_fn = make_train_step(self.graphdef, self.tx, mesh=mesh, state=self.state,
                                       lora=lora)
        self.loader_batch = loader_batch
        self.prepare_s: list[float] = []
        super().__init__()

    def step(self) -> float:
        import jax
        from guard_jax.training.batch import to_model_batch
        t0 = time.perf_counter()
        batch = to_model_batch(self.loader_batch, self.mc)
        self.prepare_s.append(time.perf_counter() - t0)
        self.state, metrics = self.step_fn(self.state, batch)
        loss = float(metrics["loss"])
        jax.block_until_ready(self.state)
        return self._record(loss, t0)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "host_prepare_median_s": float(np.median(self.prepare_s)),
                "gradient_accumulation": self.accum}


# ---------------------------------------------------------------------------- torch
def torch_peer_problems(run, mc) -> list[str]:
    """Settings of the run that the torch peer does not mirror."""
    out = []
    if mc.param_dtype != mc.dtype:
        out.append(f"model.param_dtype {mc.param_dtype} != model.dtype {mc.dtype} (mixed "
                   "precision)")
    if run.optim.mu_dtype:
        out.append(f"optim.mu_dtype={run.optim.mu_dtype!r}")
    if run.optim.freeze:
        out.append(f"optim.freeze={run.optim.freeze!r}")
    if run.optim.name != "adamw":
        out.append(f"optim.name={run.optim.name!r}")
    return out


class TorchSFT(_Runner):
    """transformers' Qwen2_5_VLForConditionalGeneration with torch.optim.AdamW, mirroring the
    run config's optimizer section; one `step()` is one micro-step."""

    def __init__(self, hf_dir: str, mc, run, loader_batch, schedule, accum: int, threads: int,
                 device: str = "cpu"):
        import torch
        from transformers import Qwen2_5_VLForConditionalGeneration

        torch.set_num_threads(threads)
        self.threads, self.device = threads, device
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[mc.param_dtype]
        with progress("torch: loading our export into transformers"):
            model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                hf_dir, dtype=tdtype, output_loading_info=True)
        bad = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
               if info.get(k)}
        if bad:
            raise RuntimeError(f"{hf_dir}: transformers did not load our export cleanly: {bad}")
        self.model = model.to(device).train()
        o = run.optim
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=float(schedule(0)), betas=(o.b1, o.b2),
                                     eps=o.eps, weight_decay=o.weight_decay)
        self.clip, self.schedule, self.accum = o.grad_clip, schedule, accum
        ids = torch.as_tensor(loader_batch["input_ids"], dtype=torch.long)
        loss_mask = torch.as_tensor(loader_batch["loss_mask"], dtype=torch.long)
        # transformers shifts labels itself: position i's label is token i where it is a loss
        # token, which is what our shifted labels and loss mask say.
        self.kw = {"input_ids": ids, "labels": ids.masked_fill(loss_mask == 0, -100),
                   "attention_mask": torch.as_tensor(loader_batch["attention_mask"],
                                                     dtype=torch.long),
                   "use_cache": False}
        pv, grids = flat_images(loader_batch)
        if pv is not None:
            self.kw["pixel_values"] = torch.as_tensor(pv).to(tdtype)
            self.kw["image_grid_thw"] = torch.as_tensor(grids, dtype=torch.long)
            self.kw["mm_token_type_ids"] = (ids == mc.image_token_id).long()
        self.kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                   for k, v in self.kw.items()}
        self.micro = self.updates = 0
        super().__init__()

    def step(self) -> float:
        import torch
        t0 = time.perf_counter()
        self.model.model.rope_deltas = None
        out = self.model(**self.kw)
        (out.loss / self.accum).backward()
        self.micro += 1
        if self.micro % self.accum == 0:
            if self.clip and self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            for g in self.opt.param_groups:
                g["lr"] = float(self.schedule(self.updates))
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.updates += 1
        return self._record(float(out.loss.detach()), t0)

    def info(self) -> dict[str, Any]:
        import torch
        return {**super().info(), "threads": self.threads, "torch_version": torch.__version__,
                "device": self.device,
                "attn_implementation": str(self.model.config._attn_implementation)}


# ---------------------------------------------------------------------------- timing
def throughput(side: dict[str, Any], tokens: int, loss_tokens: int) -> None:
    side["tokens_per_s"] = tokens / side["median_s"]
    side["loss_tokens_per_s"] = loss_tokens / side["median_s"]


def run_side(name: str, runner, steps: int) -> dict[str, Any]:
    reset_peak_rss()
    times = time_steps({name: runner}, steps)[name]
    return {**runner.info(), **summarize(times), "peak_rss_bytes": peak_rss_bytes()}


def batch_info(run, mc, lb) -> dict[str, Any]:
    grids = [list(map(int, g)) for i, n in enumerate(lb["num_images"])
             for g in lb["image_grid_thw"][i][:int(n)]]
    return {"micro_batch": int(lb["input_ids"].shape[0]), "seq_len": int(lb["input_ids"].shape[1]),
            "tokens": int(lb["attention_mask"].sum()), "loss_tokens": int(lb["loss_mask"].sum()),
            "padded_tokens": int(lb["input_ids"].size),
            "image_tokens": int((lb["input_ids"] == mc.image_token_id).sum()),
            "images": len(grids), "patches": int(sum(t * h * w for t, h, w in grids)),
            "grids": grids}


def check_losses(ours: list[float], torch_: list[float], rtol: float) -> dict[str, Any]:
    rel = abs(ours[0] - torch_[0]) / max(abs(torch_[0]), 1e-12)
    n = min(len(ours), len(torch_))
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours[:n], torch_[:n]))
    return {"ours_first": ours[0], "torch_first": torch_[0], "rel_diff": rel, "rtol": rtol,
            "max_rel_diff_all_steps": worst, "ok": rel <= rtol}


def run_mfu(run, steps: int, seed: int) -> dict[str, Any]:
    """Our step alone on the GPU, full-length sequences; MFU against the device's peak."""
    import jax
    kind = jax.devices()[0].device_kind
    from guard_jax.run_config import model_config
    mc = model_config(run)
    lb = synthetic_batch(mc, batch=run.train.micro_batch, seq_len=run.data.seq_len,
                         images_per_sample=run.data.images_per_sample,
                         image_size=image_side(run), min_fill=1.0, seed=seed)
    info = batch_info(run, mc, lb)
    ours = OursSFT(run, lb)
    side = run_side("mfu", ours, steps)
    del ours
    fl = flops_lib.train_step_flops(mc, info["seq_len"], info["micro_batch"], info["grids"])
    peak = flops_lib.peak_flops(kind)
    throughput(side, info["tokens"], info["loss_tokens"])
    out = {"device_kind": kind, "peak_flops": peak, "config": describe(mc),
           "param_dtype": mc.param_dtype, "dtype": mc.dtype, "remat": mc.remat,
           "attention_impl": mc.attention_impl, "batch": info, "ours": side,
           "model_flops_per_step": fl["train_step"], "flops": fl,
           "device_peak_bytes": device_peak_bytes()}
    out["mfu"] = flops_lib.mfu(fl["train_step"], side["median_s"], peak) if peak else None
    return out


# ---------------------------------------------------------------------------- report
def _mib(x):
    return "-" if x is None else f"{x / 2**20:.0f} MiB"


def report(res: dict[str, Any]) -> str:
    out = []
    if "ours" in res:
        out.extend(report_side_by_side(res))
    m = res.get("mfu")
    if m is not None:
        out.append("")
        if "skipped" in m:
            out.append(f"MFU: skipped ({m['skipped']})")
        else:
            mb = m["batch"]
            out.append(f"MFU: {m['config_path']} {' '.join(m['overrides'])}; {m['config']}; "
                       f"{m['param_dtype']} params, {m['dtype']} compute, remat {m['remat']}, "
                       f"attention {m['attention_impl']}, batch {mb['micro_batch']} x "
                       f"{mb['seq_len']} ({mb['image_tokens']} image tokens), on "
                       f"{m['device_kind']}")
            rows = [("median step", _fmt_s(m["ours"]["median_s"])),
                    ("tokens/s", f"{m['ours']['tokens_per_s']:.0f}"),
                    ("model FLOPs/step", f"{m['model_flops_per_step'] / 1e12:.2f} T"),
                    ("device peak memory", _mib(m["device_peak_bytes"])),
                    ("MFU (recompute not counted)",
                     f"{100 * m['mfu']:.1f} %" if m["mfu"] is not None else "-")]
            out.append(_table(rows, ("", "value")))
    if "ratio" in res:  # the headline figure (medians) closes the report
        out.append(f"sft tokens/s ours/torch = {res['ratio']:.2f}x")
    return "\n".join(out).strip("\n") + "\n"


def report_side_by_side(res: dict[str, Any]) -> list[str]:
    out = []
    b, ours, torch_ = res["batch"], res["ours"], res.get("torch")
    out.append(f"SFT micro-step, {res['config_path']} {' '.join(res['overrides'])}".rstrip())
    out.append(f"  model: {res['model']}; {res['dtype']}, remat {res['remat']}, backend "
               f"{res['backend']}")
    out.append(f"  batch {b['micro_batch']} x {b['seq_len']}: {b['tokens']} tokens "
               f"({b['loss_tokens']} loss tokens, {b['image_tokens']} image tokens from "
               f"{b['images']} images / {b['patches']} patches), gradient accumulation "
               f"{ours['gradient_accumulation']}")
    cols = [ours] + ([torch_] if torch_ else [])

    def row(label, fn):
        return (label, *(fn(s) for s in cols))

    rows = [row("median step", lambda s: _fmt_s(s["median_s"])),
            row("min / max", lambda s: f"{_fmt_s(s['min_s'])} / {_fmt_s(s['max_s'])}"),
            row("first step (warm-up)", lambda s: _fmt_s(s["first_step_s"])),
            row("tokens/s", lambda s: f"{s['tokens_per_s']:.0f}"),
            row("loss tokens/s", lambda s: f"{s['loss_tokens_per_s']:.0f}"),
            row("first / last loss", lambda s: f"{s['losses'][0]:.6f} / {s['losses'][-1]:.6f}"),
            row("peak RSS (process)", lambda s: _mib(s["peak_rss_bytes"]))]
    rows.insert(3, ("host batch prep (median)", _fmt_s(ours["host_prepare_median_s"]))
                + (("inside its forward",) if torch_ else ()))
    header = ("", "ours (guard-jax train step)") + (("transformers+torch",) if torch_ else ())
    out.append(_table(rows, header))
    if torch_:
        lc = res["loss_check"]
        out.append(f"first-step loss ours {lc['ours_first']:.6f} vs torch {lc['torch_first']:.6f}:"
                   f" relative difference {lc['rel_diff']:.2e} "
                   f"({'within' if lc['ok'] else 'OVER'} {lc['rtol']:g}); largest over all "
                   f"steps {lc['max_rel_diff_all_steps']:.2e}")
        order = "interleaved" if res["interleaved"] else "one side after the other"
        out.append(f"torch {torch_['torch_version']} on {torch_['device']}, {torch_['threads']} "
                   f"threads, attention '{torch_['attn_implementation']}'; "
                   f"{len(ours['times_s'])} timed steps each after 1 warm-up, {order}")
        out.append(f"fastest step of each side: ours/torch = {res['ratio_min']:.2f}x")
    return out


# ---------------------------------------------------------------------------- main
def side_by_side(args, run, res: dict[str, Any]) -> None:
    """Ours and torch on the same config, weights and batch; fills res in place."""
    import jax
    from guard_jax.run_config import model_config

    mc = model_config(run)
    problems = [] if args.skip_torch else torch_peer_problems(run, mc)
    if problems:
        raise InputError("the torch peer cannot mirror " + "; ".join(problems)
                         + " (use --skip-torch to time ours alone)")
    lb = synthetic_batch(mc, batch=run.train.micro_batch, seq_len=run.data.seq_len,
                         images_per_sample=run.data.images_per_sample,
                         image_size=image_side(run), min_fill=args.min_fill, seed=args.seed)
    info = batch_info(run, mc, lb)
    res.update({"config_path": args.config, "overrides": list(args.overrides),
                "model": describe(mc), "dtype": mc.dtype, "param_dtype": mc.param_dtype,
                "remat": mc.remat, "interleaved": bool(args.interleave), "batch": info})
    print(f"bench sft: {describe(mc)}", file=sys.stderr)
    threads = args.threads or cpu_cores()
    device = "cpu" if jax.default_backend() == "cpu" else "cuda"
    if device == "cuda" and not args.skip_torch:
        import torch
        if not torch.cuda.is_available():
            raise InputError("jax runs on the GPU but this torch has no CUDA; use "
                             "--skip-torch (or --mfu --mfu-only)")
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        export = None if args.skip_torch else os.path.join(tmp, "hf")
        ours = OursSFT(run, lb, export_dir=export, host_init=True)
        if args.skip_torch:
            res["ours"] = run_side("ours", ours, args.steps)
        elif args.interleave:
            peer = TorchSFT(export, mc, run, lb, ours.schedule, ours.accum, threads, device)
            reset_peak_rss()
            times = time_steps({"ours": ours, "torch": peer}, args.steps, interleave=True)
            for k, r in (("ours", ours), ("torch", peer)):
                res[k] = {**r.info(), **summarize(times[k]), "peak_rss_bytes": peak_rss_bytes()}
        else:
            res["ours"] = run_side("ours", ours, args.steps)
            schedule, accum = ours.schedule, ours.accum
            if not args.profile:
                del ours  # torch's peak memory without our state alive
            peer = TorchSFT(export, mc, run, lb, schedule, accum, threads, device)
            res["torch"] = run_side("torch", peer, args.steps)
        if args.profile:
            with progress(f"ours: tracing 3 steps into {args.profile}"):
                with jax.profiler.trace(args.profile, create_perfetto_trace=True):
                    for _ in range(3):
                        ours.step()
    for k in ("ours", "torch"):
        if k in res:
            throughput(res[k], info["tokens"], info["loss_tokens"])
    if "torch" in res:
        res["ratio"] = res["ours"]["tokens_per_s"] / res["torch"]["tokens_per_s"]
        res["ratio_min"] = res["torch"]["min_s"] / res["ours"]["min_s"]  # fastest step each
        res["loss_check"] = check_losses(res["ours"]["losses"], res["torch"]["losses"],
                                         args.loss_rtol)


def main(args: argparse.Namespace) -> int:
    import jax

    from guard_jax.run_config import load_config

    run = load_config(args.config, args.overrides)  # validated before any device work
    res: dict[str, Any] = {"backend": jax.default_backend(), "jax_version": jax.__version__,
                           "devices": [d.device_kind for d in jax.devices()][:1],
                           "cpu_cores": cpu_cores(), "python": platform.python_version()}
    if not (args.mfu and args.mfu_only):
        side_by_side(args, run, res)
    if args.mfu:
        if jax.default_backend() != "gpu":
            res["mfu"] = {"skipped": f"no GPU (backend {jax.default_backend()})"}
        else:
            if not os.path.isfile(args.mfu_config):
                raise InputError(f"--mfu-config {args.mfu_config} does not exist; name a "
                                 "3B SFT config with --mfu-config (or configs/tiny_sft.py with "
                                 "--mfu-set model.preset=3b --mfu-set model.dtype=bfloat16 ...)")
            mrun = load_config(args.mfu_config, args.mfu_set)
            res["mfu"] = {"config_path": args.mfu_config, "overrides": list(args.mfu_set),
                          **run_mfu(mrun, args.mfu_steps, args.seed)}

    print(report(res), end="")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    lc = res.get("loss_check")
    if lc and not lc["ok"]:
        print(f"bench sft: FAILED: first-step losses differ (ours {lc['ours_first']:.6f}, torch "
              f"{lc['torch_first']:.6f}, relative {lc['rel_diff']:.2e} > {lc['rtol']:g}): the "
              "two sides do not run the same computation, so the ratio means nothing",
              file=sys.stderr)
        return 1
    return 0
