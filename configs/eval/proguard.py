"""ProGuard's evaluation (docs/recipes.md#proguard): binary safety on its prompt and response
suites, and the unsafe-content categorisation and out-of-taxonomy (OOD) sets.

Run:   guard-jax eval --config configs/eval/proguard.py --hf-dir HF_DIR \
         --out runs/eval/proguard --config.eval.data_root=DATA
Data:  one `guard-jax data build proguard --source FILE --split test --out DATA/NAME` per
       benchmark NAME below (records with query_label / response_label / category /
       original_category / modality, as ProGuard's data release stores them).
Expect: runs/eval/proguard/{prompt,response}/report.md: F1 with unsafe positive per benchmark
       (ProGuard does not state its positive class; unsafe presumed), Avg (Text) weighted by
       samples (ProGuard does not state its aggregation), and for sets with gold categories the
       category accuracy (in-taxonomy unsafe samples) and OOD detection F1. Published ProGuard-7B:
       prompt Avg(Text) 89.98, BeaverTails-V prompt 88.36, LlavaGuard 74.34; response Avg(Text)
       81.29. The OOD description score needs a similarity function (embedding cosine; BGE-M3 in
       the paper), which this command does not load: it reports "not computed".
"""

from guard_jax.evaluation.benchmarks import config_entries
from guard_jax.evaluation.runner import eval_base_config


def get_config():
    c = eval_base_config("proguard")
    c.eval.recipe_options = "think_tag='thinking'"  # the tag the released reward requires
    categorisation_only = ("ProGuard-Text", "ProGuard-Text-Image", "ProGuard-Image")
    c.eval.benchmarks = (
        config_entries("proguard_prompt", task="prompt")
        + tuple(b for b in config_entries("proguard_category", task="prompt")
                if b["name"] in categorisation_only)
        + config_entries("proguard_response", task="response"))
    c.eval.batch_size = 16
    c.eval.max_prompt_len = 4096
    c.eval.max_new_tokens = 1024  # ProGuard's response budget (concise reasoning)
    return c
