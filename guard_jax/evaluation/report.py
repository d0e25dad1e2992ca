"""Writes an `EvalReport` as JSON, a markdown table laid out like the papers' tables, and PNG plots
(confusion matrices, per-benchmark F1 bars).

The main table has one row per model and the papers' columns: the text benchmarks, Avg (Text),
then the image and text-image benchmarks, Avg (All); F1 x 100 with two decimals
(docs/recipes.md#guardreasoner-vl). A details table gives counts, parse failures and the other
metrics. Plots use matplotlib's Agg canvas directly (no pyplot state, no display needed); titles
are wrapped until they fit the figure. Under `guardreasoner-release` the tables and plots say
how many parse failures were counted twice or dropped, since its counts include them.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from guard_jax.evaluation import benchmarks as bm
from guard_jax.evaluation.scoring import EvalReport

TASK_TITLES = {"prompt": "prompt harmfulness", "response": "response harmfulness",
               "refusal": "refusal"}
_AVG_TITLE = {"text": "Avg (Text)", "image": "Avg (Image)", "text-image": "Avg (Text-Image)",
              "video": "Avg (Video)", "all": "Avg (All)"}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _columns(report: EvalReport) -> list[tuple[str, str]]:
    """(kind, name) columns in the papers' order: kind is "bench" or "avg"."""
    order = bm.table_order([b.name for b in report.benchmarks])
    by_name = {b.name: b for b in report.benchmarks}
    averages = report.averages()
    cols = []
    for m in (*bm.MODALITIES, None):  # None: no modality, or one the suites do not name
        names = [n for n in order if by_name[n].modality == m
                 or (m is None and by_name[n].modality not in bm.MODALITIES)]
        cols += [("bench", n) for n in names]
        # a modality average is worth a column when it differs from a column already shown
        if m is not None and len(names) > 1 and m in averages and len(averages) > 2:
            cols.append(("avg", m))
    if len(report.benchmarks) > 1:
        cols.append(("avg", "all"))
    return cols


