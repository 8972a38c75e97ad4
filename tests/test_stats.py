"""tokensieve.stats against hand-computed and table values (t tables, Wilson's published examples, exact
bootstrap enumerations), never against its own helpers."""

from __future__ import annotations

import itertools
import math

import pytest

from tokensieve import stats

# Student-t two-sided quantiles from a printed table (Fisher & Yates / any textbook), df -> t_{0.975}
T_TABLE_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042,
              60: 2.000, 120: 1.980}


@pytest.mark.parametrize(("df", "t"), sorted(T_TABLE_95.items()))
def test_t_quantile_matches_the_printed_table(df: int, t: float) -> None:
    assert stats.t_quantile(df) == pytest.approx(t, abs=6e-4)


def test_t_quantile_other_levels_and_the_normal_limit() -> None:
    assert stats.t_quantile(5, level=0.99) == pytest.approx(4.032, abs=6e-4)
    assert stats.t_quantile(10, level=0.90) == pytest.approx(1.812, abs=6e-4)
    assert stats.t_quantile(1e7) == pytest.approx(1.95996, abs=1e-4)
    assert stats.normal_quantile() == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        stats.t_quantile(0)


def test_t_interval_by_hand() -> None:
    iv = stats.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_2 = 4.3027
    assert (iv.estimate, iv.n, iv.rule) == (2.0, 3, "t")
    assert iv.half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert iv.lo == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-6)
    # more than 10 runs: the exact quantile, not 1.96 (the old tables fell back to the normal past df 9)
    xs = [float(i % 2) for i in range(11)]
    m = sum(xs) / 11
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / 10)
    assert stats.t_interval(xs).half == pytest.approx(2.228139 * sd / math.sqrt(11), rel=1e-5)


def test_t_interval_one_value_is_nan_not_zero_width_and_nan_runs_are_dropped() -> None:
    one = stats.t_interval([0.5])
    assert one.estimate == 0.5 and math.isnan(one.half)
    assert math.isnan(stats.t_interval([]).estimate)
    assert stats.t_interval([1.0, float("nan"), 3.0]).n == 2


def test_wilson_matches_published_examples() -> None:
    # Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605; 0/20 -> 0-0.1611
    for k, n, lo, hi in ((81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611)):
        iv = stats.wilson(k, n)
        assert (iv.lo, iv.hi) == (pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4))
        assert iv.estimate == k / n and iv.rule == "wilson"


def test_wilson_edges() -> None:
    full = stats.wilson(20, 20)
    assert full.hi == 1.0 and full.lo == pytest.approx(1 - 0.1611, abs=1e-4)
    nothing = stats.wilson(0, 0)
    assert (nothing.lo, nothing.hi) == (0.0, 1.0) and math.isnan(nothing.estimate)
    assert stats.wilson(2.5, 5).estimate == 0.5  # a sum of 0/1 scores may be fractional after averaging questions
    with pytest.raises(ValueError):
        stats.wilson(6, 5)


def _exact_bootstrap_quantiles(xs: list[float]) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of the full bootstrap distribution, by enumerating every resample."""
    means = sorted(sum(p) / len(xs) for p in itertools.product(xs, repeat=len(xs)))
    b = len(means)
    return means[math.floor(0.025 * b)], means[math.ceil(0.975 * b) - 1]


def test_bootstrap_approaches_the_enumerated_distribution() -> None:
    xs = [0.0, 0.0, 1.0, 3.0]
    lo, hi = _exact_bootstrap_quantiles(xs)
    iv = stats.bootstrap(xs, resamples=20000)
    assert (iv.lo, iv.hi) == (lo, hi)
    assert iv.estimate == 1.0


def test_bootstrap_is_deterministic_per_seed() -> None:
    xs = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3]
    assert stats.bootstrap(xs, seed=3) == stats.bootstrap(xs, seed=3)
    assert stats.bootstrap(xs, seed=3) != stats.bootstrap(xs, seed=4)


def test_paired_bootstrap_keeps_pairs_together() -> None:
    b = [0.0, 10.0, 2.0, 7.0, 1.0, 9.0]
    a = [x + 1.0 for x in b]  # every sample improves by exactly 1: a paired interval has no width
    iv = stats.paired_bootstrap(a, b)
    assert (iv.estimate, iv.lo, iv.hi) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert "paired" in iv.rule
    r = stats.paired_bootstrap([2 * x for x in b], b, ratio=True)
    assert (r.estimate, r.lo, r.hi) == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1.0], [1.0, 2.0])


def test_paired_bootstrap_difference_by_enumeration() -> None:
    a, b = [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]
    lo, hi = _exact_bootstrap_quantiles([x - y for x, y in zip(a, b, strict=True)])
    iv = stats.paired_bootstrap(a, b, resamples=20000)
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))


def test_clustered_bootstrap_moves_a_source_as_one() -> None:
    means = [0.1, 0.9, 0.4, 0.6, 0.2, 0.8, 0.3, 0.7]
    values = [m for m in means for _ in range(5)]  # five identical views per photo
    photos = [i for i in range(len(means)) for _ in range(5)]
    clustered = stats.clustered_bootstrap(values, photos, resamples=20000)
    naive = stats.bootstrap(values, resamples=20000)
    assert clustered.estimate == pytest.approx(0.5) and clustered.n == 40
    # five copies add no information: the clustered interval is the 8-photo interval, wider than the 40-view one
    assert clustered.hi - clustered.lo > 1.8 * (naive.hi - naive.lo)
    lo, hi = _exact_bootstrap_quantiles([0.1, 0.9, 0.4, 0.6])
    four = stats.clustered_bootstrap([m for m in (0.1, 0.9, 0.4, 0.6) for _ in range(3)],
                                     [c for c in "abcd" for _ in range(3)], resamples=40000)
    assert (four.lo, four.hi) == (pytest.approx(lo), pytest.approx(hi))


def test_clustered_bootstrap_weighs_clusters_by_size() -> None:
    iv = stats.clustered_bootstrap([1.0, 1.0, 1.0, 0.0], ["a", "a", "a", "b"])
    assert iv.estimate == 0.75  # the mean over samples, not over cluster means (0.5)
    with pytest.raises(ValueError):
        stats.clustered_bootstrap([1.0], ["a", "b"])


def test_crossed_bootstrap() -> None:
    flat = stats.crossed_bootstrap([[0.5] * 4] * 3)
    assert (flat.estimate, flat.lo, flat.hi) == (0.5, 0.5, 0.5)
    table = [[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    iv = stats.crossed_bootstrap(table, seed=1)
    assert iv.estimate == pytest.approx(8 / 12) and iv.lo < iv.estimate < iv.hi
    assert iv == stats.crossed_bootstrap(table, seed=1)
    with pytest.raises(ValueError):
        stats.crossed_bootstrap([[1.0, 2.0], [1.0]])
