"""GRPO end to end on the CPU: synthetic policy data -> configs/tiny_grpo.py -> rollouts,
rewards, the clipped update, metrics, checkpoints, preemption and exact resume, export.

One tiny model and one set of jitted functions serve every test (the trainer shares its
compilations between runs of one process whose jitted pieces are the same)."""

import json
import os

import numpy as np
import pytest

from guard_jax.run_config import load_config

CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "tiny_grpo.py")
PHASES = ("timing_s/gen", "timing_s/reward", "timing_s/old_log_prob", "timing_s/ref",
          "timing_s/adv", "timing_s/update", "timing_s/step")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """16 synthetic policy samples (SafeGuard-VL recipe), their BPE tokenizer, a tiny model
    sized to it (the demo's architecture) as an HF directory."""
    from transformers import AutoTokenizer

    from data_pipeline import synthetic
    from data_pipeline.build import build_dataset
    from guard_jax.demo import demo_model_config
    from guard_jax.models.qwen2_5_vl import init_model, save_hf

    root = tmp_path_factory.mktemp("grpo_task")
    samples = synthetic.make_samples(16, 0, prefix="t")
    src = synthetic.write_split(root / "raw", samples, seed=0, name="train")
    build_dataset("generic_jsonl", src, root / "data", options=synthetic.DEMO_CONVERTER_OPTIONS,
                  progress=False, echo=False)
    tok_dir = synthetic.train_tokenizer(synthetic.tokenizer_corpus(samples), root / "tok",
                                        vocab_size=600)
    config = demo_model_config(AutoTokenizer.from_pretrained(str(tok_dir)))
    save_hf(init_model(config, seed=0), root / "hf", assets_from=str(tok_dir), progress=False)
    return {"data": str(root / "data"), "tok": str(tok_dir), "hf": str(root / "hf")}


def _run_config(task, **extra):
    overrides = {"model.hf_dir": task["hf"], "data.path": task["data"],
                 "data.tokenizer_dir": task["tok"], "train.steps": 2,
                 "train.checkpoint_every": 2, "train.global_batch": 4, "train.micro_batch": 4,
                 "grpo.num_generations": 4, "grpo.prompts_per_step": 2,
                 "grpo.rollout_chunk_prompts": 2, "grpo.max_new_tokens": 16,
                 "grpo.num_epochs": 1, "grpo.clip_schedule": "linear",
                 # a random model earns reward 0 everywhere: the entropy and KL terms still
                 # move the weights, which the resume test needs
                 "grpo.dynamic_sampling": "off", "grpo.entropy_coeff": 0.01,
                 "grpo.kl_coef": 0.05, **extra}
    return load_config(CONFIG, [f"--config.{k}={v}" for k, v in overrides.items()])


def _train(task, workdir, **extra):
    from guard_jax.training.grpo import train
    return train(_run_config(task, **extra), str(workdir))


