"""`trainwise report`: the comparison of a sweep or an experiment, built from MLflow alone.

Outputs: a rich table in the terminal, `report.md`, a self-contained `report.html` (images embedded) and the
PNG plots, written to `--out` and logged under `report/` on the sweep's parent run.
"""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainwise.report.collect import RunRecord, collect_runs
from trainwise.report.table import COLUMNS, TRIAL_COLUMNS, Row, best_settings, group_rows, table_cells, trial_cells
from trainwise.report.verdict import summary_lines, verdict


@dataclass
class Report:
    """A built comparison: one row per strategy and setting (`rows`, mean ± std over seeds), the runs behind
    them (`records`), the table as text (`cells`), the summary lines, and the files written (report.md,
    report.html, the PNGs). `print()` shows it in the terminal."""

    title: str
    rows: list[Row]
    records: list[RunRecord]
    cells: list[list[str]]
    summary: list[str]
    files: list[Path]
    verdict: list[str]  # the sentences that open the report (and the sweep's description in MLflow)
    trials: list[list[str]]  # the settings searched, one line per run, when a strategy ran several per size

    @property
    def failed_runs(self) -> list[RunRecord]:
        return [r for r in self.records if r.failed]

    def best_run(self) -> RunRecord | None:
        """The finished target-data run with the best validation accuracy, among the runs that used the most
        labelled images: validation accuracies of smaller budgets are measured on other (smaller) validation
        splits, and a foundation's on the source data, so none of them compare."""
        done = [r for r in self.records if not r.failed and r.on_target and "val/acc_best" in r.metrics]
        if not done:
            return None
        most = max(r.labelled_size for r in done)
        return max((r for r in done if r.labelled_size == most), key=lambda r: r.metrics["val/acc_best"])

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        # The terminal gets the columns that answer the question, in 100 columns; report.md has them all.
        table = Table(title=self.title, show_lines=False)
        for index, header in TERMINAL_COLUMNS.items():
            text = index in (0, 1)  # the text columns wrap; numbers stay on one line
            table.add_column(header, justify="left" if text else "right", no_wrap=not text)
        for row in self.cells:
            table.add_row(*(row[index] for index in TERMINAL_COLUMNS))
        console = Console(width=100)
        for line in self.verdict:
            console.print(line)
        console.print(table)
        for line in self.summary:
            console.print(line)
        if self.trials:
            searched = Table(title="Settings searched (chosen: the best mean val/acc_best of its strategy and size)")
            for column in TRIAL_COLUMNS:
                searched.add_column(column)
            for cells in self.trials:
                searched.add_row(*cells)
            console.print(searched)
        if self.files:
            console.print(f"Report (every column, the plots): {self.files[0].parent}")


# The terminal's columns (index into COLUMNS, short header): strategy, trained on, test acc, its 95 % CI, fit s,
# total s with the pretraining, runs.
TERMINAL_COLUMNS = {0: "strategy", 1: "trained on", 8: "test acc", 9: "95 % CI", 5: "fit s", 11: "total s", 12: "runs"}


def build_report(
    store,
    sweep_run_id: str | None = None,
    experiment: str | None = None,
    out_dir: Path | None = None,
    log_to_parent: bool = False,
    pool: bool = False,
    target_acc: float | None = None,
) -> Report:
    """Compare the runs of a sweep (its parent's run id) or of a whole MLflow experiment (its name), from `store`
    alone. Writes report.md, report.html and the plots to `out_dir` (a new temporary folder if None) and, with
    log_to_parent, logs them under `report/` on the sweep's parent run. target_acc: the validation accuracy time
    to accuracy is measured at (default: the highest every compared strategy reaches). Raises UserError when there
    is nothing to report on."""
    records, experiment_id = collect_runs(store, sweep_run_id=sweep_run_id, experiment=experiment, pool=pool)
    rows = group_rows(records)
    parent_tags = store.client.get_run(sweep_run_id).data.tags if sweep_run_id else {}
    # An Optuna search's table holds each strategy's best trial (the trials are listed apart); a grid's holds all.
    searched = "optuna" in parent_tags.get("trainwise.sweeper", "").lower()
    shown = [r for r in rows if not r.on_target] + best_settings(rows) if searched else rows
    title = f"trainwise comparison - {'sweep ' + sweep_run_id[:8] if sweep_run_id else 'experiment ' + str(experiment)}"
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="trainwise-report-"))
    out.mkdir(parents=True, exist_ok=True)
    from trainwise.report.plots import draw_all

    images = draw_all(rows, records, out)
    report = Report(
        title, rows, records, table_cells(shown), summary_lines(shown, records, target_acc), [],
        verdict(rows, target_acc), trial_cells(rows, records, optuna=searched),
    )  # fmt: skip
    report.files = [_write_markdown(report, images, out), _write_html(report, images, out), *images]
    if log_to_parent and sweep_run_id:
        for path in report.files:
            store.client.log_artifact(sweep_run_id, str(path), "report")
    return report


def _write_markdown(report: Report, images: list[Path], out: Path) -> Path:
    lines = (
        [f"# {report.title}", "", "**Verdict.** " + " ".join(report.verdict), ""]
        if report.verdict
        else [f"# {report.title}", ""]
    )
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in report.cells]
    lines += ["", *[f"- {line}" for line in report.summary], ""]
    if report.trials:
        lines += [
            "## Settings searched",
            "",
            "| " + " | ".join(TRIAL_COLUMNS) + " |",
            "|" + "---|" * len(TRIAL_COLUMNS),
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in report.trials] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_html(report: Report, images: list[Path], out: Path) -> Path:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in report.cells)
    facts = "".join(f"<li>{html.escape(line)}</li>" for line in report.summary)
    if report.trials:
        trial_head = "".join(f"<th>{html.escape(c)}</th>" for c in TRIAL_COLUMNS)
        trial_body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in report.trials
        )
        facts += f"</ul><h2>Settings searched</h2><table><tr>{trial_head}</tr>{trial_body}</table><ul>"
    pictures = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for p in images
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(report.title)}</h1>"
        f"<p><b>Verdict.</b> {html.escape(' '.join(report.verdict))}</p>"
        f"<table><tr>{head}</tr>{body}</table><ul>{facts}</ul>{pictures}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
