"""The report's plots and tables: titles that fit the figure whatever the names, and the
released rule's doubled and dropped samples said in the tables and on the plots."""

from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from guard_jax.evaluation.report import markdown, plot_confusion, plot_f1_bars
from guard_jax.evaluation.scoring import EvalReport, Prediction, score_benchmark

MODEL = "GuardReasoner-VL-Eco-7B-rsft-then-grpo-on-the-full-mix-checkpoint-step-000024"
NAMES = ("ToxicChat", "XSTestResponseHarmful", "AnInternalRedTeamingBenchmarkWithALongName",
         "HarmImageTest", "SPA-VL-Eval")
ROWS = [(1, "Answers: \nRequest: harmful\n"), (0, "Answers: \nRequest: unharmful\n"),
        (0, "Answers: \nRequest: harmful\n"), (1, "no answer"), (0, "no answer")]


def _report(names, rule):
    preds = [Prediction(f"line {i}", gold, raw) for i, (gold, raw) in enumerate(ROWS, 1)]
    return EvalReport(task="prompt", recipe="guardreasoner", rule=rule, model=MODEL,
                      benchmarks=[score_benchmark(n, preds, recipe="guardreasoner",
                                                  task="prompt", rule=rule) for n in names])


@pytest.fixture
def saved(monkeypatch):
    """The figures the report writes, drawn as they were saved."""
    figures = []
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return figures


def _titles(fig):
    """(title text, its window extent) for the figure's title and every axes title, as
    rendered by the Agg canvas the PNG is written with."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [fig._suptitle] + [ax.title for ax in fig.axes]
    return [(t.get_text(), t.get_window_extent(renderer))
            for t in texts if t is not None and t.get_text()]


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("rule", ["clean", "guardreasoner-release"])
def test_plot_titles_fit_the_figure(saved, tmp_path, n, rule):
    report = _report(NAMES[:n], rule)
    plot_confusion(report, tmp_path / "confusion.png")
    plot_f1_bars(report, tmp_path / "f1_bars.png")
    assert len(saved) == 2
    for fig in saved:
        titles = _titles(fig)
        assert len(titles) == (n + 1 if fig is saved[0] else 1)
        width = fig.bbox.width
        for text, box in titles:
            assert 0 <= box.x0 and box.x1 <= width, (text, box.x0, box.x1, width)
        # the confusion matrices' titles do not run into each other either
        boxes = sorted((box.x0, box.x1, box.y0) for _, box in titles[1:])
        for (a0, a1, ay), (b0, b1, by) in zip(boxes, boxes[1:]):
            assert ay != by or a1 <= b0, (a0, a1, b0, b1)
        # nothing of a name is lost by wrapping
        joined = " ".join(" ".join(t.split()) for t, _ in titles).replace(" ", "")
        assert MODEL in joined


def test_release_rule_labels_doubled_and_dropped(saved, tmp_path):
    report = _report(NAMES[:2], "guardreasoner-release")
    (tox, _) = report.benchmarks
    # one failure on an unharmful sample counted twice, one on a harmful sample dropped
    assert (tox.n_doubled, tox.n_dropped, tox.scores.n) == (1, 1, 5)
    md = markdown(report)
    assert ("under `guardreasoner-release`, 2 parse failures counted twice (both wrong) and 2 "
            "dropped; the scores and confusion counts include the doubled entries") in md
    assert "| Counted twice | Dropped | Scored entries | Parse failures |" in md
    assert "| ToxicChat | text | 5 | 5 | 1 | 1 | 5 | 2 (40.00%) |" in md
    plot_confusion(report, tmp_path / "confusion.png")
    plot_f1_bars(report, tmp_path / "f1_bars.png")
    confusion, bars = saved
    titles = [" ".join(t.split()) for t, _ in _titles(confusion)]
    assert "cells count doubled failures twice" in titles[0]
    assert "ToxicChat F1 40.00, failures: 1 counted twice, 1 dropped" in titles[1:]
    ticks = [t.get_text() for t in bars.axes[0].get_xticklabels()]
    assert ticks[0] == "ToxicChat\n1 doubled, 1 dropped"
    # the clean rule has none of it
    clean = _report(NAMES[:2], "clean")
    assert "Counted twice" not in markdown(clean) and "guardreasoner-release" not in markdown(
        clean).split("\n")[4]


def test_video_benchmarks_have_their_columns_and_average(saved, tmp_path):
    """Benchmarks of modality video: their own F1 columns, Avg (Video), a row each in the
    details; the config and --modality accept the word. They used to be left out of the F1
    table altogether (no column, no average) and refused as a modality."""
    from guard_jax.eval_cli import _modalities
    from guard_jax.evaluation.report import write_report
    from guard_jax.evaluation.runner import check_eval_config, eval_base_config
    preds = [Prediction(f"line {i}", gold, raw) for i, (gold, raw) in enumerate(ROWS, 1)]
    modality = {"ToxicChat": None, "HarmBenchPrompt": None, "HarmVideo": "video",
                "SafeWatch": "video"}
    report = EvalReport(task="prompt", recipe="guardreasoner", rule="clean", model="m",
                        benchmarks=[score_benchmark(n, preds, recipe="guardreasoner",
                                                    task="prompt", modality=m)
                                    for n, m in modality.items()])
    averages = report.averages()
    assert averages["video"]["benchmarks"] == ["HarmVideo", "SafeWatch"]
    table = markdown(report).splitlines()
    assert table[2] == ("| Model | ToxicChat | HarmBenchPrompt | Avg (Text) | HarmVideo | "
                        "SafeWatch | Avg (Video) | Avg (All) |")
    assert any(line.startswith("| HarmVideo | video | 5 |") for line in table)
    write_report(report, tmp_path)
    labels = [t.get_text() for t in saved[-1].axes[0].get_xticklabels()]
    assert labels == ["ToxicChat", "HarmBenchPrompt", "HarmVideo", "SafeWatch", "Avg (Text)",
                      "Avg (Video)", "Avg (All)"]
    assert _modalities(["HarmVideo=video"]) == {"HarmVideo": "video"}
    run = eval_base_config("guardreasoner_vl")
    run.eval.benchmarks = (dict(name="HarmVideo", path="x", modality="video"),)
    check_eval_config(run)
