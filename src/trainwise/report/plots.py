"""The report's figures (matplotlib, no display needed)."""

from __future__ import annotations

import statistics
from pathlib import Path

from trainwise.report.collect import RunRecord
from trainwise.report.table import Row


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_all(rows: list[Row], records: list[RunRecord], out_dir: Path) -> list[Path]:
    """The plots hold target-data runs only: a foundation's accuracy is on its own source data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r.on_target]
    paths = [_val_acc_curves(rows, out_dir), _accuracy_vs_cost(rows, out_dir)]
    fractions = {r.key[3] for r in rows if r.key[3] is not None}
    if len(fractions) > 1:
        paths.append(_data_efficiency(rows, out_dir))
    trials = [r for r in records if r.tags.get("trainwise.optuna_trial", "").isdigit()]
    if trials:
        paths.append(_optimization_history(trials, out_dir))
    return paths


def _optimization_history(trials: list[RunRecord], out_dir: Path) -> Path:
    """An Optuna search: each trial's best validation accuracy by trial number (pruned trials hollow), and the best
    so far (what optuna.visualization.plot_optimization_history draws, without plotly)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    points = sorted(
        (int(r.tags["trainwise.optuna_trial"]), r.metrics["val/acc_best"], r.tags.get("trainwise.trial_state"))
        for r in trials
        if "val/acc_best" in r.metrics
    )
    complete = [(n, v) for n, v, state in points if state != "PRUNED"]
    pruned = [(n, v) for n, v, state in points if state == "PRUNED"]
    if complete:
        ax.scatter(*zip(*complete, strict=True), color="C0", label="trial (val/acc_best)")
        best, so_far = float("-inf"), []
        for number, value in complete:
            best = max(best, value)
            so_far.append((number, best))
        ax.step(*zip(*so_far, strict=True), where="post", color="C3", label="best so far")
    if pruned:
        ax.scatter(
            *zip(*pruned, strict=True), facecolors="none", edgecolors="C7", label="pruned (best before it stopped)"
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    ax.set(xlabel="trial", ylabel="validation accuracy (best epoch)", title="Optuna search: optimization history")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "optuna_history.png")


def _val_acc_curves(rows: list[Row], out_dir: Path) -> Path:
    plt = pyplot()
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for index, row in enumerate(rows):
        color = f"C{index % 10}"
        for n, run in enumerate(row.runs):
            if not run.val_acc:
                continue
            seconds, acc = zip(*run.val_acc, strict=True)
            label = row.label if n == 0 else None
            by_epoch.plot(range(1, len(acc) + 1), acc, color=color, alpha=0.8, label=label)
            by_time.plot(seconds, acc, color=color, alpha=0.8, label=label)
    by_epoch.set(xlabel="epoch", ylabel="validation accuracy", title="Validation accuracy per epoch")
    by_time.set(xlabel="seconds since the run started", ylabel="validation accuracy", title="... per wall-clock second")
    by_epoch.legend(fontsize=8)
    return _save(fig, out_dir / "val_acc.png")


def _accuracy_vs_cost(rows: list[Row], out_dir: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, row in enumerate(rows):
        fit = row.mean("cost/fit_seconds") or 0.0
        acc = row.mean("test/acc") or 0.0
        ax.scatter([fit], [acc], color=f"C{index % 10}", label=row.label)
        if row.foundation_seconds is not None:
            ax.scatter([fit + row.foundation_seconds], [acc], color=f"C{index % 10}", marker="x")
            ax.annotate(
                "",
                xy=(fit + row.foundation_seconds, acc),
                xytext=(fit, acc),
                arrowprops={"arrowstyle": "->", "alpha": 0.4},
            )
    ax.set(xlabel="training seconds (x: with pretraining)", ylabel="test accuracy", title="Accuracy vs cost")
    ax.set_xscale("symlog")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "accuracy_vs_cost.png")


def _data_efficiency(rows: list[Row], out_dir: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series = sorted({r.name for r in rows if r.key[3] is not None})  # a strategy and its other settings
    for index, strategy in enumerate(series):
        points = sorted((r.labelled_size, r.values("test/acc")) for r in rows if r.name == strategy and r.key[3])
        sizes = [p[0] for p in points]
        means = [statistics.fmean(p[1]) for p in points]
        lows = [min(p[1]) for p in points]
        highs = [max(p[1]) for p in points]
        color = f"C{index % 10}"
        ax.plot(sizes, means, marker="o", color=color, label=strategy)
        ax.fill_between(sizes, lows, highs, color=color, alpha=0.2)
    ax.set(
        xlabel="labelled target images (trained on + validated on)",
        ylabel="test accuracy",
        title="Data efficiency (band: min-max over seeds)",
    )
    ax.set_xscale("log")
    ax.legend()
    return _save(fig, out_dir / "data_efficiency.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
