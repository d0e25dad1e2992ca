"""Run configs: ml_collections files with `get_config()`, validated before any device work.

A config file returns a ConfigDict built on `base_config()`; the command line overrides single
fields with `--config.a.b=value`. Unknown or mistyped keys are errors that list the valid keys,
and values keep their types (an int field does not silently become a string).
"""

from __future__ import annotations

import ast
import importlib.util
import os

from ml_collections import ConfigDict

TRAINERS = ("sft", "grpo")


def base_config() -> ConfigDict:
    """Every key a run may set, with its default. Recipe configs change values, not keys."""
    c = ConfigDict()
    c.trainer = "sft"
    c.workdir = ""  # set by `guard-jax train --workdir` (recorded in checkpoints)
    c.model = ConfigDict(dict(
        preset="tiny",  # tiny | tiny_qwen | small | 3b | 7b: the architecture without hf_dir
        hf_dir="",  # an HF directory to start from (its config.json wins over preset)
        param_dtype="float32",
        dtype="bfloat16",  # compute dtype
        remat="full",  # none | full | dots | dots_no_batch
        attention_impl="auto",  # auto | xla | cudnn
    ))
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.data = ConfigDict(dict(
        path="",  # a dataset built by `guard-jax data build` (its --out folder)
        split="train",
        recipe="guardreasoner_vl",  # prompt renderer (data_pipeline.prompts.RECIPES)
        recipe_mode="sft",
        tokenizer_dir="",  # default: model.hf_dir
        buckets="",  # comma-separated sequence lengths; default: seq_len only
        worker_count=0,
        on_error="fail",  # fail | skip (skipped samples go to WORKDIR/quarantine.jsonl)
        seq_len=2048,  # tokens per training sequence (static shape)
        images_per_sample=1,
        min_pixels=3136,
        max_pixels=1003520,  # per image; patches per image <= max_pixels / 196
    ))
    c.train = ConfigDict(dict(
        global_batch=8,  # sequences per optimizer step
        micro_batch=8,  # sequences per forward/backward (gradient accumulation = global/micro)
        steps=100,  # optimizer updates
        seed=0,
        log_every=10,
        checkpoint_every=100,  # optimizer updates between checkpoints
        keep_checkpoints=3,
    ))
    c.optim = ConfigDict(dict(
        name="adamw", lr=1e-5, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0,
        warmup_steps=0, schedule="cosine", mu_dtype="",  # "" = the parameters' dtype
        freeze="",  # regex over parameter paths (e.g. "^visual\\.") that stay fixed
    ))
    c.lora = ConfigDict(dict(
        rank=0,  # > 0 trains LoRA adapters instead of the weights (merged on export)
        alpha=16.0,  # the adapters' update is scaled by alpha / rank
        targets="",  # regex over weight paths; "" = the language model's projections
    ))
    # GRPO (guard_jax/training/grpo.py). Names follow EasyR1 / verl (docs/grpo.md#knobs). The
    # optimizer update is train.global_batch rollouts (verl ppo_mini_batch_size x n), run as
    # train.global_batch / train.micro_batch accumulated micro-batches.
    c.grpo = ConfigDict(dict(
        num_generations=8,  # G (EasyR1 worker.rollout.n)
        prompts_per_step=16,  # prompts per rollout step (EasyR1 data.rollout_batch_size)
        rollout_chunk_prompts=16,  # prompts sampled together (KV cache size)
        max_prompt_len=1024,  # prompts are left-padded to this (longer ones are bad samples)
        max_new_tokens=512,
        temperature=1.0,
        top_p=1.0,
        top_k=0,  # 0 = off
        kl_coef=0.0,  # KL loss coefficient (verl kl_loss_coef); > 0 keeps a frozen reference
        kl_penalty="low_var_kl",  # low_var_kl (k3) | kl (k1): the KL loss estimator
        kl_in_reward_coef=0.0,  # verl use_kl_in_reward + kl_ctrl.kl_coef (k1 estimator)
        num_epochs=1,  # PPO epochs over each rollout batch (ppo_epochs)
        clip_ratio_low=0.2,
        clip_ratio_high=0.2,  # 0.28 = DAPO's clip-higher
        clip_ratio_dual=0.0,  # dual-clip c (verl clip_ratio_c, 3.0); 0 = off
        clip_schedule="constant",  # constant | linear (GuardReasoner-VL paper) | compound
        entropy_coeff=0.0,
        loss_agg_mode="token-mean",  # token-mean | seq-mean-token-mean
        norm_adv_by_std=True,  # (r - mean) / (std + eps); False: r - mean
        adv_eps=1e-6,
        # off | mask | overgenerate | regenerate (docs/grpo.md#dynamic-sampling)
        dynamic_sampling="off",
        filter_key="total",  # the reward term whose equal-in-group values make a group
        # degenerate
        overgenerate_factor=1.5,  # overgenerate: roll out ceil(k * prompts_per_step) prompts
        max_regenerations=3,  # regenerate: extra rollout batches at most (then train on what
        # exists, masked, and log it)
        mask_truncated=False,  # responses without an EOS get no loss
        logprob_micro_batch=0,  # rollouts per old/ref log-prob forward; 0 = train.micro_batch
        reward="",  # guard_jax.rewards name; "" = data.recipe
        reward_knobs="",  # "key=value,..." for the reward's config (e.g. "mode=paper,beta=1.0")
        similarity_model="",  # sentence-transformers dir for ProGuard's OOD-name similarity
    ))
    c.eval = ConfigDict(dict(  # `guard-jax eval --config` (guard_jax/evaluation/runner.py)
        recipe="",  # prompt renderer and output parser; "" = data.recipe
        recipe_options="",  # renderer options "key=value,..." (e.g. "mode=eval")
        rule="clean",  # clean | guardreasoner-release | safeguard-release
        task="prompt",  # prompt | response | refusal: the label scored unless a benchmark says
        data_root="",  # relative benchmark paths are under this folder
        benchmarks=(),  # dicts: name, path, and optionally split, task, modality, group,
        # group_metric (see configs/eval/)
        batch_size=8,  # prompts per generation call (a multiple of data x fsdp devices)
        max_prompt_len=4096,  # longer prompts are errors (or skipped with on_error=skip)
        max_new_tokens=4096,  # greedy decoding budget (GuardReasoner-VL: 4096)
        limit=0,  # samples per benchmark; 0 = all
        on_error="fail",  # fail | skip (skipped samples go to OUT/quarantine.jsonl)
    ))
    return c


