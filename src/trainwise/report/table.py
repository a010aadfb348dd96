"""The comparison table: one row per strategy and setting, mean ± std over seeds, and the facts under it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from trainwise.report.collect import RunRecord
from trainwise.report.stats import mean_interval, paired_difference

WEIGHTS_FROM = {"random": "random init", "pretrained": "foundation"}


@dataclass
class Row:
    """One setting (the run's config apart from its seeds) and its runs, one per seed."""

    key: tuple  # (strategy, model, dataset, train fraction or None, setting hash)
    runs: list[RunRecord]
    detail: str = ""  # what sets this row apart from the other rows of its strategy, e.g. "lr=0.01 freeze=backbone"

    @property
    def name(self) -> str:
        """The strategy and what sets the row apart, without the data fraction."""
        return f"{self.key[0]} {self.detail}".strip()

    @property
    def label(self) -> str:
        fraction = self.key[3]
        return self.name if fraction in ("1.0", "1", None) else f"{self.name} @ {float(fraction):g}"

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def by_seed(self, metric: str) -> dict[str, float]:
        return {r.params.get("seed", r.run_id): r.metrics[metric] for r in self.runs if metric in r.metrics}

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def param(self, name: str) -> str:
        return self.runs[0].params.get(name, "?")

    @property
    def on_target(self) -> bool:
        return self.runs[0].on_target

    @property
    def train_size(self) -> int:
        """Labelled training images (the same for every seed of a row)."""
        return int(float(self.runs[0].params.get("data.train_size", "0")))

    @property
    def labelled_size(self) -> int:
        """Every labelled target image the runs used: trained on, or selected their checkpoint on."""
        return self.runs[0].labelled_size

    @property
    def pretraining_unknown(self) -> bool:
        return any(r.pretraining_unknown for r in self.runs)

    @property
    def foundation_seconds(self) -> float | None:
        """Mean fit time of the runs' foundations; None without a foundation or when one's is unknown."""
        values = [r.foundation_seconds for r in self.runs if r.foundation_seconds is not None]
        return statistics.fmean(values) if values and not self.pretraining_unknown else None


# Params that never tell settings apart: seeds, what the data turned out to be, where runs are tracked.
_NOT_A_SETTING = (
    "seed",
    "foundation.seed",
    "data.",
    "tracking.",
    "resume",
    "force_resume",
    "trust",
    "sweep.",
    "report.",
    "hparams_search.",
    "preprocess.",
)


def group_rows(records: list[RunRecord]) -> list[Row]:
    """One row per setting: runs whose configs differ only in their seeds (tag `trainwise.setting`) are pooled;
    runs of different learning rates, freezing or any other key are not."""
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        if record.failed:
            continue
        key = (
            record.strategy,
            record.tags.get("trainwise.model"),
            record.tags.get("trainwise.dataset"),
            record.params.get("dataset.train_fraction") if record.params.get("strategy.data") == "dataset" else None,
            record.tags.get("trainwise.setting", ""),
        )
        groups.setdefault(key, []).append(record)
    rows = [Row(k, v) for k, v in groups.items()]
    _describe(rows)
    order = {"scratch": 0, "full": 1, "finetune": 2}
    return sorted(rows, key=lambda r: (order.get(r.key[0], 3), r.key[0], r.detail, float(r.key[3] or 1)))


def best_settings(rows: list[Row]) -> list[Row]:
    """The target rows, keeping per (strategy, model, data, fraction) the setting with the best mean validation
    accuracy (all of them where none has one)."""
    groups: dict[tuple, list[Row]] = {}
    for row in (r for r in rows if r.on_target and r.mean("test/acc") is not None):
        groups.setdefault(row.key[:4], []).append(row)
    kept = []
    for group in groups.values():
        ranked = [r for r in group if r.mean("val/acc_best") is not None]
        # ties go to the earlier job (as Optuna's best trial does)
        kept += [max(ranked, key=lambda r: (r.mean("val/acc_best"), -_first_job(r)))] if ranked else group
    return kept


def _first_job(row: Row) -> int:
    numbers = [int(r.tags["trainwise.job_num"]) for r in row.runs if r.tags.get("trainwise.job_num", "").isdigit()]
    return min(numbers, default=0)


def _describe(rows: list[Row]) -> None:
    """Label each row by the params that differ between the rows of its strategy (the data fraction aside)."""
    for strategy in {r.key[0] for r in rows}:
        same = [r for r in rows if r.key[0] == strategy]
        params = [_setting_params(r) for r in same]
        keys = sorted({k for p in params for k in p if not k.startswith(_NOT_A_SETTING)} - {"dataset.train_fraction"})
        varying = [k for k in keys if len({p.get(k) for p in params}) > 1]
        short = {k: k.rsplit(".", 1)[-1] for k in varying}
        if len(set(short.values())) < len(short):  # e.g. optimizer.lr and foundation.optimizer.lr
            short = {k: k for k in varying}
        for row, p in zip(same, params, strict=True):
            row.detail = " ".join(f"{short[k]}={_short_value(p.get(k, '-'))}" for k in varying)


def _short_value(value: str) -> str:
    """A searched float as 4 significant digits (an Optuna draw is 0.0012520653814999472)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if "." in value or "e" in value.lower() else value


def _setting_params(row: Row) -> dict[str, str]:
    """The params that make a row's setting; a learning rate a search chose (tuning) is the search's outcome, not
    part of the setting the user asked for."""
    params = row.runs[0].params
    if "trainwise.tuning_run" in row.runs[0].tags:
        return {k: v for k, v in params.items() if k not in ("optimizer.lr", "strategy.backbone_lr_mult")}
    return params


def mean_pm(row: Row, metric: str, digits: int = 3) -> str:
    mean = row.mean(metric)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {row.std(metric):.{digits}f}" if len(row.values(metric)) > 1 else f"{mean:.{digits}f}"


COLUMNS = [
    "strategy",
    "trained on (labelled images, input)",
    "weights from",
    "trainable / total params",
    "epochs",
    "fit s",
    "images/s",
    "peak MB",
    "test acc",
    "test acc 95 % CI",
    "test loss",
    "total s (incl. pretraining)",
    "runs",
]


def table_cells(rows: list[Row]) -> list[list[str]]:
    """The target table: runs evaluated on the target data only (a foundation's figures are on its source data,
    and `foundation_lines` gives them apart)."""
    cells = []
    for row in (r for r in rows if r.on_target):
        trainable, total = row.mean("model/params_trainable"), row.mean("model/params_total")
        fit = row.mean("cost/fit_seconds") or 0.0
        foundation = row.foundation_seconds
        cells.append(
            [
                row.label,
                _trained_on(row),
                WEIGHTS_FROM.get(row.param("strategy.weights"), row.param("strategy.weights")),
                f"{int(trainable or 0):,} / {int(total or 0):,}",
                f"{row.mean('cost/epochs') or 0:.0f}",
                mean_pm(row, "cost/fit_seconds", 1),
                f"{row.mean('cost/samples_per_second') or 0:,.0f}",
                f"{row.mean('cost/peak_memory_mb') or 0:,.0f}",
                mean_pm(row, "test/acc"),
                _interval(row.values("test/acc")),
                mean_pm(row, "test/loss"),
                _total(fit, foundation, row.pretraining_unknown),
                str(len(row.runs)),
            ]
        )
    return cells


def _trained_on(row: Row) -> str:
    """The data, its labelled images (trained on + validated on), and the input the model saw (tag
    trainwise.input): a fine-tune sees the target at its foundation's input shape."""
    shape = row.runs[0].tags.get("trainwise.input")
    val = row.labelled_size - row.train_size
    images = f"{row.train_size:,} + {val:,} val" if row.on_target else f"{row.train_size:,}"
    return f"{row.key[2]} ({images}, {shape})" if shape else f"{row.key[2]} ({images})"


def _interval(values: list[float]) -> str:
    interval = mean_interval(values)
    return f"{interval[0]:.3f} to {interval[1]:.3f}" if interval else "- (1 seed)"


def _total(fit: float, foundation: float | None, unknown: bool) -> str:
    if unknown:  # not a smaller number that looks complete
        return f"? (? + {fit:.1f})"
    return f"{fit + foundation:.1f} ({foundation:.1f} + {fit:.1f})" if foundation is not None else f"{fit:.1f}"


def foundation_lines(rows: list[Row]) -> list[str]:
    """The foundations apart from the target table: what each trained on, its accuracy on its own source data,
    its cost, and how many target runs here start from it."""
    lines = []
    target_runs = [r for other in rows if other.on_target for r in other.runs]
    for row in (r for r in rows if not r.on_target):
        ids = {r.run_id for r in row.runs}
        users = [r for r in target_runs if r.tags.get("trainwise.foundation_run") in ids]
        lines.append(
            f"Foundation {row.label} on {row.key[2]} ({row.train_size:,} images; its source data, not the target): "
            f"test acc {mean_pm(row, 'test/acc')} on {row.key[2]}, fit {mean_pm(row, 'cost/fit_seconds', 1)} s; "
            f"{len(users)} target run(s) here start from it."
        )
    return lines


def comparison_lines(target: list[Row]) -> list[str]:
    """Each fine-tune-like row against each from-scratch row on the same data fraction: the paired difference in
    test accuracy over the seeds both ran, with its 95 % interval and paired t-test."""
    lines, one_foundation = [], False
    scratch_rows = [r for r in target if r.param("strategy.weights") == "random"]
    for pretrained in (r for r in target if r.param("strategy.weights") == "pretrained"):
        for scratch in (r for r in scratch_rows if r.key[1:4] == pretrained.key[1:4]):
            paired = paired_difference(scratch.by_seed("test/acc"), pretrained.by_seed("test/acc"))
            if paired is None:
                continue
            points = f"{100 * paired.mean:+.1f} points"
            name = f"{pretrained.label} − {scratch.label}"
            if paired.interval is None:
                lines.append(
                    f"{name}: {points} at 1 seed; nothing can be said about uncertainty with one seed "
                    "(run 3 or more, e.g. seed=0,1,2)."
                )
                continue
            low, high = (100 * v for v in paired.interval)
            verdict = "" if paired.clear else f"; no clear difference at {paired.seeds} seeds"
            lines.append(
                f"{name}: {points} (95 % CI {low:+.1f} to {high:+.1f}, paired t-test p={paired.p_value:.3f}, "
                f"{paired.seeds} seeds{verdict})."
            )
            one_foundation |= len({r.tags.get("trainwise.foundation_run") for r in pretrained.runs}) == 1
    if one_foundation:  # once, however many rows it concerns
        lines.append(
            "These intervals leave out the pretraining's randomness: all seeds of a fine-tune start from one "
            "foundation (foundation.seed='${seed}' gives each seed its own)."
        )
    return lines


TRIAL_COLUMNS = ["trial", "strategy", "setting", "val acc (best)", "state", "fit s", "chosen"]


def _state(run: RunRecord) -> str:
    """finished, failed, killed; an Optuna trial its pruner stopped early: pruned."""
    if run.tags.get("trainwise.trial_state") == "PRUNED":
        return "pruned"
    return run.status.lower()


def trial_cells(rows: list[Row], records: list[RunRecord], optuna: bool = False) -> list[list[str]]:
    """Where a strategy ran several settings at one data size (a grid over learning rates, an Optuna search): one
    line per run of them (its trial number, what it tried, its best validation accuracy, its state, its fit time),
    the setting the comparison uses marked. Empty when every strategy ran one setting per size, except after an
    Optuna search (`optuna`), whose every trial is listed."""
    groups: dict[tuple, list[Row]] = {}
    for row in (r for r in rows if r.on_target):
        groups.setdefault(row.key[:4], []).append(row)
    searched = [group for group in groups.values() if len(group) > 1 or optuna]
    if not searched:
        return []
    chosen = {id(r) for r in best_settings(rows)}
    lines = []
    for row in (r for group in searched for r in group):
        for run in row.runs:
            score = run.metrics.get("val/acc_best")
            fit = run.metrics.get("cost/fit_seconds")
            lines.append([run.tags.get("trainwise.job_num", "-"), " ".join(row.label.replace(row.detail, "").split()),
                          row.detail or "-", "-" if score is None else f"{score:.4f}", _state(run),
                          "-" if fit is None else f"{fit:.1f}", "best" if id(row) in chosen else ""])  # fmt: skip
    strategies = {group[0].key[0] for group in searched}
    for run in (r for r in records if r.failed and r.strategy in strategies):
        lines.append([run.tags.get("trainwise.job_num", "-"), run.strategy, "-", "-", _state(run), "-", ""])
    return sorted(lines, key=lambda cells: (int(cells[0]) if cells[0].isdigit() else 10**9, cells[1]))