def markdown(reports: list[EvalReport] | EvalReport) -> str:
    """The papers' F1 table (one row per report, e.g. per model) and, for each report, its
    details table."""
    reports = [reports] if isinstance(reports, EvalReport) else list(reports)
    first = reports[0]
    cols = _columns(first)
    head = ["Model"] + [n if k == "bench" else _AVG_TITLE[n] for k, n in cols]
    lines = [f"**{TASK_TITLES[first.task].capitalize()}** (F1 %, positive class "
             f"{'refusal' if first.task == 'refusal' else 'harmful'}; recipe `{first.recipe}`, "
             f"rule `{first.rule}`)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        by_name, avg = {b.name: b for b in r.benchmarks}, r.averages()
        cells = [r.model]
        for k, n in cols:
            if k == "bench":
                cells.append(_pct(by_name[n].scores.f1) if n in by_name else "–")
            else:
                cells.append(f"**{_pct(avg[n]['f1'])}**" if n in avg else "–")
        lines.append("| " + " | ".join(cells) + " |")
    for r in reports:
        note = _release_note(r)
        if note:
            lines += ["", f"{r.model}: {note}"]
    for r in reports:
        lines += ["", details(r)]
    return "\n".join(lines) + "\n"


def _release_note(report: EvalReport) -> str | None:
    """What the released rule did to the samples, in one sentence (None under other rules)."""
    if report.rule != "guardreasoner-release":
        return None
    doubled = sum(b.n_doubled for b in report.benchmarks)
    dropped = sum(b.n_dropped for b in report.benchmarks)
    return (f"under `guardreasoner-release`, {doubled} parse failure{'s' * (doubled != 1)} "
            f"counted twice (both wrong) and {dropped} dropped; the scores and confusion counts "
            "include the doubled entries and leave out the dropped samples.")


def details(report: EvalReport) -> str:
    release = report.rule == "guardreasoner-release"
    strict = any(b.strict_rate is not None for b in report.benchmarks)
    head = ["Benchmark", "Modality", "Records", "Weight", "Parse failures", "Precision",
            "Recall", "F1", "Accuracy"] + ["Strict format"] * strict + ["Mean output tokens"]
    if release:
        head[4:4] = ["Counted twice", "Dropped", "Scored entries"]
    lines = [f"Details for {report.model}:", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name in bm.table_order([b.name for b in report.benchmarks]):
        b = next(x for x in report.benchmarks if x.name == name)
        s = b.scores
        row = [b.name, b.modality or "?", str(b.n_records), str(b.weight)]
        if release:
            row += [str(b.n_doubled), str(b.n_dropped), str(s.n)]
        row += [f"{b.parse_failures} ({_pct(b.failure_rate)}%)", _pct(s.precision),
                _pct(s.recall), _pct(s.f1), _pct(s.accuracy)]
        if strict:
            row.append("–" if b.strict_rate is None else f"{_pct(b.strict_rate)}%")
        row.append("–" if b.mean_output_tokens is None else f"{b.mean_output_tokens:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    extra = []
    for b in report.benchmarks:
        if b.n_unlabeled:
            extra.append(f"- {b.name}: {b.n_unlabeled} record{'s' * (b.n_unlabeled != 1)} "
                         "without a gold label, not scored")
        if b.group_macro is not None:
            levels = ", ".join(f"{k} {_pct(v['score'])} ({v['metric']})"
                               for k, v in b.groups.items())
            extra.append(f"- {b.name}: macro over levels **{_pct(b.group_macro)}** ({levels})")
        elif b.groups:
            per = ", ".join(f"{k} {_pct(v['f1'])}" for k, v in b.groups.items())
            extra.append(f"- {b.name}: F1 per group: {per}")
        if b.category:
            extra.append(f"- {b.name}: category accuracy {_pct(b.category['accuracy'])} "
                         f"over {b.category['n']} unsafe in-taxonomy samples")
        if b.ood:
            d = b.ood["description"]
            extra.append(f"- {b.name}: out-of-taxonomy detection F1 "
                         f"{_pct(b.ood['detection']['f1'])}, description score "
                         f"{_pct(d) if d is not None else 'not computed (no similarity)'}")
    if report.skipped:
        extra.append("- malformed lines skipped: " + ", ".join(
            f"{k} {v}" for k, v in sorted(report.skipped.items())))
    tokens = report.averages().get("all", {}).get("mean_output_tokens")
    if tokens is not None:
        extra.append(f"- token cost: {tokens:.1f} mean output tokens")
    return "\n".join(lines + ([""] + extra if extra else []))


def _title_room(fig, title) -> tuple[float, float]:
    """The horizontal span (pixels) a title may use: the figure's, or its axes' grid column."""
    if title.axes is None:
        return 0.0, fig.bbox.width
    spec = title.axes.get_subplotspec()
    col, ncols = spec.colspan, spec.get_gridspec().ncols
    return fig.bbox.width * col.start / ncols, fig.bbox.width * col.stop / ncols


def _fit_titles(fig, titles) -> None:
    """Wraps titles (matplotlib Text, centred) until each lies inside the figure and an axes
    title inside its grid column, so that a long model or benchmark name is never cut off."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    texts = [t.get_text().split("\n") for t in titles]
    for _ in range(10):  # a wrapped title changes the layout: measure again
        fig.draw_without_rendering()
        changed = False
        for title, lines in zip(titles, texts):
            box, (lo, hi) = title.get_window_extent(renderer), _title_room(fig, title)
            if box.x0 >= lo and box.x1 <= hi:
                continue
            centre = (box.x0 + box.x1) / 2
            room = max(2 * min(centre - lo, hi - centre), 1.0)
            longest = max(len(x) for x in title.get_text().split("\n"))
            width = max(1, min(longest - 1, int(longest * room / box.width)))
            title.set_text("\n".join(w for x in lines
                                      for w in textwrap.wrap(x, width, break_on_hyphens=False)
                                      or [""]))
            changed = True
        if not changed:
            return


def _ordered(report: EvalReport):
    return [next(b for b in report.benchmarks if b.name == n)
            for n in bm.table_order([b.name for b in report.benchmarks])]


def _failures_label(b) -> str:
    """How a benchmark's parse failures were counted, for its confusion-matrix title."""
    if b.rule == "guardreasoner-release":
        return f"failures: {b.n_doubled} counted twice, {b.n_dropped} dropped"
    return f"{b.parse_failures} parse failure{'s' * (b.parse_failures != 1)}"


def plot_confusion(report: EvalReport, path) -> Path:
    """One gold x predicted matrix per benchmark (under guardreasoner-release the cells count
    each doubled failure twice, and the titles say so)."""
    from matplotlib.figure import Figure
    import numpy as np

    bs = _ordered(report)
    cols = min(4, len(bs))
    rows = -(-len(bs) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    pos = "refusal" if report.task == "refusal" else "harmful"
    neg = "compliance" if report.task == "refusal" else "unharmful"
    titles = []
    for ax, b in zip(axes, bs):
        s = b.scores
        m = np.array([[s.tn, s.fp], [s.fn, s.tp]])
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(1, m.max()))
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center",
                    color="white" if v > m.max() / 2 else "black")
        ax.set_xticks([0, 1], [neg, pos], fontsize=8)
        ax.set_yticks([0, 1], [neg, pos], fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        titles.append(ax.set_title(f"{b.name}\nF1 {_pct(s.f1)}, {_failures_label(b)}",
                                   fontsize=9))
    for ax in axes[len(bs):]:
        ax.set_axis_off()
    counted = "; cells count doubled failures twice" if report.rule == "guardreasoner-release" \
        else ""
    titles.append(fig.suptitle(f"{report.model}: {TASK_TITLES[report.task]} ({report.rule}"
                               f"{counted})"))
    _fit_titles(fig, titles)
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_f1_bars(report: EvalReport, path) -> Path:
    """Per-benchmark F1 bars, then the averages hatched; under guardreasoner-release each label
    says how many failures were counted twice or dropped."""
    from matplotlib.figure import Figure

    colors = {"text": "tab:blue", "image": "tab:orange", "text-image": "tab:green",
              "video": "tab:purple", None: "tab:gray"}
    bs = _ordered(report)
    release = report.rule == "guardreasoner-release"
    labels = [f"{b.name}\n{b.n_doubled} doubled, {b.n_dropped} dropped" if release else b.name
              for b in bs]
    values = [100 * b.scores.f1 for b in bs]
    color = [colors.get(b.modality, "tab:gray") for b in bs]
    for m, a in report.averages().items():
        if len(a["benchmarks"]) > 1 and (m == "all" or len(a["benchmarks"]) < len(bs)):
            labels.append(_AVG_TITLE[m])
            values.append(100 * a["f1"])
            color.append("black" if m == "all" else colors[m])
    fig = Figure(figsize=(max(5.0, 0.8 * len(labels) + 2), 4.0 + release), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(range(len(labels)), values, color=color)
    for k in range(len(bs), len(labels)):
        bars[k].set_hatch("//")
        bars[k].set_alpha(0.6)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right",
                  fontsize=8 if release else None)
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 105)
    title = ax.set_title(f"{report.model}: {TASK_TITLES[report.task]} F1 per benchmark "
                         f"({report.rule})")
    _fit_titles(fig, [title])
    fig.savefig(path, dpi=100)
    return Path(path)


def write_report(report: EvalReport, out_dir, *, errors=()) -> dict[str, Path]:
    """report.json, report.md, confusion.png, f1_bars.png (and quarantine.jsonl when lines were
    skipped) under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md",
             "confusion": out / "confusion.png", "bars": out / "f1_bars.png"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    plot_confusion(report, paths["confusion"])
    plot_f1_bars(report, paths["bars"])
    if errors:
        paths["quarantine"] = out / "quarantine.jsonl"
        with open(paths["quarantine"], "w", encoding="utf-8") as f:
            for e in errors:
                f.write(json.dumps(e.to_json(), ensure_ascii=False) + "\n")
    return paths
