"""Run configs: ml_collections files with `get_config()`, validated before any device work.

A config file returns a ConfigDict built on `base_config()`; the command line overrides single
fields with `--config.a.b=value`. Unknown or mistyped keys are errors that list the valid keys,
and values keep their types (an int field does not silently become a string). Every problem
with a config (a missing or broken file, an unknown key, a value of the wrong type or out of
range) is an `InputError` naming the file and key: one line and exit 2 (docs/errors.md).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re

from ml_collections import ConfigDict

from guard_jax.errors import InputError

TRAINERS = ("sft", "grpo")


class ConfigKeyError(InputError, KeyError):
    """An unknown config key or section (still a KeyError for callers that catch one)."""

    def __str__(self) -> str:  # the message itself, not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


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
        # videos (Qwen2-VL video processor semantics, docs/model.md#video): frames sampled at
        # video_fps, between min_frames and max_frames (rounded to temporal_patch_size), each
        # resized to video_min_pixels..video_max_pixels; patches per video <=
        # max_frames / 2 * video_max_pixels / 196
        videos_per_sample=0,
        video_fps=2.0,
        min_frames=4,
        max_frames=16,
        video_min_pixels=3136,
        video_max_pixels=100352,  # per frame: 128 merged tokens per temporal patch
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
        rollout_engine="static",  # static | continuous (docs/sampling.md#engines)
        rollout_slots=0,  # continuous: decode slots; 0 = half a chunk's rollouts
        kl_coef=0.0,  # KL loss coefficient (verl kl_loss_coef); > 0 keeps a frozen reference
        # the KL loss estimator: kl/k1 | abs | mse/k2 | low_var_kl/k3, each also NAME+
        # (straight through: NAME's value, k2's gradient); training/rl/kl.py
        kl_penalty="low_var_kl",
        kl_in_reward_coef=0.0,  # verl use_kl_in_reward + kl_ctrl.kl_coef (its start value)
        kl_in_reward_penalty="kl",  # the estimator of the KL in the reward (verl kl_penalty)
        kl_ctrl_type="fixed",  # fixed | adaptive (verl kl_ctrl.type): the in-reward coefficient
        kl_target=0.1,  # adaptive: the KL the controller steers to (verl kl_ctrl.target_kl)
        kl_horizon=10000,  # adaptive: its horizon in rollouts (verl kl_ctrl.horizon)
        adv_estimator="grpo",  # grpo | dr_grpo | rloo | reinforce_plus_plus |
        # reinforce_plus_plus_baseline (training/rl/advantages.py)
        policy_loss="vanilla",  # vanilla (PPO clip) | gspo | gspo_token | cispo | kl_cov
        kl_cov_ratio=0.0002,  # kl_cov: the fraction of tokens with the KL term
        ppo_kl_coef=0.1,  # kl_cov: the coefficient of |logp - old| on those tokens
        num_epochs=1,  # PPO epochs over each rollout batch (ppo_epochs)
        clip_ratio_low=0.2,
        clip_ratio_high=0.2,  # 0.28 = DAPO's clip-higher
        clip_ratio_dual=0.0,  # dual-clip c (verl clip_ratio_c, 3.0); 0 = off
        clip_schedule="constant",  # constant | linear (GuardReasoner-VL paper) | compound
        entropy_coeff=0.0,
        # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
        loss_agg_mode="token-mean",
        loss_scale_factor=0.0,  # seq-mean-token-sum-norm's constant; 0 = max_new_tokens
        norm_adv_by_std=True,  # (r - mean) / (std + eps); False: r - mean
        adv_eps=1e-6,
        # off | mask | overgenerate | regenerate (docs/grpo.md#dynamic-sampling)
        dynamic_sampling="off",
        filter_key="total",  # the reward term the filter reads; "final" = the reward after
        # the overlong and KL-in-reward penalties
        filter_by="std",  # std: keep groups whose rewards differ (DAPO) | mean: keep groups
        # whose mean lies inside (filter_low, filter_high) (EasyR1)
        filter_low=0.01,
        filter_high=0.99,
        overgenerate_factor=1.5,  # overgenerate: roll out ceil(k * prompts_per_step) prompts
        max_regenerations=3,  # regenerate: extra rollout batches at most (then train on what
        # exists, masked, and log it)
        mask_truncated=False,  # responses without an EOS get no loss
        overlong_buffer_len=0,  # DAPO's soft overlong penalty over the last N tokens; 0 = off
        overlong_penalty_factor=1.0,  # its value at max_new_tokens is -factor
        # rollout-training mismatch correction (training/rl/rollout_correction.py):
        rollout_is="",  # "" = off | token | sequence: importance ratio pi_old / pi_sampler
        rollout_is_mode="truncate",  # truncate (TIS: min(ratio, C)) | mask (MIS)
        rollout_is_threshold=2.0,  # C
        rollout_is_threshold_lower=0.0,  # mask: the lower bound; 0 = 1 / C
        logprob_micro_batch=0,  # rollouts per old/ref log-prob forward; 0 = train.micro_batch
        # auto: no old-log-prob forward when the update is strictly on-policy (one update of
        # one epoch per rollout batch, no KL in the reward, no rollout_is) | never
        skip_old_logprob="auto",
        # the output projection of the update and log-prob passes only where completions hold
        # tokens, not over their padding (training/filled_head.py)
        compact_head=True,
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
        rollout_engine="static",  # static | continuous (docs/sampling.md#engines)
        rollout_slots=0,  # continuous: decode slots; 0 = half a batch's prompts
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
    validate(config, where=f"{path}{' with --config.* overrides' if overrides else ''}")
    config.lock()
    return config


def config_from_file(path) -> ConfigDict:
    """`get_config()` of a config file, as written (no overrides, not validated). Config files
    use it to start from a sibling: `config_from_file(os.path.join(os.path.dirname(__file__),
    "x.py"))`."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(
        "guard_jax_config_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise InputError(f"config file {path}: defines no get_config()")
        config = module.get_config()
    except InputError:
        raise
    except Exception as e:  # the file's own code failed: a user error in that file
        raise InputError(f"config file {path}: {type(e).__name__}: {e} (guard-jax --debug "
                         "shows where)") from e
    if not isinstance(config, ConfigDict):
        raise InputError(f"config file {path}: get_config() returned {type(config).__name__}, "
                         "not a ConfigDict (start from base_config() or recipe_config())")
    return config


