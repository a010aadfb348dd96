"""What the numbers answer: which strategy wins at which data size, what equal accuracy costs (time to accuracy,
payback), how many labels pretraining saves, and the verdict that opens the report.

Every comparison here is between the best setting of each strategy at a data size, chosen by mean validation
accuracy (`val/acc_best`), never by test accuracy. Where runs selected nothing on validation (a labelled budget too
small for a validation split), a strategy's settings cannot be ranked and each is compared as it is.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from trainwise.report.stats import paired_difference
from trainwise.report.table import Row, best_settings


@dataclass
class TimeTo:
    """How long a row's runs took to first reach a validation accuracy: means over the runs that reached it and
    whose fit time per epoch is known."""

    level: float
    seconds: float | None
    steps: float | None
    reached: int  # runs that reached the level
    runs: int
    untimed: int = 0  # of those, runs that logged only their total fit time (recorded by an older trainwise)


def reference_level(rows: list[Row]) -> float | None:
    """The highest validation accuracy every run of `rows` reaches (None when a run has no validation curve)."""
    peaks = [max(acc for _, _, acc in run.val_curve) for row in rows for run in row.runs if run.val_curve]
    if not peaks or len(peaks) < sum(len(row.runs) for row in rows):
        return None
    return min(peaks)


def time_to(row: Row, level: float) -> TimeTo:
    seconds, steps, reached = [], [], 0
    for run in row.runs:
        first = next(((step, fit) for step, fit, acc in run.val_curve if acc >= level), None)
        if first is None:
            continue
        reached += 1
        if first[1] is not None:
            steps.append(first[0])
            seconds.append(first[1])
    mean = statistics.fmean
    return TimeTo(
        level, mean(seconds) if seconds else None, mean(steps) if steps else None, reached, len(row.runs),
        reached - len(seconds),
    )  # fmt: skip


def _by_size(rows: list[Row]) -> dict[tuple, list[Row]]:
    """Rows that ran on the same model, data and fraction: the ones to compare with each other."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.key[1:4], []).append(row)
    return groups


def _scratch_and_pretrained(group: list[Row]) -> tuple[list[Row], list[Row]]:
    scratch = [r for r in group if r.param("strategy.weights") == "random"]
    return scratch, [r for r in group if r.param("strategy.weights") == "pretrained"]


def time_lines(best: list[Row], target_acc: float | None = None, name_sizes: bool | None = None) -> list[str]:
    """Time to accuracy and payback at equal accuracy, per data size where a pretrained strategy and scratch both
    have validation curves. name_sizes: say the size in each line (default: when `best` holds several)."""
    lines = []
    several = len(_sizes(best)) > 1 if name_sizes is None else name_sizes
    for group in sorted(_by_size(best).values(), key=lambda g: g[0].labelled_size):
        scratch, pretrained = _scratch_and_pretrained(group)
        level = target_acc if target_acc is not None else reference_level(group)
        if not scratch or not pretrained or level is None:
            continue
        times = {row.label: time_to(row, level) for row in group}
        where = f" at {group[0].labelled_size:,} labelled images" if several else ""
        chosen = "report.target_acc" if target_acc is not None else "the highest every strategy reaches"
        parts = [f"{label} {_time(t)}" for label, t in times.items()]
        lines.append(f"Time to {100 * level:.1f} % validation accuracy{where} ({chosen}): " + "; ".join(parts) + ".")
        for row in pretrained:
            lines += [payback_line(row, times[row.label], times[s.label]) for s in scratch]
    return lines


def _time(t: TimeTo) -> str:
    if t.reached == 0:
        return "never reached"
    if t.seconds is None:
        return "reached, time unknown (runs recorded before fit time was logged per epoch)"
    partly = f", reached by {t.reached} of {t.runs} runs" if t.reached < t.runs else ""
    return f"{t.seconds:.1f} s ({t.steps:,.0f} steps{partly})"


def payback_line(pretrained: Row, fine: TimeTo, scratch: TimeTo) -> str:
    """After how many target tasks like this one the foundation's training pays for itself in time, at equal
    (validation) accuracy: pretraining ÷ (scratch's time to the level − the fine-tune's)."""
    name = f"Pretraining for {pretrained.label}"
    if pretrained.pretraining_unknown or pretrained.foundation_seconds is None:
        return f"{name}: its cost is not in this store, so when it pays back is unknown."
    cost = pretrained.foundation_seconds
    if fine.untimed or scratch.untimed:
        return f"{name} ({cost:.1f} s): the time to equal accuracy is unknown, so when it pays back is too."
    if fine.seconds is None:
        return f"{name} ({cost:.1f} s) never pays back here: {pretrained.label} never reaches {100 * fine.level:.1f} %."
    if scratch.seconds is None:
        return (
            f"{name} ({cost:.1f} s): scratch never reaches {100 * fine.level:.1f} %, so equal accuracy is only "
            "bought with pretraining."
        )
    saved = scratch.seconds - fine.seconds
    if saved <= 0:
        return (
            f"{name} ({cost:.1f} s) never pays back in time: {pretrained.label} takes {fine.seconds:.1f} s to reach "
            f"{100 * fine.level:.1f} %, scratch {scratch.seconds:.1f} s."
        )
    return (
        f"{name} ({cost:.1f} s) pays back after {cost / saved:.1f} target tasks like this one: each reaches "
        f"{100 * fine.level:.1f} % {saved:.1f} s sooner than scratch."
    )


