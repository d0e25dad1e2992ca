"""SafeGuard-VL's image benchmarks (docs/recipes.md#safeguard-vl): SafeEditBench
(policy levels L1-L5), UnsafeBench and the LlavaGuard test set, with the single-word eval prompt.

Run:   guard-jax eval --config configs/eval/safeguard_vl.py --hf-dir HF_DIR \
         --out runs/eval/safeguard_vl --config.eval.data_root=DATA
Data:  `guard-jax data build safeeditbench|unsafebench|llavaguard --source ... --split test
       --out DATA/SafeEditBench|UnsafeBench|LlavaGuard`.
Expect: runs/eval/safeguard_vl/prompt/report.md: F1 with unsafe positive per benchmark; for
       SafeEditBench the per-level scores (accuracy for L1, F1 for L2-L5) and their macro
       average, the headline; for UnsafeBench F1 per category beside the overall F1 over all
       samples (the released script's "overall"). Published SafeGuard-VL RL-only: LlavaGuard
       71.78, UnsafeBench 62.39, SafeEditBench 45.59; Qwen2.5-VL-7B-Instruct: 57.08 / 41.71 /
       48.68. The published protocol retries up to 3 times and scores an unparseable answer as
       safe: compare with --config.eval.rule=safeguard-release (we generate once; the parse
       failure rate is in the report).
Caveat: our eval prompt checks the image against the sample's policy (SafeEditBench) or, when
       the sample has none (UnsafeBench, LlavaGuard), against the LlavaGuard O1-O9 policy; the
       released UnsafeBench prompt lists 11 OpenAI categories instead.
"""

from guard_jax.evaluation.benchmarks import config_entries
from guard_jax.evaluation.runner import eval_base_config


def get_config():
    c = eval_base_config("safeguard_vl")
    c.eval.recipe_options = "mode='eval'"  # the single-word prompt (grammar single_word)
    c.eval.task = "prompt"
    c.eval.benchmarks = (
        config_entries("safeeditbench", group="policy_level", group_metric="safeeditbench")
        + config_entries("unsafebench", group="category", group_metric="f1")
        + config_entries("llavaguard"))
    c.eval.batch_size = 32
    c.eval.max_prompt_len = 4096
    c.eval.max_new_tokens = 64  # the published eval budget
    return c