def check_keys(config: ConfigDict, reference: ConfigDict, where: str, prefix: str = "") -> None:
    for key in config.keys():
        full = f"{prefix}{key}"
        if key not in reference:
            raise ConfigKeyError(f"{where}: unknown config key {full!r}; valid keys here: "
                                 f"{sorted(reference.keys())}")
        if isinstance(reference[key], ConfigDict):
            if not isinstance(config[key], ConfigDict):
                raise InputError(f"{where}: {full!r} must be a section, got {config[key]!r}")
            check_keys(config[key], reference[key], where, prefix=f"{full}.")


def apply_override(config: ConfigDict, item: str) -> None:
    """'--config.a.b=v' or 'a.b=v'."""
    text = item[len("--config."):] if item.startswith("--config.") else item
    if "=" not in text:
        raise InputError(f"override {item!r} must look like --config.section.key=value")
    path, raw = text.split("=", 1)
    node = config
    parts = path.split(".")
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], ConfigDict):
            raise ConfigKeyError(
                f"--config.{path}: unknown config section {'.'.join(parts[:i + 1])!r}; valid: "
                f"{sorted(k for k in node.keys() if isinstance(node[k], ConfigDict))}")
        node = node[p]
    key = parts[-1]
    if key not in node:
        raise ConfigKeyError(f"unknown config key --config.{path}; valid keys in this section: "
                             f"{sorted(node.keys())}")
    old = node[key]
    node[key] = _coerce(raw, old, path)