def _sizes(rows: list[Row]) -> list[int]:
    return sorted({r.labelled_size for r in rows})


def scratch_size_for(points: list[tuple[int, float]], acc: float) -> float | None:
    """The labelled size at which the scratch curve (size, mean accuracy), sorted by size, first reaches `acc`,
    interpolated linearly in log size; None when it never does (more than the largest size measured)."""
    previous = None
    for size, value in points:
        if value >= acc:
            if previous is None or value == acc or value == previous[1]:
                return float(size)
            (s0, v0), (s1, v1) = previous, (size, value)
            return math.exp(math.log(s0) + (acc - v0) / (v1 - v0) * (math.log(s1) - math.log(s0)))
        previous = (size, value)
    return None


def labels_saved_lines(best: list[Row]) -> list[str]:
    """From the data-efficiency curve: how many labelled images scratch needs to match each pretrained row."""
    lines = []
    for key in {r.key[1:3] for r in best}:
        same = [r for r in best if r.key[1:3] == key]
        scratch, pretrained = _scratch_and_pretrained(same)
        if len(_sizes(scratch)) < 2:
            continue
        points = sorted((r.labelled_size, r.mean("test/acc")) for r in scratch)
        for row in sorted(pretrained, key=lambda r: (r.name, r.labelled_size)):
            acc, n = row.mean("test/acc"), row.labelled_size
            needed = scratch_size_for(points, acc)
            if needed is None:
                text = f"more than the largest size measured ({points[-1][0]:,})"
            elif needed <= n:
                text = f"no more than {n:,} (scratch matches it at this size)"
            else:
                text = f"about {needed:,.0f} ({needed - n:,.0f} more labels)"
            lines.append(f"Labels saved: scratch needs {text} to match {row.name}'s {100 * acc:.1f} % at {n:,}.")
    return lines


def verdict(rows: list[Row], target_acc: float | None = None) -> list[str]:
    """The sentences that open the report: who wins at which size (with the paired intervals), where the
    advantage ends, the best accuracy, what equal accuracy costs and when pretraining pays back, and the labels
    pretraining saves. Facts only."""
    best = best_settings(rows)
    groups = sorted(_by_size(best).values(), key=lambda g: g[0].labelled_size)
    sentences = []
    for name in sorted({r.name for r in best if r.param("strategy.weights") == "pretrained"}):
        outcomes, scratch_name = [], "scratch"
        for group in groups:
            scratch, pretrained = _scratch_and_pretrained(group)
            mine = [r for r in pretrained if r.name == name]
            if scratch and mine:
                scratch_name = scratch[0].name
                paired = paired_difference(scratch[0].by_seed("test/acc"), mine[0].by_seed("test/acc"))
                if paired is not None:
                    outcomes.append((group[0].labelled_size, paired))
        if outcomes:
            sentences += _who_wins(name, scratch_name, outcomes)
    if groups:
        largest = groups[-1]
        top = max(largest, key=lambda r: r.mean("test/acc"))
        others = ", ".join(f"{r.name} {100 * r.mean('test/acc'):.1f} %" for r in largest if r is not top)
        where = f"At {top.labelled_size:,} labelled images" if len(groups) > 1 else "Here"
        sentences.append(
            f"{where} the best test accuracy is {top.name}'s {100 * top.mean('test/acc'):.1f} %"
            + (f" ({others})." if others else ".")
        )
        times = time_lines(largest, target_acc, name_sizes=len(groups) > 1)
        sentences += times[:1]
        if times[1:]:  # one sentence for the pretrained strategies' paybacks
            parts = [times[1].rstrip(".")] + [
                line.rstrip(".").replace("Pretraining", "pretraining", 1) for line in times[2:]
            ]
            sentences.append("; ".join(parts) + ".")
    saved = labels_saved_lines(best)
    if saved:
        sentences.append(saved[0])  # the smallest size of the first pretrained strategy
    return sentences  # (a sentence may start with a strategy's name, written as the config writes it)


