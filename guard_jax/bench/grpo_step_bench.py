"""`guard-jax bench grpo-step`: one whole GRPO step of ours against TRL's `GRPOTrainer`, on the
same exported model, prompts (one image each), G, forced completion length and settings.

Each side runs in its own process (so resident memory is its own), one after the other: a
warm-up step, then --steps timed steps. Per step: the time and peak resident memory (RSS
sampled every few milliseconds) of each phase: rollout, old log-probs, ref log-probs (KL on),
reward, update, other (the rest of the step). The phases add up to the step.

Ours runs the trainer's own programs (training/grpo.py: the rollout engine, the log-prob and
update jits on a mesh of the local devices) in the order `GRPOTrainer.step` does, with random
rewards; the old-log-prob forward follows `grpo.skip_old_logprob`. TRL is an optional
dependency (`pip install 'guard-jax[bench-trl]'`, or --trl-python naming another interpreter
that has it); without it the bench says so and measures ours alone. Both sides generate
exactly --new-tokens tokens (ours: an end-of-sequence id outside the vocabulary; TRL:
min_new_tokens), or with --lengths guard row r exactly targets[r] tokens (ours: the engine's
target lengths, or for an engine without them the full length with the mask cut there; TRL: a
logits processor that bans its EOS ids before the row's target and forces one there), and take
one optimizer step per rollout batch (TRL: num_iterations 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

PHASES = ("rollout", "old_logprob", "ref", "reward", "update", "other")
SIDES = ("ours", "trl")
TRL_MISSING = ("TRL is not installed for {python}: pip install 'guard-jax[bench-trl]' (or pass "
               "--trl-python PATH of an environment that has trl)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--config-size", choices=("small", "tiny_qwen"), default="small",
      help="model: 'small' (text 512 x 4 layers, the real 151,936 vocabulary; default) or "
           "'tiny_qwen' (2 layers, the real vocabulary); exported with the Qwen2.5-VL tokenizer")
    a("--prompts", type=int, default=2, help="prompts per step (2)")
    a("--generations", type=int, default=4, help="G, samples per prompt (4)")
    a("--new-tokens", type=int, default=32,
      help="completion tokens (the most with --lengths guard), forced on both sides (32)")
    a("--lengths", choices=("fixed", "guard"), default="fixed",
      help="fixed: every completion --new-tokens long; guard: per-row lengths from a "
           "long-tailed log-normal (median new-tokens / 4, sigma 1, the longest at the cap, "
           "as `bench rollout --lengths guard`), forced on both sides (fixed)")
    a("--image-size", type=int, default=224, help="side of one square image per prompt (224)")
    a("--kl-coef", type=float, default=0.0, help="KL loss coefficient (> 0: a ref pass; 0)")
    a("--skip-old-logprob", choices=("auto", "never"), default="auto",
      help="ours: grpo.skip_old_logprob (docs/grpo.md#old-log-probs) (auto)")
    a("--slots", type=int, default=0,
      help="ours: decode slots of the continuous engine (grpo.rollout_slots; 0 = half the rows)")
    a("--head", choices=("filled", "all"), default="filled",
      help="ours: the output projection at the filled completion positions only "
           "(grpo.compact_head, docs/grpo.md#output-projection-over-filled-positions) or at all "
           "of them (filled)")
    a("--engine", default="static", help="ours: rollout engine (sampling/engines.py; static)")
    a("--steps", type=int, default=2, help="timed steps per side after one warm-up (2)")
    a("--threads", type=int, default=0, help="torch threads on the TRL side (default: all)")
    a("--sides", default="ours,trl", help="comma list of sides to run (ours,trl)")
    a("--trl-python", default="", help="interpreter for the TRL side (default: this one)")
    a("--json", metavar="PATH", help="also write every number to this JSON file")


# ---------------------------------------------------------------------------- phase clock
def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PhaseClock:
    """Time and peak RSS per named phase of a step; a thread samples RSS every `period` s and
    charges it to the phase running then ("other" outside any)."""

    def __init__(self, period: float = 0.005):
        self.current = "other"
        self.peak = {p: 0 for p in PHASES}
        self.times = {p: 0.0 for p in PHASES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(period,), daemon=True)
        self._thread.start()

    def _sample(self, period):
        while not self._stop.wait(period):
            p = self.current
            self.peak[p] = max(self.peak[p], rss_bytes())

    @contextlib.contextmanager
    def phase(self, name: str):
        outer, self.current = self.current, name
        self.peak[name] = max(self.peak[name], rss_bytes())
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] += time.perf_counter() - t0
            self.peak[name] = max(self.peak[name], rss_bytes())
            self.current = outer

    def reset(self):
        self.peak = {p: 0 for p in PHASES}
        self.times = {p: 0.0 for p in PHASES}

    def step_record(self, step_s: float) -> dict:
        named = sum(v for k, v in self.times.items() if k != "other")
        times = dict(self.times, other=max(step_s - named, 0.0))
        return {"step_s": named + times["other"], "phase_s": times,
                "phase_peak_rss_bytes": dict(self.peak),
                "peak_rss_bytes": max(self.peak.values())}

    def close(self):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- shared inputs
def export_model(size: str, out: str) -> str:
    """The model with random weights (seed 0) as an HF directory with the Qwen2.5-VL tokenizer
    and processor files: what both sides load."""
    import guard_jax
    from data_pipeline.qwen_tokenizer import write_qwen2_5_vl_tokenizer_dir
    from guard_jax.bench.model_bench import make_config
    tok = write_qwen2_5_vl_tokenizer_dir(os.path.join(out, "tok"))
    return str(guard_jax.save_hf(guard_jax.init_model(make_config(size), seed=0),
                                 os.path.join(out, "hf"), assets_from=str(tok), progress=False))


def prompts(n: int, image_size: int, seed: int = 0):
    """n (chat messages, PIL image) pairs: one random image and a moderation question each."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), np.uint8))
        text = f"Request {i}: is the content of this image safe? Explain, then answer."
        out.append(([{"role": "user", "content": [{"type": "image"},
                                                   {"type": "text", "text": text}]}], img))
    return out


