"""The LlavaGuard test set with LlavaGuard's own JSON assessment prompt
(docs/recipes.md#llavaguard): safe/unsafe under the O1-O9 policy, and the category.

Run:   guard-jax eval --config configs/eval/llavaguard.py --hf-dir HF_DIR \
         --out runs/eval/llavaguard --config.eval.data_root=DATA
Data:  `guard-jax data build llavaguard --source LlavaGuard-test.json --root IMAGES --split test
       --out DATA/LlavaGuard`.
Expect: runs/eval/llavaguard/prompt/report.md: F1 with unsafe positive, precision, recall,
       accuracy, the JSON parse rate ("strict format") and the category accuracy over unsafe
       samples with an O1-O9 category. For scale: QwenGuard-7B scores 84.57 F1 and SafeGuard-VL
       (RL) 71.78 on this set in SafeGuard-VL's Table 4 (with that paper's prompt).
"""

from guard_jax.evaluation.benchmarks import config_entries
from guard_jax.evaluation.runner import eval_base_config


def get_config():
    c = eval_base_config("llavaguard")
    c.data.max_pixels = 262144  # QwenGuard's image_resolution (docs/recipes.md#llavaguard)
    c.eval.recipe_options = "rationale_first=False"
    c.eval.task = "prompt"
    c.eval.benchmarks = config_entries("llavaguard")
    c.eval.batch_size = 16
    c.eval.max_prompt_len = 8192
    c.eval.max_new_tokens = 512  # a JSON object with a short rationale
    return c
