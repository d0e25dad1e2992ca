"""`guard-jax demo`, stage 2: GRPO on the synthetic policy task, after the SFT stage.

`run_stage2` starts from an SFT checkpoint (exported to an HF directory, which is what a GRPO
run config starts from), trains with guard_jax.training.grpo on the same prompts (SafeGuard-VL
recipe, `safeguard_vl` reward: yes = safe, 1.7 / 2.0 for a right answer, the 50-character think
rule, the format term), and reports the mean reward of the first and last 10% of the steps,
F1 on the held-out split before and after RL (guard_jax.demo.evaluate: greedy generation, the
recipe's parser) and the reward and loss curves as PNG files.

Headroom: the reward can only rise where the policy still errs. `guard-jax demo` keeps a
checkpoint every 10% of its SFT steps and starts here from the earliest (step 60 of 600: the
format is learnt and about 60% of the verdicts are right). From the final SFT checkpoint the
reward has little room, and from step 120, GRPO with 4 prompts and no KL term lowered F1 at 4
of 5 seeds (docs/grpo.md#the-demos-rl-stage).

Settings (measured over seeds from one SFT run; docs/grpo.md#the-demos-rl-stage sums them up):
- 8 prompts x G 8 per step. With 4 prompts (and none of the settings below) 3 of 7 seeds ended
  at held-out F1 0.0; at seeds 2 and 6 no greedy answer parsed any more.
- 10 warmup steps. Without them the first full-size AdamW steps knock the sampled reward down,
  and what used to pass as a "rise" was largely the recovery from that dip.
- Rollout temperature 1.2 (the loss's log-probs use the same temperature). At 1.0 the SFT
  checkpoint's samples are nearly deterministic (entropy 0.1 nats a token): most groups soon
  have equal rewards and no advantage, and the reward rose by at most 0.17 in 60-120 steps.
- A KL term to the start model (0.05, low-variance k3). The reward says nothing about the
  reasoning text beyond its length, and without the KL term GRPO rewrote it into repetitions
  ("yellow yellow yellow is safe") while the answers drifted to one verdict for every image:
  the training reward still rose (the SafeGuard-VL reward pays a well-formed wrong answer 1.0
  and a right "unsafe" 2.0, so always "unsafe" earns 1.5 on this balanced data) and so did F1
  (always "unsafe" scores 0.73 on the held-out split), but accuracy fell. With the KL term
  both verdicts stay in use and held-out accuracy rose at 7 of 8 seeds. The reward still
  favours "unsafe" by design, so F1 can rise while accuracy falls (one whole demo at another
  data seed: 0.675 -> 0.620); the stage prints accuracy next to F1 for that reason.
"""

from __future__ import annotations

import json
import os
import time

# Stage-2 settings, about 2 minutes on 2 CPU cores (module docstring;
# docs/grpo.md#the-demos-rl-stage).
NUM_GENERATIONS = 8
PROMPTS_PER_STEP = 8
MAX_NEW_TOKENS = 40  # the eval's budget; the SFT targets take 25-35 tokens
LEARNING_RATE = 5e-4
WARMUP_STEPS = 10
TEMPERATURE = 1.2  # rollouts and the loss's log-probs; the evaluations stay greedy
KL_COEF = 0.05  # low-variance KL to the start model, as a loss term
UPDATES_PER_STEP = 1  # mini-batches per rollout step