# ---------------------------------------------------------------------------- our side
def run_ours(spec: dict, clock: PhaseClock) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from guard_jax.models.qwen2_5_vl import load_hf
    from guard_jax.run_config import base_config, model_config
    from guard_jax.bench.rollout_bench import takes_target_lengths
    from guard_jax.sampling.engines import make_engine
    from guard_jax.sampling.sampler import SamplingParams
    from guard_jax.sharding import (SAMPLE_RULES, TRAIN_RULES, batch_shardings, make_mesh,
                                    put_batch, row_shards)
    from guard_jax.training import filled_head, grpo
    from guard_jax.training.optim import make_optimizer
    from guard_jax.training.rl.advantages import compute_advantages
    from guard_jax.training.train_step import init_train_state

    P, G, N = spec["prompts"], spec["generations"], spec["new_tokens"]
    R = P * G
    run = base_config()
    run.trainer = "grpo"
    run.model.update(hf_dir=spec["hf_dir"], param_dtype="float32", dtype="float32",
                     remat="none")
    run.mesh.update(data=-1, fsdp=1, tensor=1)
    run.train.update(global_batch=R, micro_batch=R, steps=spec["steps"] + 1)
    run.grpo.update(num_generations=G, prompts_per_step=P, rollout_chunk_prompts=P,
                    max_new_tokens=N, kl_coef=spec["kl_coef"],
                    skip_old_logprob=spec["skip_old_logprob"],
                    compact_head=spec.get("head", "filled") == "filled")
    mc = model_config(run)
    mesh = make_mesh(dict(run.mesh))
    enc = encode_prompts(spec["hf_dir"], mc, prompts(P, spec["image_size"]))
    model = load_hf(spec["hf_dir"], dtype="float32", mesh=mesh)
    graphdef, params = nnx.split(model, nnx.Param)
    tx, _ = make_optimizer(run.optim, total_steps=run.train.steps, params=params)
    _, state = init_train_state(model, tx, mesh, seed=0)
    del model, params
    ref = jax.tree.map(jnp.copy, state["params"]) if spec["kl_coef"] else None
    _, merge, logprobs, update = grpo._jitted(run, graphdef, tx, None, mesh,
                                              jax.tree.map(lambda x: x.sharding, state))
    # forced lengths: an end-of-sequence id outside the vocabulary
    engine = make_engine(spec["engine"], graphdef, SamplingParams(
        max_new_tokens=N, eos_token_ids=(mc.text.vocab_size,),
        pad_token_id=mc.generation_pad_id, temperature=1.0, num_samples=G), mesh=mesh,
        slots=spec.get("slots", 0))
    host = prompt_batch_of(mc, enc)
    skip = grpo.skips_old_logprob(run)
    targets = spec.get("targets")
    call_kw = {}
    if targets is not None and takes_target_lengths(engine):
        call_kw["target_lengths"] = jnp.asarray(targets, jnp.int32)
    rng = np.random.default_rng(0)
    records = []
    head_positions = R * N
    for step in range(spec["steps"] + 1):
        clock.reset()
        t0 = time.perf_counter()
        with clock.phase("rollout"):
            sampling = engine.place_state(merge(state))
            batch = put_batch(host, batch_shardings(host, mesh, SAMPLE_RULES))
            out = jax.block_until_ready(engine(sampling, batch, jax.random.key(step),
                                               **call_kw))
            del sampling
            if targets is not None and not call_kw:  # ran every row to N: cut the masks
                lengths = jnp.asarray(targets, jnp.int32)
                out = out._replace(lengths=lengths, completion_mask=(
                    jnp.arange(N)[None, :] < lengths[:, None]))
        prompt_batch = put_batch(host, batch_shardings(host, mesh, TRAIN_RULES))
        fwd = dict(prompt_batch, completion=out.tokens, completion_mask=out.completion_mask)
        if run.grpo.compact_head:  # as GRPOTrainer._head_indices does
            fwd["head_index"], = filled_head.pass_indices(np.asarray(out.completion_mask),
                                                          [slice(0, R)], row_shards(R, mesh))
            head_positions = fwd["head_index"].size
        data_old = None
        if not skip:
            with clock.phase("old_logprob"):
                data_old = jax.block_until_ready(logprobs(merge(state), fwd))
        ref_logp = None
        if ref is not None:
            with clock.phase("ref"):
                ref_logp = jax.block_until_ready(logprobs(ref, fwd))
        with clock.phase("reward"):
            reward = jnp.asarray(rng.standard_normal(R), jnp.float32)
            mask_f = out.completion_mask.astype(jnp.float32)
            adv = jax.block_until_ready(compute_advantages("grpo", reward, G, mask=mask_f))
        with clock.phase("update"):
            mb = dict(fwd, weights=mask_f, advantages=adv, eps_low=jnp.float32(0.2),
                      eps_high=jnp.float32(0.2), denom=jnp.sum(mask_f), n_tokens=jnp.sum(mask_f))
            if data_old is not None:
                mb["old_logp"] = data_old
            else:
                mb.update(sampler_logp=out.logprobs, n_completion=jnp.sum(mask_f))
            if ref_logp is not None:
                mb["ref_logp"] = ref_logp
            state, metrics = update(state, mb)
            jax.block_until_ready(metrics)
        records.append(clock.step_record(time.perf_counter() - t0))
        records[-1]["completion_tokens"] = int(np.asarray(out.lengths).sum())
    def nbytes(tree):
        return int(sum(x.nbytes for x in jax.tree.leaves(tree)))
    # where the resident memory goes, beside the compiled programs' own buffers
    memory = {"params": nbytes(state["params"]), "opt_state": nbytes(state["opt_state"]),
              "ref_params": nbytes(ref) if ref is not None else 0,
              "fused_head_f32_buffer": head_positions * mc.text.vocab_size * 4}
    return {"records": records, "skip_old_logprob": skip, "engine": spec["engine"],
            "memory_bytes": memory,
            "prompt_tokens": int(enc["attention_mask"].sum()), "devices": len(jax.devices()),
            "jax_version": jax.__version__}