def summary_lines(rows: list[Row], records: list, target_acc: float | None = None) -> list[str]:
    """The facts under the table: the foundations, the best row, each pretrained row against scratch (paired),
    time to accuracy and payback at every size, labels saved, runs of unknown cost, runs that failed."""
    from trainwise.report.table import comparison_lines, foundation_lines, mean_pm

    lines: list[str] = foundation_lines(rows)
    target = [r for r in rows if r.on_target and r.mean("test/acc") is not None]
    if target:
        top = max(target, key=lambda r: r.mean("test/acc"))
        lines.append(f"Best test accuracy on the target data: {top.label} ({mean_pm(top, 'test/acc')}).")
        lines += comparison_lines(target)
        lines += tuning_lines(target)
        best = best_settings(rows)
        lines += time_lines(best, target_acc)
        lines += labels_saved_lines(best)
    unknown = [r for r in records if r.pretraining_unknown and not r.failed]
    if unknown:
        sources = sorted({r.tags["trainwise.foundation_run"] for r in unknown})
        lines.append(
            f"{len(unknown)} run(s) started from weights whose training time is not in this store "
            f"({', '.join(sources)}): their totals including pretraining are unknown (?)."
        )
    failed = [r for r in records if r.failed]
    if failed:
        lines.append(
            f"{len(failed)} run(s) did not finish: "
            + ", ".join(f"{r.strategy} {r.run_id[:8]} ({r.status})" for r in failed)
        )
    return lines


def tuning_lines(target: list[Row]) -> list[str]:
    """Each tuned row's learning rate and the search that chose it on validation (tuning.enabled)."""
    chosen: dict[str, list[str]] = {}  # what was chosen (and by which search) -> the rows that train with it
    for row in target:
        search = row.runs[0].tags.get("trainwise.tuning_run")
        if search:
            mult = row.runs[0].params.get("strategy.backbone_lr_mult")
            frozen = row.param("strategy.freeze") == "backbone"  # its multiplier was not searched
            knobs = f"lr={row.param('optimizer.lr')}" + (f", backbone_lr_mult={mult}" if mult and not frozen else "")
            chosen.setdefault(f"{row.name} {knobs} (search {search[:8]})", []).append(row.label)
    return ["Learning rates chosen on validation, per strategy: " + "; ".join(chosen) + "."] if chosen else []


def _who_wins(name: str, scratch: str, outcomes: list[tuple[int, object]]) -> list[str]:
    def points(paired) -> str:
        return f"{100 * paired.mean:+.1f}"

    if all(p.interval is None for _, p in outcomes):
        listed = ", ".join(f"{points(p)} points at {n:,}" for n, p in outcomes)
        return [
            f"{name} − {scratch} in test accuracy: {listed} labelled images, at one seed each: nothing can be said "
            "about which is better (run 3 or more seeds)."
        ]
    better = [(n, p) for n, p in outcomes if p.clear and p.mean > 0]
    worse = [(n, p) for n, p in outcomes if p.clear and p.mean < 0]
    unclear = [(n, p) for n, p in outcomes if not p.clear]
    seeds = min(p.seeds for _, p in outcomes)
    parts = []
    if better:
        parts.append(
            f"{name} beats {scratch} clearly at {_sizes_text([n for n, _ in better])} labelled images "
            f"({', '.join(points(p) for _, p in better)} points; 95 % intervals above 0)"
        )
    if worse:
        parts.append(
            f"{scratch} beats {name} clearly at {_sizes_text([n for n, _ in worse])} "
            f"({', '.join(points(p) for _, p in worse)} points)"
        )
    if unclear:
        sizes = _sizes_text([n for n, _ in unclear])
        parts.append(
            f"there is no clear difference at {sizes} ({seeds} seeds)"
            if parts
            else f"{name} and {scratch} show no clear difference at {sizes} labelled images ({seeds} seeds)"
        )
    sentences = ["; ".join(parts) + "."]
    # Where the advantage ends, when it does so once: clear at the smallest sizes, not from some size on.
    clear = [p.clear and p.mean > 0 for _, p in outcomes]
    k = clear.index(False) if False in clear else len(clear)
    if len(outcomes) > 1 and 0 < k and not any(clear[k:]):
        sizes = [n for n, _ in outcomes]
        sentences.append(
            f"{name}'s clear advantage ends between {sizes[k - 1]:,} and {sizes[k]:,} labelled images."
            if k < len(sizes)
            else f"{name} is clearly ahead at every size measured."
        )
    return sentences


def _sizes_text(sizes: list[int]) -> str:
    text = [f"{n:,}" for n in sizes]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " and " + text[-1]
