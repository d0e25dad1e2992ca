"""Evaluation metrics against scikit-learn on hand-made, random and degenerate predictions, and
the sample-weighted averages against the published GuardReasoner-VL tables."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from guard_jax.evaluation.metrics import (binary_scores, category_accuracy, description_score,
                                          ood_similarity_bonus, proguard_main_category,
                                          safeeditbench_scores, token_cost, weighted_average)


def _sklearn(t, p):
    """scikit-learn's numbers with a parse failure (-1) read as the opposite of gold."""
    t, p = np.asarray(t), np.asarray(p)
    p = np.where(p == -1, 1 - t, p)
    kw = dict(pos_label=1, zero_division=0)
    return dict(precision=precision_score(t, p, **kw), recall=recall_score(t, p, **kw),
                f1=f1_score(t, p, **kw), accuracy=accuracy_score(t, p))


def _check(t, p):
    s = binary_scores(t, p)
    for k, v in _sklearn(t, p).items():
        assert getattr(s, k) == pytest.approx(v, abs=1e-12), k
    assert s.tp + s.fp + s.fn + s.tn == s.n == len(t)
    assert s.parse_failures == int((np.asarray(p) == -1).sum())
    return s


def test_hand_made():
    t = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [1, 0, -1, 0, 1, -1, 1, 0]
    s = _check(t, p)
    # by hand: tp 2 (0, 6), fn 2 (1, and the failure at 2), fp 2 (4, and the failure at 5), tn 2
    assert (s.tp, s.fn, s.fp, s.tn) == (2, 2, 2, 2)
    assert s.f1 == pytest.approx(0.5) and s.parse_failures == 2 and s.failure_rate == 0.25


@pytest.mark.parametrize("seed", range(6))
def test_random(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    t = rng.integers(0, 2, n)
    p = rng.choice([-1, 0, 1], size=n, p=[0.1, 0.45, 0.45])
    _check(t, p)


@pytest.mark.parametrize("t,p", [
    ([0, 0, 0, 0], [0, 0, 0, 0]),      # no positives anywhere: F1, precision, recall 0
    ([0, 0, 0], [1, 0, -1]),           # no gold positives, false alarms
    ([1, 1, 0], [0, 0, 0]),            # never predicts positive
    ([1, 0, 1, 0], [-1, -1, -1, -1]),  # every output unparseable
    ([1, 1], [-1, -1]),                # all positives, all unparseable
    ([1, 1, 1], [1, 1, 1]),            # one class, all right
])
def test_degenerate(t, p):
    s = _check(t, p)
    if all(x == -1 for x in p):
        assert s.f1 == 0 and s.accuracy == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 gold labels but 3"):
        binary_scores([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="predictions must be"):
        binary_scores([0, 1], [0, 2])
    with pytest.raises(ValueError, match="gold labels must be"):
        binary_scores([0, -1], [0, 1])
    with pytest.raises(ValueError, match="positive sum"):
        weighted_average([1.0], [0])


def test_weighted_average_reproduces_published_guardreasoner_vl_7b():
    """Paper Tables 1-2: per-benchmark F1 of GuardReasoner-VL-7B, weighted by sample counts,
    give the published averages (WildGuardTest weighs 1,725, docs/recipes.md#guardreasoner-vl)."""
    prompt_text = [76.51, 98.30, 70.98, 90.13, 98.99, 88.35]
    w_text = [2853, 239, 1680, 359, 100, 1725]
    assert weighted_average(prompt_text, w_text) == pytest.approx(79.88, abs=0.01)
    assert weighted_average(prompt_text + [70.84, 85.60], w_text + [3295, 3282]) == \
        pytest.approx(79.07, abs=0.005)
    resp = [87.22, 66.37, 84.76, 92.72, 79.04]
    w_resp = [602, 2000, 3021, 446, 1725]
    assert weighted_average(resp, w_resp) == pytest.approx(79.42, abs=0.005)
    assert weighted_average(resp + [73.22], w_resp + [3282]) == pytest.approx(77.58, abs=0.005)
    # and it is the weighted mean, not a pooled score
    assert weighted_average([0.5, 1.0], [1, 3]) == pytest.approx(np.average([0.5, 1.0],
                                                                            weights=[1, 3]))


def test_safeeditbench_macro():
    rng = np.random.default_rng(7)
    levels = np.repeat(["L1", "L2", "L3", "L4", "L5"], 12)
    t = np.where(levels == "L1", 0, rng.integers(0, 2, len(levels)))  # L1: no unsafe by design
    p = rng.choice([-1, 0, 1], size=len(levels))
    out = safeeditbench_scores(t, p, levels)
    expect = {}
    for lv in ("L1", "L2", "L3", "L4", "L5"):
        m = levels == lv
        ref = _sklearn(t[m], p[m])
        expect[lv] = ref["accuracy"] if lv == "L1" else ref["f1"]
        assert out["levels"][lv]["score"] == pytest.approx(expect[lv])
        assert out["levels"][lv]["metric"] == ("accuracy" if lv == "L1" else "f1")
    assert out["macro"] == pytest.approx(np.mean(list(expect.values())))


def test_category_accuracy_and_proguard_ids():
    gold = ["C8S2", "C1S1", None, "c3s3", "O3"]
    pred = ["C8S2", "C1S2", "C2S1", None, "o3"]
    acc, n = category_accuracy(gold, pred)
    assert n == 4 and acc == pytest.approx(2 / 4)  # None gold left out; None prediction wrong
    assert proguard_main_category("C10S3") == "C10" and proguard_main_category("C8") == "C8"
    assert category_accuracy([], []) == (0.0, 0)


def test_ood_detection_is_binary_f1_with_ood_positive():
    gold_ood = [1, 1, 0, 0, 1]
    pred = [1, 0, 0, 1, -1]  # free-text name, an id, an id, a name, no category at all
    s = _check(gold_ood, pred)
    assert s.tp == 1 and s.fp == 1 and s.fn == 2


def test_description_score_by_hand():
    def exact(a, b):  # 1 for equal texts (case-insensitive), else 0
        return np.asarray([float(x.lower() == y.lower()) for x, y in zip(a, b)])

    syn = ("s1", "s2", "s3", "s4", "s5")
    # sample 0: equals the gold name: max 1 -> b1 = 0.5, mean 1/6 -> bonus 0.5 -> score 1
    # sample 1: equals nothing -> 0; sample 2: no free-text name -> 0
    score = description_score(["Gold Name", "other", None], ["gold name", "x", "y"],
                              [syn, syn, syn], exact)
    assert score == pytest.approx(1 / 3)
    # b2 wins when the similarities are uniformly high: all 0.8 -> b1 = 1/6, b2 = 0.25
    assert ood_similarity_bonus([0.8] * 6) == pytest.approx(0.25)
    assert ood_similarity_bonus([0.1] * 6) == 0.0
    assert description_score([None], ["a"], [()], exact) == 0.0


def test_token_cost():
    assert token_cost([10, None, 20]) == 15.0
    assert token_cost([None, None]) is None