def encode_prompts(hf_dir: str, mc, data) -> dict:
    """What Qwen2.5-VL's processor makes of (messages, image) pairs, without torchvision: the
    chat template, one <|image_pad|> per merged patch, left padding, and the image processor's
    pixel values (data_pipeline.image_processing, equal to transformers')."""
    import numpy as np
    from transformers import AutoTokenizer

    from data_pipeline.image_processing import preprocess_images
    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    pixel_values, grid = preprocess_images([img for _, img in data])
    merge = mc.vision.spatial_merge_size ** 2
    texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
             .replace("<|image_pad|>", "<|image_pad|>" * (int(np.prod(g)) // merge))
             for (m, _), g in zip(data, grid)]
    enc = tok(texts, padding=True, padding_side="left", return_tensors="np")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "pixel_values": pixel_values, "image_grid_thw": np.asarray(grid)}


def prompt_batch_of(mc, enc) -> dict:
    """The processor's arrays -> the trainer's prompt inputs (M-RoPE positions, vision
    windows), numpy."""
    from guard_jax.models.qwen2_5_vl.model import abstract_model
    from guard_jax.training.grpo import PROMPT_KEYS
    b = abstract_model(mc).prepare_inputs(
        enc["input_ids"], attention_mask=enc["attention_mask"],
        pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"])
    return {k: b[k] for k in PROMPT_KEYS if b.get(k) is not None}


# ---------------------------------------------------------------------------- TRL's side
def run_trl(spec: dict, clock: PhaseClock) -> dict:
    import numpy as np
    import torch
    import trl
    from datasets import Dataset
    from transformers import Qwen2_5_VLForConditionalGeneration

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    P, G, N = spec["prompts"], spec["generations"], spec["new_tokens"]
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        spec["hf_dir"], dtype=torch.float32, local_files_only=True)
    proc = image_text_processor(spec["hf_dir"])
    rows = [{"prompt": m, "image": img} for m, img in prompts(P, spec["image_size"])]
    rng = np.random.default_rng(0)

    def reward(completions, **kw):
        return [float(x) for x in rng.standard_normal(len(completions))]

    out_dir = tempfile.mkdtemp(prefix="trl_grpo_")
    targets = spec.get("targets")
    cfg = trl.GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=P * G, num_generations=G,
        max_completion_length=N,
        generation_kwargs={} if targets is not None else {"min_new_tokens": N}, temperature=1.0,
        beta=spec["kl_coef"], num_iterations=1, gradient_accumulation_steps=1,
        max_steps=spec["steps"] + 1, learning_rate=1e-5, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, dataloader_num_workers=0, seed=0,
        disable_tqdm=True)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=cfg,
                              train_dataset=Dataset.from_list(rows * (spec["steps"] + 1)),
                              processing_class=proc)

    def timed(name, fn):
        def wrapped(*a, **kw):
            with clock.phase(name):
                return fn(*a, **kw)
        return wrapped

    if targets is not None:
        force_lengths(model, targets, trainer.eos_token_ids)
    inner = {"prepare": 0.0}
    trainer._generate = timed("rollout", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    logps = trainer._get_per_token_logps_and_entropies

    def logps_timed(m, *a, **kw):
        # no_grad: the ref (or an old-log-prob) forward inside the input preparation; with
        # grad: the update's own forward, timed as part of the update
        if torch.is_grad_enabled():
            return logps(m, *a, **kw)
        with clock.phase("ref" if m is not None and m is trainer.ref_model else "old_logprob"):
            return logps(m, *a, **kw)
    trainer._get_per_token_logps_and_entropies = logps_timed
    prepare = trainer._prepare_inputs

    def prepare_timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return prepare(*a, **kw)
        finally:
            inner["prepare"] += time.perf_counter() - t0
    trainer._prepare_inputs = prepare_timed
    records = []
    base_step = trainer.training_step

    def training_step(*a, **kw):
        clock.reset()
        inner["prepare"] = 0.0
        t0 = time.perf_counter()
        with clock.phase("update"):
            out = base_step(*a, **kw)
        total = time.perf_counter() - t0
        # "update" holds the whole training_step: take the input preparation (rollout, ref,
        # reward and the rest, "other") out of it
        clock.times["update"] -= inner["prepare"]
        rec = clock.step_record(total)
        rec["completion_tokens"] = P * G * N if targets is None else int(sum(targets))
        records.append(rec)
        return out
    trainer.training_step = training_step
    trainer.train()
    return {"records": records, "trl_version": trl.__version__,
            "torch_version": torch.__version__, "threads": torch.get_num_threads()}


def force_lengths(model, targets, eos_ids) -> None:
    """Make `model.generate` end row r after exactly targets[r] tokens: a logits processor
    bans the EOS ids before that and forces the first one there (rows in the generate batch's
    order: prompt p's G samples at p*G ..)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    want = torch.tensor(targets)
    eos = torch.tensor(list(eos_ids))

    class ForceLengths(LogitsProcessor):
        def __init__(self, prompt_len):
            self.prompt_len = prompt_len

        def __call__(self, input_ids, scores):
            done = input_ids.shape[1] - self.prompt_len  # tokens generated before this one
            last = want.to(scores.device) == done + 1
            scores[:, eos] = -float("inf")
            scores[last] = -float("inf")
            scores[last, eos[0]] = 0.0
            return scores

    generate = model.generate

    def forced(*a, **kw):
        if kw["input_ids"].shape[0] != len(targets):
            raise ValueError(f"generate batch of {kw['input_ids'].shape[0]} rows, "
                             f"{len(targets)} target lengths")
        procs = LogitsProcessorList([ForceLengths(kw["input_ids"].shape[1])])
        return generate(*a, logits_processor=procs, **kw)

    model.generate = forced


def image_text_processor(hf_dir: str):
    """Qwen2.5-VL's processor from the directory's tokenizer and image processor (PIL backend),
    without its video processor, so that torchvision is not needed (the prompts hold images
    only). transformers checks every processor part's class through the video registry, which
    needs torchvision; the check is skipped for this one construction."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil
    from transformers import processing_utils
    tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True, padding_side="left")
    images = Qwen2VLImageProcessorPil.from_pretrained(hf_dir, local_files_only=True)
    mixin = processing_utils.ProcessorMixin
    check = mixin.check_argument_for_proper_class
    mixin.check_argument_for_proper_class = lambda self, name, arg: None
    try:
        return Qwen2_5_VLProcessor(image_processor=images, tokenizer=tok,
                                   chat_template=tok.chat_template)
    finally:
        mixin.check_argument_for_proper_class = check