def stage2_config(sft_run, *, hf_dir: str, workdir: str, steps: int, seed: int):
    """The GRPO run config: the SFT run's model, data and eval sections, GRPO on top."""
    from guard_jax.run_config import validate

    run = sft_run.copy_and_resolve_references()
    run.unlock()
    run.trainer = "grpo"
    run.workdir = workdir
    run.model.hf_dir = hf_dir
    run.data.recipe_mode = "rl"
    mini = NUM_GENERATIONS * PROMPTS_PER_STEP // UPDATES_PER_STEP
    run.train.update(global_batch=mini, micro_batch=mini, steps=steps, seed=seed,
                     log_every=1, checkpoint_every=max(steps // 2, 1), keep_checkpoints=1)
    run.optim.update(lr=LEARNING_RATE, warmup_steps=min(WARMUP_STEPS, max(steps - 1, 0)),
                     schedule="constant", weight_decay=0.0, grad_clip=1.0)
    run.grpo.update(num_generations=NUM_GENERATIONS, prompts_per_step=PROMPTS_PER_STEP,
                    rollout_chunk_prompts=PROMPTS_PER_STEP, max_prompt_len=run.data.seq_len,
                    max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, reward="safeguard_vl",
                    dynamic_sampling="mask", kl_coef=KL_COEF, num_epochs=1)
    validate(run)
    return run


def checkpoint_steps(ckpt_dir: str) -> list[int]:
    from guard_jax.training.checkpoint import Checkpointer
    with Checkpointer(ckpt_dir, async_save=False) as ck:
        steps = ck.all_steps()
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir}: no SFT checkpoint to start GRPO from")
    return steps


def read_metrics(workdir: str) -> list[dict]:
    """metrics.jsonl, the last line per step winning (a resumed run repeats steps)."""
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def edge_means(values: list[float], frac: float = 0.1) -> tuple[float, float]:
    """Means of the first and the last `frac` of the values (at least one each)."""
    k = max(1, round(len(values) * frac))
    return sum(values[:k]) / k, sum(values[-k:]) / k


def plot_curves(rows: list[dict], out_dir: str) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    paths = {}
    for name, keys, ylabel in (
            ("reward", ("reward/total/mean", "reward/accuracy/mean", "reward/format/mean"),
             "mean reward per rollout"),
            ("loss", ("loss", "actor/pg_loss"), "policy loss")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in keys:
            if any(key in r for r in rows):
                ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths[name] = os.path.join(out_dir, f"grpo_{name}.png")
        fig.savefig(paths[name], dpi=120)
        plt.close(fig)
    return paths


def run_stage2(workdir, sft_run, sft_checkpoint_dir, *, steps: int = 60, seed: int = 0,
               sft_step: int | None = None) -> dict:
    """GRPO from an SFT checkpoint (default: the earliest one kept; see the module docstring)
    on the demo's task.

    Returns and prints the mean reward of the first and last 10% of the steps, F1 on the
    held-out split before and after RL, the PNG paths and the wall time."""
    from guard_jax.demo import evaluate
    from guard_jax.training.grpo import train
    from guard_jax.training.hf_convert import export_checkpoint

    t0 = time.perf_counter()
    workdir = str(workdir)
    os.makedirs(workdir, exist_ok=True)
    steps_kept = checkpoint_steps(str(sft_checkpoint_dir))
    start = steps_kept[0] if sft_step is None else sft_step
    if start not in steps_kept:
        raise FileNotFoundError(f"{sft_checkpoint_dir}: no checkpoint step {start}; "
                                f"steps: {steps_kept}")
    hf_dir = str(export_checkpoint(sft_checkpoint_dir, os.path.join(workdir, "sft_start_hf"),
                                   step=start, progress=False))
    before = evaluate(sft_run, hf_dir=hf_dir, name=f"sft_step_{start}",
                      out_dir=os.path.join(workdir, "eval_before_rl"))
    grpo_dir = os.path.join(workdir, "grpo")
    run = stage2_config(sft_run, hf_dir=hf_dir, workdir=grpo_dir, steps=steps, seed=seed)
    t_train = time.perf_counter()
    train(run, grpo_dir)
    train_s = time.perf_counter() - t_train
    after = evaluate(sft_run, checkpoint=grpo_dir, name="after_rl",
                     out_dir=os.path.join(workdir, "eval_after_rl"))
    rows = read_metrics(grpo_dir)
    first, last = edge_means([r["reward/total/mean"] for r in rows])
    plots = plot_curves(rows, workdir)
    result = {"sft_start_step": start, "grpo_steps": len(rows), "reward_first_10pct": first,
              "reward_last_10pct": last, "f1_before_rl": before.scores.f1,
              "f1_after_rl": after.scores.f1, "accuracy_before_rl": before.scores.accuracy,
              "accuracy_after_rl": after.scores.accuracy, "reward_png": plots["reward"],
              "loss_png": plots["loss"], "train_s": round(train_s, 1),
              "wall_s": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(workdir, "stage2_summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"[demo] GRPO from SFT step {start}: mean reward first 10% {first:.3f} -> last 10% "
          f"{last:.3f}; held-out F1 {before.scores.f1:.3f} -> {after.scores.f1:.3f}, accuracy "
          f"{before.scores.accuracy:.3f} -> {after.scores.accuracy:.3f} "
          f"({result['wall_s']:.0f}s; curves {plots['reward']}, {plots['loss']})", flush=True)
    return result


__all__ = ["run_stage2", "stage2_config", "checkpoint_steps", "edge_means", "read_metrics",
           "plot_curves"]
