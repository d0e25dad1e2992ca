"""Evaluation of guard models: lenient per-recipe parsers of raw outputs, metrics, scoring rules,
the `--predictions` reader, the config-driven runner and reports (docs/evaluation.md).

Host-side only and numpy-based; the runner takes the generation step as a function, so nothing
here needs the model unless `guard-jax eval --config` runs one.
"""

from guard_jax.evaluation.metrics import (BinaryScores, binary_scores, category_accuracy,
                                          description_score, safeeditbench_scores, token_cost,
                                          weighted_average)
from guard_jax.evaluation.parsers import PARSERS, Verdict, label_of, parse
from guard_jax.evaluation.predictions import Fields, read_predictions, score_predictions
from guard_jax.evaluation.scoring import (RULES, BenchmarkResult, EvalReport, Prediction,
                                          score_benchmark)

__all__ = ["BenchmarkResult", "BinaryScores", "EvalReport", "Fields", "PARSERS", "Prediction",
           "RULES", "Verdict", "binary_scores", "category_accuracy", "description_score",
           "label_of", "parse", "read_predictions", "safeeditbench_scores", "score_benchmark",
           "score_predictions", "token_cost", "weighted_average"]
