"""The one place an interval is computed: every benchmark, report and evaluation calls these, so a figure's rule
is the rule named here, not one re-derived beside it.

Which rule for which case (95% unless ``level`` says otherwise):

- a **proportion** ``k / n`` (hits, exact matches): ``wilson`` (score interval; stays inside [0, 1] and is not
  zero-width at 0 or n, unlike the normal approximation);
- a **mean over a few independent runs** (seeds, windows, samples): ``t_interval``, Student's t with ``n - 1``
  degrees of freedom (1.96 would understate a 2-3 seed interval by 2-6x);
- the **difference (or ratio) between two methods on the same samples**: ``paired_bootstrap``, resampling the
  sample indices so both methods see the same resample;
- **samples that share a source** (views of one photo, questions of one context, items shared across seeds):
  ``clustered_bootstrap`` resamples whole clusters; ``crossed_bootstrap`` resamples both the rows and the
  columns of a [runs, items] table (seeds x shared items);
- the mean of a non-0/1 score over independent samples where normality is doubtful: ``bootstrap``.

Bootstraps are percentile intervals over ``resamples`` draws from ``random.Random(seed)`` (pure Python, so the
same seed gives the same interval on every machine): the lower bound is the ``floor(B * a/2)``-th sorted draw and
the upper the ``ceil(B * (1 - a/2))``-th, counting from 1. Fewer than two values give a nan interval, never a
zero-width one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "Interval",
    "bootstrap",
    "clustered_bootstrap",
    "crossed_bootstrap",
    "normal_quantile",
    "paired_bootstrap",
    "t_interval",
    "t_quantile",
    "wilson",
]

NAN = float("nan")


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval ``[lo, hi]``; ``rule`` names how it was made (it goes into results rows)."""

    estimate: float
    lo: float
    hi: float
    n: int
    rule: str

    @property
    def half(self) -> float:
        """Half the width (the ``±`` figure); for a symmetric rule (t) exactly ``estimate - lo``."""
        return (self.hi - self.lo) / 2

    def pair(self) -> tuple[float, float]:
        return (self.lo, self.hi)


def normal_quantile(level: float = 0.95) -> float:
    """The two-sided normal quantile (1.95996... at 95%), for sample-size planning and known standard errors."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0."""
    return 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(df: float, level: float = 0.95) -> float:
    """The two-sided Student-t quantile with ``df`` degrees of freedom (12.706 for df=1 at 95%), by bisection on
    the exact tail (no table, so no fallback to 1.96 past the table's end)."""
    if df <= 0:
        raise ValueError(f"t_quantile: df must be > 0, got {df}")
    tail = (1 - level) / 2
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > tail:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_upper_tail(mid, df) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return (lo + hi) / 2