def _metrics(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _params(workdir, step):
    import orbax.checkpoint as ocp
    state = ocp.StandardCheckpointer().restore(os.path.join(workdir, str(step), "state"))
    return {k: np.asarray(v) for k, v in state.items() if k.startswith("params.")}


@pytest.fixture(scope="module")
def full_run(task, tmp_path_factory):
    work = tmp_path_factory.mktemp("grpo_full")
    return work, _train(task, work)


def test_run_logs_phases_and_reward_statistics(full_run):
    work, result = full_run
    assert result["step"] == 2
    lines = _metrics(work)
    assert [ln["step"] for ln in lines] == [1, 2]
    for ln in lines:
        for key in PHASES:
            assert ln[key] >= 0, key
        assert ln["timing_s/step"] >= ln["timing_s/gen"] + ln["timing_s/update"]
        for term in ("total", "accuracy", "format", "think_ok"):
            assert {f"reward/{term}/mean", f"reward/{term}/std",
                    f"reward/{term}/frac_zero_std"} <= ln.keys()
        assert 0 <= ln["frac_reward_zero_std"] <= 1
        assert 1 <= ln["response_length/min"] <= ln["response_length/mean"] <= 16
        assert 0 <= ln["response_length/clip_ratio"] <= 1
        assert 0 <= ln["actor/pg_clipfrac"] <= 1 and np.isfinite(ln["actor/ppo_kl"])
        assert ln["actor/entropy"] > 0 and ln["actor/kl_loss"] >= 0
        assert ln["grad_norm"] > 0 and np.isfinite(ln["loss"])
        # the training forward (prompt and image once per group, completion positions after
        # the prompt's) gives the sampler's own log-probabilities
        assert ln["rollout/logprob_diff"] < 1e-4
        assert ln["dyn/trained_groups"] == 2 and ln["dyn/rollout_prompts"] == 2
    # the linear clip schedule over S = 2 steps: 0.2 at step index 0, 0.1 at step index 1
    assert [round(ln["clip/eps_low"], 6) for ln in lines] == [0.2, 0.1]
    # the policy moved away from the frozen start (the second mini-batch sees it moved)
    assert all(ln["actor/kl_loss"] > 0 for ln in lines)
    assert sorted(int(d) for d in os.listdir(work) if d.isdigit()) == [2]


def test_preemption_and_resume_reproduce_the_uninterrupted_run(task, full_run, tmp_path):
    from guard_jax.training import checkpoint as ckpt_lib
    full, _ = full_run
    part = tmp_path / "part"
    ckpt_lib._PREEMPTED.set()  # as SIGTERM does: save at the next step and return
    try:
        assert _train(task, part)["step"] == 1
    finally:
        ckpt_lib._reset_preempted()
    assert sorted(os.listdir(part)).count("1") == 1 and not (part / "2").exists()
    assert _train(task, part)["step"] == 2
    assert [ln["step"] for ln in _metrics(part)] == [1, 2]
    a, b = _params(str(full), 2), _params(str(part), 2)
    start = _params(str(part), 1)
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
    assert max(float(np.abs(a[k] - start[k]).max()) for k in a) > 0  # it did train


@pytest.mark.parametrize("mode", ["regenerate", "overgenerate"])
def test_dynamic_sampling_bound_trains_on_what_exists(task, full_run, tmp_path, mode):
    """Every group is degenerate (a random model earns 0): regeneration stops at its bound,
    overgeneration selects within static shapes; nothing trainable is left, so the updates
    are skipped and the step is logged, not raised."""
    result = _train(task, tmp_path / mode, **{"grpo.dynamic_sampling": mode,
                                             "grpo.max_regenerations": 1,
                                             "grpo.overgenerate_factor": 2.0,
                                             "train.checkpoint_every": 100})
    first = _metrics(tmp_path / mode)[0]
    assert result["step"] == 2
    assert first["dyn/rollout_prompts"] == 4 and first["dyn/valid_groups"] == 0
    assert first["dyn/bound_hit"] == 1 and first["dyn/trained_groups"] == 0
    assert first["dyn/regenerations"] == (1 if mode == "regenerate" else 0)
    assert first["frac_reward_zero_std"] == 1 and first["actor/skipped_minibatches"] == 2


def test_export_of_a_grpo_checkpoint(full_run, tmp_path):
    from guard_jax.models.qwen2_5_vl import load_hf
    from guard_jax.training.hf_convert import export_checkpoint
    work, _ = full_run
    out = export_checkpoint(work, tmp_path / "hf", progress=False)
    model = load_hf(out, dtype="float32", progress=False)
    from flax import nnx
    flat = {".".join(map(str, p)): np.asarray(v[...])
            for p, v in nnx.to_flat_state(nnx.split(model, nnx.Param)[1])}
    saved = _params(str(work), 2)
    assert max(float(np.abs(flat[k[len("params."):]] - saved[k]).max()) for k in saved) == 0


def test_grpo_config_errors_name_the_knob(task):
    with pytest.raises(ValueError, match="grpo.loss_agg_mode"):
        _run_config(task, **{"grpo.loss_agg_mode": "seq-sum"})
    with pytest.raises(ValueError, match="clip_ratio_dual"):
        _run_config(task, **{"grpo.clip_ratio_dual": 0.5})
    with pytest.raises(ValueError, match="must divide the 8 rollouts"):
        _run_config(task, **{"train.global_batch": 3, "train.micro_batch": 1})
    with pytest.raises(ValueError, match="multiple or a divisor"):
        _run_config(task, **{"train.micro_batch": 3, "train.global_batch": 3,
                             "grpo.prompts_per_step": 3})


def test_rl_family_knobs_are_validated(task):
    """Each new knob's bad value names it (the choice lists are the registries')."""
    bad = {"grpo.policy_loss": "ppo2", "grpo.adv_estimator": "gae", "grpo.kl_penalty": "k4",
           "grpo.kl_in_reward_penalty": "full", "grpo.kl_ctrl_type": "pid",
           "grpo.filter_by": "max", "grpo.rollout_is": "geometric",
           "grpo.rollout_is_mode": "clip"}
    for key, value in bad.items():
        with pytest.raises(ValueError, match=f"{key}='{value}'; choose one of"):
            _run_config(task, **{key: value})
    for extra, match in [({"grpo.policy_loss": "gspo", "grpo.clip_ratio_dual": 3.0},
                          "clip_ratio_dual"),
                         ({"grpo.kl_ctrl_type": "adaptive"}, "kl_in_reward_coef > 0"),
                         ({"grpo.overlong_buffer_len": 17}, "overlong_buffer_len"),
                         ({"grpo.rollout_is": "token", "grpo.rollout_is_threshold": 0.9},
                          "rollout_is_threshold"),
                         ({"grpo.num_generations": 1, "grpo.dynamic_sampling": "mask",
                           "train.micro_batch": 1, "train.global_batch": 2},
                          "filter_by='std' with num_generations=1"),
                         ({"grpo.filter_by": "mean", "grpo.filter_low": 0.9,
                           "grpo.filter_high": 0.1, "grpo.dynamic_sampling": "mask"},
                          "filter_low"),
                         ({"grpo.filter_key": "final", "grpo.kl_in_reward_coef": 0.01,
                           "grpo.dynamic_sampling": "regenerate"}, "filter_key='final'")]:
        with pytest.raises(ValueError, match=match):
            _run_config(task, **extra)
    # G = 1 with a mean filter is defined
    _run_config(task, **{"grpo.num_generations": 1, "grpo.dynamic_sampling": "mask",
                         "grpo.filter_by": "mean", "train.micro_batch": 1,
                         "train.global_batch": 2})


def test_adaptive_kl_and_rollout_correction_resume_exactly(task, full_run, tmp_path):
    """The adaptive KL-in-reward coefficient is saved with each checkpoint: a preempted and
    resumed run logs the uninterrupted run's coefficient and ends with its parameters. The
    run also uses the token-level rollout correction and the overlong penalty."""
    from guard_jax.training import checkpoint as ckpt_lib
    extra = {"grpo.kl_in_reward_coef": 0.05, "grpo.kl_ctrl_type": "adaptive",
             "grpo.kl_target": 1e-4, "grpo.kl_horizon": 16, "grpo.rollout_is": "token",
             "grpo.rollout_is_mode": "mask", "grpo.overlong_buffer_len": 8}
    full = tmp_path / "full"
    _train(task, full, **extra)
    part = tmp_path / "part"
    ckpt_lib._PREEMPTED.set()
    try:
        assert _train(task, part, **extra)["step"] == 1
    finally:
        ckpt_lib._reset_preempted()
    assert _train(task, part, **extra)["step"] == 2
    a, b = _metrics(full), _metrics(part)
    coeffs = [ln["actor/reward_kl_penalty_coeff"] for ln in a]
    assert coeffs[0] == 0.05 and coeffs[1] != 0.05  # it adapted
    assert [ln["actor/reward_kl_penalty_coeff"] for ln in b] == coeffs
    for ln in a:
        assert ln["actor/reward_kl_penalty"] >= 0 and ln["actor/kl_coef"] == 0.05
        assert 0 <= ln["rollout_corr/rollout_is_masked_fraction"] < 1e-3  # CPU: no mismatch
        assert abs(ln["rollout_corr/rollout_is_mean"] - 1) < 1e-4
        assert ln["reward/overlong/mean"] <= 0
    pa, pb = _params(str(full), 2), _params(str(part), 2)
    assert max(float(np.abs(pa[k] - pb[k]).max()) for k in pa) <= 1e-6


def test_demo_stage2_summaries_and_curves(full_run, tmp_path):
    """The demo's stage-2 report pieces on a real GRPO run's metrics."""
    from guard_jax.demo_rl import edge_means, plot_curves, read_metrics
    work, _ = full_run
    rows = read_metrics(str(work))
    assert [r["step"] for r in rows] == [1, 2]
    assert edge_means([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]) == (1.0, 11.0)
    assert edge_means([1.0, 3.0] * 10) == (2.0, 2.0)
    paths = plot_curves(rows, str(tmp_path))
    for p in paths.values():
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


class _BigramEncoder:
    """A stand-in sentence encoder: letter-bigram count vectors (its cosine is known exactly)."""
    LETTERS = "abcdefghijklmnopqrstuvwxyz "

    def encode(self, texts):
        n = len(self.LETTERS)
        out = np.zeros((len(texts), n * n), np.float32)
        for i, t in enumerate(texts):
            t = "".join(c for c in t.lower() if c in self.LETTERS)
            for a, b in zip(t, t[1:]):
                out[i, self.LETTERS.index(a) * n + self.LETTERS.index(b)] += 1
        return out

    def similarity(self, a, b):
        x, y = self.encode([a, b])
        den = float(np.linalg.norm(x) * np.linalg.norm(y))
        return float(x @ y) / den if den else 0.0


def test_proguard_similarity_joins_the_right_names_and_gold(task):
    """The trainer's host step for ProGuard: names of the flagged rows (from the device's byte
    spans) against their own prompt's gold name and synonyms, then the thresholds in jit;
    equal to the plain-Python reference with the same similarity."""
    from transformers import AutoTokenizer

    from guard_jax.training.grpo_rewards import RolloutReward
    tok = AutoTokenizer.from_pretrained(task["tok"])
    reward = RolloutReward("proguard", tok, vocab_size=len(tok), num_generations=2)
    reward.encoder = enc = _BigramEncoder()
    weapons = {"modality": "text", "query_label": "unsafe", "response_label": "safe",
               "category": "", "original_category": "Weapons",
               "synonymous_phrase": ["weapons trafficking", "arms dealing", "gun smuggling"],
               "think_tag": "thinking"}
    harm = dict(weapons, original_category="Self harm",
                synonymous_phrase=["self injury", "self harm acts"])
    body = "<thinking>x</thinking>\n<answer>\nRequest:unsafe\nResponse:safe\nCategory:{}\n</answer>"
    texts = [body.format(c) for c in ("weapon trafficking", "C8S1", "self harm act",
                                      "arms dealing", "self injuries", "cooking")]
    labels = [weapons, harm, weapons]   # prompt p owns rows 2p, 2p + 1
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    n = max(map(len, rows))
    ids = np.zeros((len(rows), n), np.int32)
    mask = np.zeros((len(rows), n), bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, True
    terms = reward(ids, mask, labels)
    refs = [reward.reward.reference(t, labels[i // 2], similarity=enc.similarity)
            for i, t in enumerate(texts)]
    np.testing.assert_allclose(terms["total"], [r["total"] for r in refs], atol=1e-5)
    np.testing.assert_allclose(terms["similarity_bonus"], [r["similarity_bonus"] for r in refs],
                               atol=1e-5)
    bonus = np.asarray(terms["similarity_bonus"])
    # each name is scored against its own prompt's gold: "arms dealing" (row 3, the self-harm
    # prompt) and "self injuries" (row 4, a weapons prompt) earn nothing
    assert bonus[0] > 0 and bonus[2] > 0 and bonus[3] == 0 and bonus[4] == 0
    assert bonus[1] == 0 and bonus[5] == 0
    with pytest.raises(ValueError, match="asks for <think>"):
        reward(ids, mask, [dict(weapons, think_tag="think")] * 3)


def test_update_and_logprob_programs_declare_the_batch_shardings(task, tmp_path):
    """The GRPO update and log-prob jits take explicit in_shardings: the rollout fields are
    split over the batch axes like the prompts (not left as eager slicing placed them).
    (Micro-batches of 8 rows, so that they split over the 8 devices.)"""
    from jax.sharding import PartitionSpec as P

    from guard_jax.training import grpo
    _train(task, tmp_path, **{"train.steps": 1, "train.global_batch": 8,
                              "train.micro_batch": 8, "grpo.skip_old_logprob": "never"})
    _, _, logprobs, update = next(iter(grpo._COMPILED.values()))
    # (the prompts enter once per prompt, 2 rows here, and stay replicated)
    split = {"completion", "completion_mask", "old_logp", "ref_logp", "weights", "advantages"}
    seen = set()
    for fn in (update, logprobs):
        assert fn.compiled, "no program was compiled"
        for b_sh, _ in fn.compiled.values():
            for k, sh in b_sh.items():
                if k in split:
                    assert sh.spec and sh.spec[0] == "data", (k, sh.spec)  # fsdp is 1
                    seen.add(k)
                elif k in ("eps_low", "eps_high", "denom"):
                    assert sh.spec == P(), (k, sh.spec)
    assert seen == split


def test_batch_placed_in_another_layout_is_resharded():
    """A device array laid out otherwise (replicated, as an eager slice may leave it) is moved
    to the declared sharding, and the result is unchanged."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from guard_jax.sharding import make_mesh
    from guard_jax.training.train_step import jit_with_batch
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    w = jax.device_put(jnp.arange(4.0), NamedSharding(mesh, P()))
    fn = jit_with_batch(lambda w, b: (b["completion"] * b["weights"]).sum(1) * w[1], mesh,
                        NamedSharding(mesh, P()))
    x = jnp.arange(8 * 6.0).reshape(8, 6)
    batch = {"completion": jax.device_put(x, NamedSharding(mesh, P())),
             "weights": np.ones((8, 6), np.float32)}
    out = fn(w, batch)
    (b_sh, _), = fn.compiled.values()
    assert b_sh["completion"].spec[0] == "data"
    np.testing.assert_allclose(np.asarray(out), np.asarray(x.sum(1)))


# ---------------------------------------------------------------------------- filled positions
def test_head_over_filled_positions_gives_the_same_loss_and_gradient():
    """grpo.compact_head: the output projection over the filled completion positions only
    (gathered per row shard, scattered back) gives the dense path's log p and entropy at every
    filled position, zeros at padding, and the same loss and gradients; unsharded and on the
    8 fake devices with rows split in 8 blocks (the index sharded with them)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from guard_jax.bench.grpo_bench import make_batch
    from guard_jax.bench.model_bench import make_config
    from guard_jax.models.qwen2_5_vl.model import init_model
    from guard_jax.sharding import batch_shardings, make_mesh, put_batch, row_shards
    from guard_jax.training import grpo
    from guard_jax.training.filled_head import filled_index, index_size, pass_indices

    c = make_config("tiny")
    graphdef, params = nnx.split(init_model(c, 0), nnx.Param)
    batch = make_batch(c, 4, 2, 12, 16)
    lengths = np.array([16, 3, 0, 7, 1, 12, 5, 9])  # a row with no token, one full
    mask = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
    batch.update(completion_mask=jnp.asarray(mask), weights=jnp.asarray(mask, jnp.float32),
                 denom=jnp.float32(mask.sum()))
    settings = grpo.L.LossSettings(temperature=0.9, entropy_coeff=0.01, kl_coef=0.0)

    def loss(p, b):
        return grpo._loss(settings, 1, nnx.merge(graphdef, p), b)[0]

    def logp(p, b):
        return grpo.completion_logprobs(nnx.merge(graphdef, p), b, temperature=0.9,
                                        with_entropy=True)

    ref_logp, ref_ent = jax.jit(logp)(params, batch)
    ref_loss, ref_grad = jax.jit(jax.value_and_grad(loss))(params, batch)
    assert index_size(3, 64) == 8 and index_size(0, 64) == 8 and index_size(61, 64) == 64
    # one size for a pass's micro-batches; rows that do not split over the shards: one block
    halves = pass_indices(mask, [slice(0, 4), slice(4, 8)], 2)
    assert [i.shape for i in halves] == [(2, 20), (2, 20)]  # fullest shard 16 + 3 -> 20
    assert (halves[0][0, :19] == np.flatnonzero(mask[:2])).all() and halves[0][0, 19] == 32
    assert [i.shape for i in pass_indices(mask, [slice(0, 4), slice(4, 8)], 8)] == [(1, 32)] * 2
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    for shards in (1, row_shards(8, mesh)):
        index = filled_index(mask, shards)
        assert index.shape[0] == shards and (index < 16 * 8 // shards).sum() == mask.sum()
        b = dict(batch, head_index=jnp.asarray(index))
        if shards > 1:
            b = put_batch(b, batch_shardings(b, mesh))
        got_logp, got_ent = jax.jit(logp)(params, b)
        np.testing.assert_allclose(np.asarray(got_logp), np.asarray(ref_logp) * mask,
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(got_ent), np.asarray(ref_ent) * mask,
                                   rtol=1e-5, atol=1e-5)
        got_loss, got_grad = jax.jit(jax.value_and_grad(loss))(params, b)
        np.testing.assert_allclose(float(got_loss), float(ref_loss), rtol=1e-5)
        for a, r in zip(jax.tree.leaves(got_grad), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=2e-4, atol=1e-6)
    assert row_shards(8, mesh) == 8 and row_shards(6, mesh) == 1 and row_shards(8, None) == 1


# ---------------------------------------------------------------------------- on-policy skip
def test_skipped_old_logprob_pass_gives_the_same_loss_and_gradient():
    """Strictly on-policy, the loss without old log-probs (old = stop_gradient(current)) equals
    the loss with the old-log-prob forward's output, in value and gradient, on the tiny model
    (fused head, vanilla loss with the dual clip, entropy and KL terms on)."""
    import jax
    from flax import nnx

    from guard_jax.bench.grpo_bench import make_batch
    from guard_jax.bench.model_bench import make_config
    from guard_jax.models.qwen2_5_vl.model import init_model
    from guard_jax.training import grpo

    c = make_config("tiny")
    graphdef, params = nnx.split(init_model(c, 0), nnx.Param)
    batch = make_batch(c, 2, 2, 12, 6)
    settings = grpo.L.LossSettings(temperature=0.9, clip_ratio_dual=3.0, entropy_coeff=0.01,
                                   kl_coef=0.05)
    # the old-log-prob pass (GRPOTrainer.logprobs' forward)
    batch["old_logp"] = grpo.completion_logprobs(nnx.merge(graphdef, params), batch,
                                                 temperature=0.9, with_entropy=False)[0]
    batch["ref_logp"] = batch["old_logp"] - 0.3

    def loss(p, b):
        return grpo._loss(settings, 1, nnx.merge(graphdef, p), b)

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (want, want_m), want_g = grad(params, batch)
    skipped = {k: v for k, v in batch.items() if k != "old_logp"}
    (got, got_m), got_g = grad(params, skipped)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    # equal to float32 rounding (the pass's forward rounds apart from the update's), relative
    # to the largest gradient
    largest = max(float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(want_g))
    assert largest > 1e-3
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * largest)
    # the diagnostics say what is true: ratio exactly 1, nothing clipped
    assert float(got_m["pg_clipfrac"]) == 0 and float(got_m["pg_clipfrac_lower"]) == 0
    assert float(got_m["ppo_kl"]) == 0
    assert abs(float(want_m["ppo_kl"])) < 1e-6  # the pass measured the same log-probs


def test_on_policy_run_skips_the_old_logprob_forward(task, tmp_path, monkeypatch):
    """global_batch = prompts_per_step x G and one epoch: grpo.skip_old_logprob='auto' runs no
    old-log-prob forward (only the reference's, kl_coef > 0) and trains to the parameters that
    'never' (the forward kept) reaches; the logged ratio diagnostics are exact (nothing
    clipped, ppo_kl 0) and the trainer-sampler gap is still measured."""
    from guard_jax.training import grpo
    kw = {"train.steps": 1, "train.global_batch": 8, "train.micro_batch": 4,
          "train.checkpoint_every": 1}
    calls = []
    forward = grpo.GRPOTrainer.logprobs

    def counted(self, params, data, prompts):
        calls[-1] += 1
        return forward(self, params, data, prompts)

    monkeypatch.setattr(grpo.GRPOTrainer, "logprobs", counted)
    for mode in ("auto", "never"):
        calls.append(0)
        _train(task, tmp_path / mode, **kw, **{"grpo.skip_old_logprob": mode})
    assert calls == [1, 2]  # auto: the reference's forward only
    assert grpo.skips_old_logprob(_run_config(task, **kw))
    for other in ({"grpo.num_epochs": 2}, {"train.global_batch": 4},
                  {"grpo.rollout_is": "token"}, {"grpo.kl_in_reward_coef": 0.1}):
        assert not grpo.skips_old_logprob(_run_config(task, **{**kw, **other})), other
    auto, never = _metrics(tmp_path / "auto")[0], _metrics(tmp_path / "never")[0]
    assert auto["actor/pg_clipfrac"] == 0 and auto["actor/ppo_kl"] == 0
    assert 0 <= auto["rollout/logprob_diff"] < 1e-4
    assert abs(auto["rollout/logprob_diff"] - never["rollout/logprob_diff"]) < 1e-5
    np.testing.assert_allclose(auto["loss"], never["loss"], rtol=1e-5, atol=1e-7)
    a, b = _params(str(tmp_path / "auto"), 1), _params(str(tmp_path / "never"), 1)
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-6
