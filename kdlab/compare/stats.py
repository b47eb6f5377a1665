"""Summaries of a few seeds: mean, sample standard deviation and Student's t confidence interval of a mean."""

from __future__ import annotations

import math
import statistics

#: two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    if df < 1:
        return math.nan
    return _T95[df - 1] if df <= len(_T95) else 1.96


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_ci95(values: list[float]) -> tuple[float, float, float]:
    """The mean and its 95% confidence interval (low, high): ``mean ± t * sd / sqrt(n)``; NaN bounds for n < 2."""
    mean, sd = mean_std(values)
    half = t95(len(values) - 1) * sd / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, mean - half, mean + half


def paired_gain(method: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """The mean gain of ``method`` over ``baseline`` on the same seeds, with its 95% interval (paired by seed)."""
    if len(method) != len(baseline):
        raise ValueError(f"paired values need the same seeds: {len(method)} vs {len(baseline)}")
    return mean_ci95([m - b for m, b in zip(method, baseline)])
