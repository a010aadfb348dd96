"""The comparison table: one row per strategy and setting, mean ± std over seeds, and the facts under it."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from trainwise.report.collect import RunRecord

WEIGHTS_FROM = {"random": "random init", "pretrained": "foundation"}


@dataclass
class Row:
    key: tuple
    runs: list[RunRecord]

    @property
    def label(self) -> str:
        strategy, _model, _data, fraction = self.key
        return strategy if fraction in ("1.0", "1", None) else f"{strategy} @ {float(fraction):g}"

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None

    def std(self, metric: str) -> float:
        values = self.values(metric)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def param(self, name: str) -> str:
        return self.runs[0].params.get(name, "?")

    @property
    def train_size(self) -> int:
        """Labelled training images (the same for every seed of a row)."""
        return int(float(self.runs[0].params.get("data.train_size", "0")))

    @property
    def pretraining_unknown(self) -> bool:
        return any(r.pretraining_unknown for r in self.runs)

    @property
    def foundation_seconds(self) -> float | None:
        """Mean fit time of the runs' foundations; None without a foundation or when one's is unknown."""
        values = [r.foundation_seconds for r in self.runs if r.foundation_seconds is not None]
        return statistics.fmean(values) if values and not self.pretraining_unknown else None


def group_rows(records: list[RunRecord]) -> list[Row]:
    """Group finished runs by what differs between strategies and settings; seeds are pooled."""
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        if record.failed:
            continue
        key = (
            record.strategy,
            record.tags.get("trainwise.model"),
            record.tags.get("trainwise.dataset"),
            record.params.get("dataset.train_fraction") if record.params.get("strategy.data") == "dataset" else None,
        )
        groups.setdefault(key, []).append(record)
    order = {"scratch": 0, "full": 1, "finetune": 2}
    return [
        Row(k, v)
        for k, v in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 3), kv[0][0], float(kv[0][3] or 1)))
    ]


def _pm(row: Row, metric: str, digits: int = 3) -> str:
    mean = row.mean(metric)
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {row.std(metric):.{digits}f}" if len(row.values(metric)) > 1 else f"{mean:.{digits}f}"


COLUMNS = [
    "strategy",
    "trained on (images)",
    "weights from",
    "trainable / total params",
    "epochs",
    "fit s",
    "images/s",
    "peak MB",
    "test acc",
    "test loss",
    "total s (incl. pretraining)",
    "runs",
]


def table_cells(rows: list[Row]) -> list[list[str]]:
    cells = []
    for row in rows:
        trainable, total = row.mean("model/params_trainable"), row.mean("model/params_total")
        fit = row.mean("cost/fit_seconds") or 0.0
        foundation = row.foundation_seconds
        cells.append(
            [
                row.label,
                f"{row.key[2]} ({row.train_size})",
                WEIGHTS_FROM.get(row.param("strategy.weights"), row.param("strategy.weights")),
                f"{int(trainable or 0):,} / {int(total or 0):,}",
                f"{row.mean('cost/epochs') or 0:.0f}",
                _pm(row, "cost/fit_seconds", 1),
                f"{row.mean('cost/samples_per_second') or 0:,.0f}",
                f"{row.mean('cost/peak_memory_mb') or 0:,.0f}",
                _pm(row, "test/acc"),
                _pm(row, "test/loss"),
                _total(fit, foundation, row.pretraining_unknown),
                str(len(row.runs)),
            ]
        )
    return cells


def _total(fit: float, foundation: float | None, unknown: bool) -> str:
    if unknown:  # not a smaller number that looks complete
        return f"? (? + {fit:.1f})"
    return f"{fit + foundation:.1f} ({foundation:.1f} + {fit:.1f})" if foundation is not None else f"{fit:.1f}"


def summary_lines(rows: list[Row], records: list[RunRecord]) -> list[str]:
    """Facts read off the numbers: no advice."""
    lines: list[str] = []
    target = [r for r in rows if r.runs[0].on_target and r.mean("test/acc") is not None]
    if target:
        best = max(target, key=lambda r: r.mean("test/acc"))
        lines.append(f"Best test accuracy on the target data: {best.label} ({_pm(best, 'test/acc')}).")

        def per_second(r: Row) -> float:
            return (r.mean("test/acc") or 0) / max(
                1e-9, (r.mean("cost/fit_seconds") or 0) + (r.foundation_seconds or 0)
            )

        costed = [r for r in target if not r.pretraining_unknown]
        if costed:
            fastest = max(costed, key=per_second)
            lines.append(
                f"Best test accuracy per second of training, pretraining included: {fastest.label} "
                f"({per_second(fastest):.4f} accuracy/s)."
            )
    unknown = [r for r in records if r.pretraining_unknown and not r.failed]
    if unknown:
        sources = sorted({r.tags["trainwise.foundation_run"] for r in unknown})
        lines.append(
            f"{len(unknown)} run(s) started from weights whose training time is not in this store "
            f"({', '.join(sources)}): their totals including pretraining are unknown (?)."
        )
    finetunes = [r for r in records if r.foundation_seconds is not None and not r.failed]
    if finetunes:
        pretrain = max(r.foundation_seconds for r in finetunes)
        mean_ft = statistics.fmean(r.metrics.get("cost/fit_seconds", 0.0) for r in finetunes)
        lines.append(
            f"Pretraining the foundation took {pretrain:.1f} s, {pretrain / max(mean_ft, 1e-9):.1f}× one fine-tune "
            f"({mean_ft:.1f} s); shared by the {len(finetunes)} fine-tune(s) here it adds "
            f"{pretrain / len(finetunes):.1f} s to each."
        )
        scratch = [r.metrics["cost/fit_seconds"] for r in records if r.strategy == "scratch" and not r.failed]
        if scratch:
            saved = statistics.fmean(scratch) - mean_ft
            if saved > 0:
                lines.append(
                    f"A fine-tune fits {saved:.1f} s faster than scratch on average, so the pretraining pays for "
                    f"itself in time after {pretrain / saved:.1f} fine-tunes."
                )
            else:
                lines.append("A fine-tune does not fit faster than scratch here: pretraining never pays back in time.")
    failed = [r for r in records if r.failed]
    if failed:
        lines.append(
            f"{len(failed)} run(s) did not finish: "
            + ", ".join(f"{r.strategy} {r.run_id[:8]} ({r.status})" for r in failed)
        )
    return lines