def _coerce(raw: str, old, path: str):
    if isinstance(old, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise InputError(f"--config.{path}={raw!r}: expected a {type(old).__name__}") from None
    if isinstance(old, bool):
        if not isinstance(value, bool):
            raise InputError(f"--config.{path}={raw!r}: expected True or False")
        return value
    if isinstance(old, float) and isinstance(value, int):
        return float(value)
    if old is not None and not isinstance(value, type(old)):
        raise InputError(f"--config.{path}={raw!r}: expected a {type(old).__name__}, got "
                         f"{type(value).__name__}")
    return value


# Keys that must be >= 1 (sizes, step counts, divisors) or >= 0, checked before anything divides
# by them. The GRPO sizes are here too because the divisibility checks below use them for any
# trainer.
AT_LEAST_1 = ("train.global_batch", "train.micro_batch", "train.steps", "train.log_every",
              "train.checkpoint_every", "train.keep_checkpoints", "data.seq_len",
              "data.min_pixels", "data.max_pixels", "data.min_frames", "data.max_frames",
              "data.video_min_pixels", "data.video_max_pixels", "grpo.num_generations",
              "grpo.prompts_per_step", "grpo.rollout_chunk_prompts")
AT_LEAST_0 = ("data.images_per_sample", "data.videos_per_sample", "data.worker_count",
              "optim.warmup_steps", "lora.rank", "optim.lr", "optim.weight_decay")
ON_ERROR = ("fail", "skip")


def _get(c: ConfigDict, key: str):
    section, name = key.split(".")
    return c[section][name]


def _range_errors(c: ConfigDict) -> list[str]:
    errs = [f"{k}={_get(c, k)!r} must be >= 1" for k in AT_LEAST_1 if not _get(c, k) >= 1]
    errs += [f"{k}={_get(c, k)!r} must be >= 0" for k in AT_LEAST_0 if not _get(c, k) >= 0]
    axes = {k: c.mesh[k] for k in c.mesh.keys()}
    bad = [k for k, v in axes.items() if not (v >= 1 or v == -1)]
    errs += [f"mesh.{k}={axes[k]!r} must be >= 1, or -1 for the remaining devices" for k in bad]
    if sum(v == -1 for v in axes.values()) > 1:
        errs.append("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    for key in ("data.on_error", "eval.on_error"):
        if _get(c, key) not in ON_ERROR:
            errs.append(f"{key}={_get(c, key)!r}; choose one of {ON_ERROR}")
    # SFT counts warmup in train.steps; GRPO in optimizer updates (several per step)
    if not errs and c.trainer == "sft" and c.optim.warmup_steps > c.train.steps:
        errs.append(f"optim.warmup_steps={c.optim.warmup_steps} exceeds train.steps="
                    f"{c.train.steps}")
    if c.data.buckets:
        try:
            buckets = [int(x) for x in str(c.data.buckets).split(",") if x.strip()]
        except ValueError:
            buckets = None
        if not buckets or buckets != sorted(set(buckets)) or buckets[0] < 1:
            errs.append(f"data.buckets={c.data.buckets!r}: expected increasing sequence lengths "
                        "separated by commas")
        elif not errs and buckets[-1] > c.data.seq_len:
            errs.append(f"data.buckets={c.data.buckets!r} exceed data.seq_len={c.data.seq_len}")
    if not errs and c.data.min_pixels > c.data.max_pixels:
        errs.append(f"data.min_pixels={c.data.min_pixels} exceeds data.max_pixels="
                    f"{c.data.max_pixels}")
    if not errs and c.data.video_min_pixels > c.data.video_max_pixels:
        errs.append(f"data.video_min_pixels={c.data.video_min_pixels} exceeds "
                    f"data.video_max_pixels={c.data.video_max_pixels}")
    if not errs and c.data.min_frames > c.data.max_frames:
        errs.append(f"data.min_frames={c.data.min_frames} exceeds data.max_frames="
                    f"{c.data.max_frames}")
    if not c.data.video_fps > 0:
        errs.append(f"data.video_fps={c.data.video_fps!r} must be > 0")
    return errs


def _choice_errors(c: ConfigDict) -> list[str]:
    from guard_jax.models.qwen2_5_vl.config import REMAT_POLICIES
    from guard_jax.training.optim import SCHEDULES
    errs = []
    if c.optim.name != "adamw":
        errs.append(f"optim.name={c.optim.name!r}; only adamw is implemented")
    if c.optim.schedule not in SCHEDULES:
        errs.append(f"optim.schedule={c.optim.schedule!r}; choose one of {SCHEDULES}")
    if c.model.remat not in REMAT_POLICIES:
        errs.append(f"model.remat={c.model.remat!r}; choose one of {REMAT_POLICIES}")
    for key in ("optim.freeze", "lora.targets"):
        try:
            re.compile(_get(c, key))
        except re.error as e:
            errs.append(f"{key}={_get(c, key)!r} is not a regular expression ({e})")
    return errs


def check_mesh(c: ConfigDict, n_devices: int, where: str) -> None:
    """The config's mesh.* against `n_devices` (`where` says whose devices, for the message)."""
    from guard_jax.sharding import MeshConfig
    try:
        MeshConfig(c.mesh.data, c.mesh.fsdp, c.mesh.tensor).resolve(n_devices)
    except ValueError as e:
        raise InputError(f"config keys mesh.*: {e} of {where}") from e


def validate(c: ConfigDict, where: str = "") -> None:
    """Raises one InputError listing every problem of the config, each naming its key."""
    prefix = f"invalid config{' ' + where if where else ''}: "
    errs = _range_errors(c)
    if c.trainer not in TRAINERS:
        errs.append(f"trainer={c.trainer!r}; choose one of {TRAINERS}")
    errs += _choice_errors(c)
    if errs:  # the checks below divide by these sizes
        raise InputError(prefix + "; ".join(errs))
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
        raise InputError(prefix + "; ".join(errs))


def grpo_choices() -> dict:
    """Each GRPO knob with a fixed set of values -> its choices (the families' registries,
    training/rl/)."""
    from guard_jax.training import grpo_loss as L
    from guard_jax.training.rl.rollout_correction import LEVELS, MODES
    from guard_jax.training.rl.kl import CONTROLLERS
    from guard_jax.sampling.engines import ENGINES
    return {"kl_penalty": L.KL_PENALTIES, "kl_in_reward_penalty": L.KL_PENALTIES,
            "kl_ctrl_type": CONTROLLERS, "adv_estimator": L.ADV_ESTIMATORS,
            "policy_loss": L.POLICY_LOSSES, "clip_schedule": L.CLIP_SCHEDULES,
            "loss_agg_mode": L.LOSS_AGG_MODES, "filter_by": L.FILTER_BY,
            "dynamic_sampling": ("off", "mask", "overgenerate", "regenerate"),
            "skip_old_logprob": ("auto", "never"),
            "rollout_is": LEVELS, "rollout_is_mode": MODES, "rollout_engine": tuple(ENGINES)}


def _grpo_errors(c: ConfigDict) -> list[str]:
    """The GRPO knobs' ranges and how the rollout batch splits into updates."""
    g, errs = c.grpo, []
    for key, allowed in grpo_choices().items():
        if g[key] not in allowed:
            errs.append(f"grpo.{key}={g[key]!r}; choose one of {allowed}")
    errs += _grpo_family_errors(g)
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
    if g.rollout_slots and (g.rollout_slots < 0 or g.rollout_engine == "static"):
        errs.append(f"grpo.rollout_slots={g.rollout_slots} must be >= 0, and 0 with "
                    "rollout_engine='static' (which has no slot pool)")
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


def _grpo_family_errors(g) -> list[str]:
    """The knobs of the loss, KL, filter, shaping and rollout-correction families."""
    errs = []
    if g.clip_ratio_dual and g.policy_loss != "vanilla":
        errs.append(f"grpo.clip_ratio_dual={g.clip_ratio_dual} is for policy_loss='vanilla', "
                    f"not {g.policy_loss!r}")
    for k in ("loss_scale_factor", "kl_cov_ratio", "ppo_kl_coef", "overlong_penalty_factor",
              "overlong_buffer_len", "rollout_is_threshold_lower"):
        if g[k] < 0:
            errs.append(f"grpo.{k}={g[k]} must be >= 0")
    if g.kl_ctrl_type == "adaptive" and (g.kl_target <= 0 or g.kl_horizon < 1
                                         or not g.kl_in_reward_coef):
        errs.append("grpo.kl_ctrl_type='adaptive' adapts kl_in_reward_coef: it needs "
                    "kl_in_reward_coef > 0, kl_target > 0 and kl_horizon >= 1")
    if g.overlong_buffer_len > g.max_new_tokens:
        errs.append(f"grpo.overlong_buffer_len={g.overlong_buffer_len} exceeds max_new_tokens="
                    f"{g.max_new_tokens}")
    if g.rollout_is and not (g.rollout_is_threshold > 1 and (
            g.rollout_is_threshold_lower < g.rollout_is_threshold)):
        errs.append(f"grpo.rollout_is_threshold={g.rollout_is_threshold} must be > 1 and above "
                    f"rollout_is_threshold_lower={g.rollout_is_threshold_lower}")
    if g.dynamic_sampling != "off":
        if g.filter_by == "std" and g.num_generations == 1:
            errs.append("grpo.filter_by='std' with num_generations=1: a one-sample group never "
                        "has a spread, so every group would be filtered; use filter_by='mean' "
                        "or dynamic_sampling='off'")
        if g.filter_by == "mean" and not g.filter_low < g.filter_high:
            errs.append(f"grpo.filter_low={g.filter_low} must be below filter_high="
                        f"{g.filter_high}")
        if (g.filter_key == "final" and g.kl_in_reward_coef
                and g.dynamic_sampling in ("overgenerate", "regenerate")):
            errs.append("grpo.filter_key='final' with kl_in_reward_coef > 0 is known only after "
                        "the reference log-probs: use dynamic_sampling='mask' with it")
    return errs


def model_config(c: ConfigDict):
    """The Qwen25VLConfig a run config describes (from hf_dir or the preset)."""
    from guard_jax.models.qwen2_5_vl import PRESETS, Qwen25VLConfig
    run = dict(param_dtype=c.model.param_dtype, dtype=c.model.dtype, remat=c.model.remat,
               attention_impl=c.model.attention_impl)
    if c.model.hf_dir:
        return Qwen25VLConfig.from_pretrained(c.model.hf_dir, **run)
    return PRESETS[c.model.preset](**run)