def wilson(k: float, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of the proportion ``k / n`` (``k`` may be a sum of 0/1 scores). ``n = 0``: nothing
    is known, so the estimate is nan and the interval the whole of [0, 1]."""
    if n <= 0:
        return Interval(NAN, 0.0, 1.0, 0, "wilson")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    z = normal_quantile(level)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # at k = 0 (k = n) the bound is exactly 0 (1); computed, it can land a rounding error away (1.4e-17)
    lo = 0.0 if k == 0 else max(0.0, c - h)
    hi = 1.0 if k == n else min(1.0, c + h)
    return Interval(p, lo, hi, n, "wilson")


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v == v]  # a nan value is a missing run, not a number


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of independent runs (seeds, windows) and its Student-t interval with ``n - 1`` degrees of freedom.
    nan values are dropped (a run that produced no figure); one value gives a nan interval."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return Interval(NAN, NAN, NAN, 0, "t")
    m = sum(xs) / n
    if n == 1:
        return Interval(m, NAN, NAN, 1, "t")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return Interval(m, m - h, m + h, n, "t")


def _percentile(draws: list[float], level: float) -> tuple[float, float]:
    draws = sorted(d for d in draws if d == d)
    b = len(draws)
    if b == 0:
        return NAN, NAN
    a = (1 - level) / 2
    return draws[max(0, math.floor(b * a))], draws[min(b, math.ceil(b * (1 - a))) - 1]


def _resampled(
    n: int, statistic: Callable[[list[int]], float], resamples: int, seed: int, level: float
) -> tuple[float, float]:
    rng = random.Random(seed)
    idx = range(n)
    return _percentile([statistic(rng.choices(idx, k=n)) for _ in range(resamples)], level)


def bootstrap(values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean of independent samples."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n < 2:
        return Interval(xs[0] if xs else NAN, NAN, NAN, n, "bootstrap")
    lo, hi = _resampled(n, lambda pick: sum(xs[i] for i in pick) / n, resamples, seed, level)
    return Interval(sum(xs) / n, lo, hi, n, "bootstrap")


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    ratio: bool = False,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Two methods on the same samples (``a[i]`` and ``b[i]`` come from sample i): the interval of
    ``mean(a) - mean(b)`` (or ``mean(a) / mean(b)`` with ``ratio``), resampling sample indices so a resample
    keeps each pair together. A resample whose ``mean(b)`` is 0 gives no ratio and is left out."""
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap: {len(a)} values against {len(b)}; pairs need the same samples")
    xa, xb = [float(v) for v in a], [float(v) for v in b]
    n = len(xa)

    def stat(pick: Sequence[int]) -> float:
        sa, sb = sum(xa[i] for i in pick), sum(xb[i] for i in pick)
        if ratio:
            return sa / sb if sb else NAN
        return (sa - sb) / len(pick)

    rule = "paired bootstrap (ratio)" if ratio else "paired bootstrap"
    est = stat(range(n)) if n else NAN
    if n < 2:
        return Interval(est, NAN, NAN, n, rule)
    lo, hi = _resampled(n, stat, resamples, seed, level)
    return Interval(est, lo, hi, n, rule)


def clustered_bootstrap(
    values: Sequence[float],
    clusters: Sequence[object],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Mean of samples that share a source (``clusters[i]`` names sample i's source, e.g. the photo of a view):
    resamples whole clusters with replacement and takes the mean over every sample of the picked clusters, so
    samples of one source move together. For paired differences, pass ``a[i] - b[i]`` as the values. Clusters
    are taken in order of first appearance, so the same rows give the same interval."""
    if len(values) != len(clusters):
        raise ValueError(f"clustered_bootstrap: {len(values)} values against {len(clusters)} cluster labels")
    groups: dict[object, list[float]] = {}
    for v, c in zip(values, clusters, strict=True):
        groups.setdefault(c, []).append(float(v))
    sums = [sum(g) for g in groups.values()]
    sizes = [len(g) for g in groups.values()]
    n = sum(sizes)
    est = sum(sums) / n if n else NAN
    if len(sums) < 2:
        return Interval(est, NAN, NAN, n, "clustered bootstrap")

    def stat(pick: Sequence[int]) -> float:
        return sum(sums[i] for i in pick) / sum(sizes[i] for i in pick)

    lo, hi = _resampled(len(sums), stat, resamples, seed, level)
    return Interval(est, lo, hi, n, "clustered bootstrap")


def crossed_bootstrap(
    table: Sequence[Sequence[float]], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Mean of a [runs, items] table where every run (seed) scores the same items: each resample draws the runs
    and, independently, the items with replacement (first all runs, then all items, from one ``Random(seed)``),
    so both seed-to-seed and item-to-item variation enter the interval."""
    rows = [[float(v) for v in r] for r in table]
    s = len(rows)
    m = len(rows[0]) if rows else 0
    if any(len(r) != m for r in rows):
        raise ValueError("crossed_bootstrap: every run must score the same items")
    est = sum(map(sum, rows)) / (s * m) if s and m else NAN
    if s * m < 2:
        return Interval(est, NAN, NAN, s * m, "crossed bootstrap")
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        rs = [rng.randrange(s) for _ in range(s)]
        cs = [rng.randrange(m) for _ in range(m)]
        draws.append(sum(rows[r][c] for r in rs for c in cs) / (s * m))
    lo, hi = _percentile(draws, level)
    return Interval(est, lo, hi, s * m, "crossed bootstrap")