# ---------------------------------------------------------------------------- driver
def worker(side: str, spec: dict) -> dict:
    clock = PhaseClock()
    try:
        res = (run_ours if side == "ours" else run_trl)(spec, clock)
    finally:
        clock.close()
    timed = res["records"][1:]  # the first step compiles / warms up
    res["warmup"] = res["records"][0]
    res["steps"] = timed
    import statistics
    res["median_step_s"] = statistics.median(r["step_s"] for r in timed)
    res["phase_median_s"] = {p: statistics.median(r["phase_s"][p] for r in timed)
                             for p in PHASES}
    res["phase_peak_rss_bytes"] = {p: max(r["phase_peak_rss_bytes"][p] for r in timed)
                                   for p in PHASES}
    res["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in res["records"])
    res["tokens_per_s"] = timed[0]["completion_tokens"] / res["median_step_s"]
    return res


def trl_available(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import trl"], capture_output=True).returncode == 0
    except OSError:
        return False


def _spawn(side: str, spec: dict, python: str) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as f:
        cmd = [python, "-m", "guard_jax.bench.grpo_step_bench", side, json.dumps(spec), f.name]
        subprocess.run(cmd, check=True)
        return json.load(open(f.name, encoding="utf-8"))


def print_table(res: dict) -> None:
    sides = [s for s in SIDES if s in res["sides"]]
    print(f"{'phase':14s}" + "".join(f"{s + ' s':>12s}{s + ' RSS GiB':>15s}" for s in sides))
    for p in PHASES:
        print(f"{p:14s}" + "".join(
            f"{res['sides'][s]['phase_median_s'][p]:12.3f}"
            f"{res['sides'][s]['phase_peak_rss_bytes'][p] / 2**30:15.2f}" for s in sides))
    print(f"{'step':14s}" + "".join(
        f"{res['sides'][s]['median_step_s']:12.3f}{res['sides'][s]['peak_rss_bytes'] / 2**30:15.2f}"
        for s in sides))
    for s in sides:
        print(f"{s}: {res['sides'][s]['tokens_per_s']:.1f} completion tokens/s")
    if "ours" in res["sides"]:
        m = res["sides"]["ours"]["memory_bytes"]
        print("ours holds: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in m.items()))
    if "ratio" in res:
        print(f"ratio TRL/ours step time: {res['ratio']:.2f}x; peak RSS ours/TRL: "
              f"{res['rss_ratio']:.2f}x")


def main(args: argparse.Namespace) -> int:
    from guard_jax.errors import InputError
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or set(sides) - set(SIDES):
        raise InputError(f"--sides {args.sides!r}: choose from {', '.join(SIDES)}")
    if min(args.prompts, args.generations, args.new_tokens, args.steps) < 1:
        raise InputError("--prompts, --generations, --new-tokens and --steps must be >= 1")
    trl_python = args.trl_python or sys.executable
    res = {"config": args.config_size, "prompts": args.prompts,
           "generations": args.generations, "new_tokens": args.new_tokens,
           "image_size": args.image_size, "kl_coef": args.kl_coef, "sides": {},
           "cpu_load_before": os.getloadavg()}
    if "trl" in sides and not trl_available(trl_python):
        res["trl_missing"] = TRL_MISSING.format(python=trl_python)
        print(res["trl_missing"] + "; measuring ours alone")
        sides.remove("trl")
    targets = None
    if args.lengths == "guard":
        from guard_jax.bench.rollout_bench import target_lengths
        targets = [int(t) for t in target_lengths(args.prompts * args.generations,
                                                  args.new_tokens, "guard")]
        res["targets"] = targets
    forced = (f"{args.new_tokens} new tokens forced" if targets is None else
              f"guard lengths forced (at most {args.new_tokens}, mean "
              f"{sum(targets) / len(targets):.1f})")
    print(f"GRPO step: {args.config_size}, {args.prompts} prompts x G {args.generations}, "
          f"{forced}, one {args.image_size}px image per prompt, "
          f"float32, {args.steps} timed steps after a warm-up, sides: {', '.join(sides) or '-'}")
    with tempfile.TemporaryDirectory() as d:
        spec = {"hf_dir": export_model(args.config_size, d), "prompts": args.prompts,
                "generations": args.generations, "new_tokens": args.new_tokens,
                "image_size": args.image_size, "kl_coef": args.kl_coef,
                "skip_old_logprob": args.skip_old_logprob, "engine": args.engine,
                "head": args.head, "slots": args.slots,
                "steps": args.steps, "threads": args.threads, "targets": targets}
        for side in sides:
            python = trl_python if side == "trl" else sys.executable
            res["sides"][side] = _spawn(side, spec, python)
    res["cpu_load_after"] = os.getloadavg()
    if {"ours", "trl"} <= res["sides"].keys():
        o, t = res["sides"]["ours"], res["sides"]["trl"]
        res["ratio"] = t["median_step_s"] / o["median_step_s"]
        res["rss_ratio"] = o["peak_rss_bytes"] / t["peak_rss_bytes"]
    print_table(res)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":  # the per-side worker process: SIDE SPEC_JSON OUT_PATH
    _side, _spec, _out = sys.argv[1:4]
    _res = worker(_side, json.loads(_spec))
    with open(_out, "w", encoding="utf-8") as _f:
        json.dump(_res, _f)


__all__ = ["add_arguments", "main", "PhaseClock", "PHASES", "worker"]