def recipe_config(trainer: str, preset: str, **sections) -> ConfigDict:
    """base_config() for a recipe run: `trainer`, the model `preset` with float32 parameters,
    bfloat16 compute and full remat, an fsdp mesh, then each keyword's dict merged into its
    section (`recipe_config("grpo", "3b", grpo=dict(num_generations=16), ...)`)."""
    c = base_config()
    c.trainer = trainer
    c.model.update(preset=preset, param_dtype="float32", dtype="bfloat16", remat="full")
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    for name, values in sections.items():
        if name not in c or not isinstance(c[name], ConfigDict):
            raise KeyError(f"recipe_config: {name!r} is not a config section")
        c[name].update(values)
    return c


def load_config(path: str, overrides: list[str] | None = None) -> ConfigDict:
    """Loads `path` (a .py file with get_config()), applies `--config.x.y=v` overrides,
    validates, and returns a locked ConfigDict."""
    config = config_from_file(path)
    check_keys(config, base_config(), where=path)
    for item in overrides or []:
        apply_override(config, item)
    validate(config)
    config.lock()
    return config


def config_from_file(path) -> ConfigDict:
    """`get_config()` of a config file, as written (no overrides, not validated). Config files
    use it to start from a sibling: `config_from_file(os.path.join(os.path.dirname(__file__),
    "x.py"))`."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(
        "guard_jax_config_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path}: defines no get_config()")
    return module.get_config()


def check_keys(config: ConfigDict, reference: ConfigDict, where: str, prefix: str = "") -> None:
    for key in config.keys():
        full = f"{prefix}{key}"
        if key not in reference:
            raise KeyError(f"{where}: unknown config key {full!r}; valid keys here: "
                           f"{sorted(reference.keys())}")
        if isinstance(reference[key], ConfigDict):
            if not isinstance(config[key], ConfigDict):
                raise TypeError(f"{where}: {full!r} must be a section, got {config[key]!r}")
            check_keys(config[key], reference[key], where, prefix=f"{full}.")


def apply_override(config: ConfigDict, item: str) -> None:
    """'--config.a.b=v' or 'a.b=v'."""
    text = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in text:
        raise ValueError(f"override {item!r} must look like --config.section.key=value")
    path, raw = text.split("=", 1)
    node = config
    parts = path.split(".")
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], ConfigDict):
            raise KeyError(f"unknown config section {'.'.join(parts[:i + 1])!r}; valid: "
                           f"{sorted(k for k in node.keys() if isinstance(node[k], ConfigDict))}")
        node = node[p]
    key = parts[-1]
    if key not in node:
        raise KeyError(f"unknown config key {path!r}; valid keys in this section: "
                       f"{sorted(node.keys())}")
    old = node[key]
    node[key] = _coerce(raw, old, path)


def _coerce(raw: str, old, path: str):
    if isinstance(old, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ValueError(f"--config.{path}={raw!r}: expected a {type(old).__name__}") from None
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise ValueError(f"--config.{path}={raw!r}: expected True or False")
        return value
    if isinstance(old, float) and isinstance(value, int):
        return float(value)
    if old is not None and not isinstance(value, type(old)):
        raise ValueError(f"--config.{path}={raw!r}: expected a {type(old).__name__}, got "
                         f"{type(value).__name__}")
    return value


def validate(c: ConfigDict) -> None:
    errs = []
    if c.trainer not in TRAINERS:
        errs.append(f"trainer={c.trainer!r}; choose one of {TRAINERS}")
    if c.train.global_batch % c.train.micro_batch:
        errs.append(f"train.global_batch {c.train.global_batch} is not a multiple of "
                    f"train.micro_batch {c.train.micro_batch}")
    from guard_jax.models.qwen2_5_vl.config import PRESETS
    if not c.model.hf_dir and c.model.preset not in PRESETS:
        errs.append(f"model.preset={c.model.preset!r}; choose one of {sorted(PRESETS)}, or set "
                    "model.hf_dir")
    if c.grpo.prompts_per_step % c.grpo.rollout_chunk_prompts:
        errs.append("grpo.prompts_per_step must be a multiple of grpo.rollout_chunk_prompts")
    if c.trainer == "grpo":
        errs += _grpo_errors(c)
    if errs:
        raise ValueError("invalid config: " + "; ".join(errs))


GRPO_CHOICES = {"kl_penalty": ("low_var_kl", "kl"),
                "clip_schedule": ("constant", "linear", "compound"),
                "loss_agg_mode": ("token-mean", "seq-mean-token-mean"),
                "dynamic_sampling": ("off", "mask", "overgenerate", "regenerate")}


def _grpo_errors(c: ConfigDict) -> list[str]:
    """The GRPO knobs' ranges and how the rollout batch splits into updates."""
    g, errs = c.grpo, []
    for key, allowed in GRPO_CHOICES.items():
        if g[key] not in allowed:
            errs.append(f"grpo.{key}={g[key]!r}; choose one of {allowed}")
    n = g.num_generations
    positive = ("num_generations", "prompts_per_step", "rollout_chunk_prompts", "max_prompt_len",
                "max_new_tokens", "num_epochs")
    errs += [f"grpo.{k}={g[k]} must be >= 1" for k in positive if g[k] < 1]
    if not 0 <= g.clip_ratio_low <= 1 or g.clip_ratio_high < 0:
        errs.append(f"grpo.clip_ratio_low={g.clip_ratio_low} must be in [0, 1] and "
                    f"clip_ratio_high={g.clip_ratio_high} >= 0")
    if g.clip_ratio_dual and g.clip_ratio_dual <= 1:
        errs.append(f"grpo.clip_ratio_dual={g.clip_ratio_dual} must be > 1 (or 0 = off)")
    for k in ("kl_coef", "kl_in_reward_coef", "entropy_coeff", "adv_eps", "temperature"):
        if g[k] < 0:
            errs.append(f"grpo.{k}={g[k]} must be >= 0")
    if g.temperature == 0:
        errs.append("grpo.temperature=0 is greedy: every sample of a group would be the same")
    if g.overgenerate_factor < 1 or g.max_regenerations < 0 or g.logprob_micro_batch < 0:
        errs.append("grpo.overgenerate_factor must be >= 1, max_regenerations and "
                    "logprob_micro_batch >= 0")
    rollouts = g.prompts_per_step * n
    mb, micro = c.train.global_batch, c.train.micro_batch
    if rollouts % mb:
        errs.append(f"train.global_batch {mb} (rollouts per optimizer update) must divide the "
                    f"{rollouts} rollouts of a step (grpo.prompts_per_step x num_generations)")
    # A micro-batch holds whole groups or a part of one, so each prompt (and its image) runs
    # through the forward once and is shared by its samples.
    for name, size in (("train.micro_batch", micro),
                       ("grpo.logprob_micro_batch", g.logprob_micro_batch or micro)):
        if size % n and n % size:
            errs.append(f"{name} {size} must be a multiple or a divisor of "
                        f"grpo.num_generations {n}")
        elif rollouts % size:
            errs.append(f"{name} {size} must divide the {rollouts} rollouts of a step")
    return errs


def model_config(c: ConfigDict):
    """The Qwen25VLConfig a run config describes (from hf_dir or the preset)."""
    from guard_jax.models.qwen2_5_vl import PRESETS, Qwen25VLConfig
    run = dict(param_dtype=c.model.param_dtype, dtype=c.model.dtype, remat=c.model.remat,
               attention_impl=c.model.attention_impl)
    if c.model.hf_dir:
        return Qwen25VLConfig.from_pretrained(c.model.hf_dir, **run)
    return PRESETS[c.model.preset](**run)
