"""Uncertainty over seeds: a mean's 95 % confidence interval, and the paired difference of two settings run with
the same seeds (Student's t, from scipy)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t interval of the mean over seeds; None with fewer than two values (nothing can be said)."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean = statistics.fmean(values)
    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


@dataclass
class Paired:
    """b − a over the seeds both ran: the mean difference, its 95 % interval and the paired t-test's p-value
    (interval and p are None with fewer than two seeds)."""

    seeds: int
    mean: float
    interval: tuple[float, float] | None
    p_value: float | None

    @property
    def clear(self) -> bool:
        """The interval leaves out 0."""
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)


def paired_difference(a: dict[str, float], b: dict[str, float]) -> Paired | None:
    """a, b: seed -> value. None when no seed is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [b[s] - a[s] for s in seeds]
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return Paired(1, mean, None, None)
    from scipy import stats

    if statistics.pstdev(differences) == 0:  # the same gap at every seed: t is undefined, the sign is not
        return Paired(len(seeds), mean, (mean, mean), 0.0 if mean else 1.0)
    p_value = float(stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds]).pvalue)
    return Paired(len(seeds), mean, mean_interval(differences), p_value)
