"""GuardReasoner-VL's two suites (docs/recipes.md#guardreasoner-vl): prompt harmfulness on the 8
benchmarks of paper Table 1 and response harmfulness on the 6 of Table 2.

Run:   guard-jax eval --config configs/eval/guardreasoner_vl.py --hf-dir HF_DIR \
         --out runs/eval/gr_vl --config.eval.data_root=DATA
Data:  one `guard-jax data build CONVERTER --source FILE --split test --out DATA/NAME` per
       benchmark NAME below: the text sets (GuardReasoner's data/benchmark/*.json) with
       `guardreasoner_text`, HarmImageTest and SPA-VL-Eval (HF GuardReasoner-VLTest) with
       `guardreasoner_vl_sft`. WildGuardTest and SPA-VL-Eval serve both tasks.
Expect: runs/eval/gr_vl/{prompt,response}/report.md: per-benchmark F1 (harmful positive),
       Avg (Text) and the sample-weighted Avg (All), plots, and outputs/NAME.jsonl in the release
       format. Published Avg (All), prompt / response: 78.73 / 76.56 (GuardReasoner-VL-3B),
       79.07 / 77.58 (7B), 56.53 / 61.58 (Qwen2.5-VL-7B-Instruct prompted). Published cells
       reproduce only under the released rule: add --config.eval.rule=guardreasoner-release
       (or re-score outputs/ with `guard-jax eval --predictions`).
Decoding: greedy, 4096 new tokens, as in the paper (vLLM there).
"""

from guard_jax.evaluation.benchmarks import config_entries
from guard_jax.evaluation.runner import eval_base_config


def get_config():
    c = eval_base_config("guardreasoner_vl")
    # EasyR1's bounds (docs/recipes.md#guardreasoner-vl); the paper does not state its eval setting
    c.data.min_pixels = 262144
    c.data.max_pixels = 4194304
    # the instruction as the system message, the same one for every set (the text sets carry
    # the text GuardReasoner's three-task instruction); use_sample_instruction=True keeps each
    # dataset's own
    c.eval.recipe_options = "mode='sft',use_sample_instruction=False"
    c.eval.benchmarks = (config_entries("guardreasoner_vl_prompt", task="prompt")
                         + config_entries("guardreasoner_vl_response", task="response"))
    c.eval.batch_size = 16
    c.eval.max_prompt_len = 8192
    c.eval.max_new_tokens = 4096
    return c
