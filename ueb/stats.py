"""The statistics every table and check uses: one interval, one noise rule.

- A value over seeds is its mean with the half-width of the 95% Student-t interval,
  t(0.975, n-1)·s/sqrt(n) (s: the sample standard deviation, n-1). With the 2-5 seeds a CPU
  budget allows, the t quantile (4.30 at n=3) matters: a normal interval would be half as wide.
- Two values are "within noise" of each other when their difference lies inside the 95%
  Welch interval of the difference: |a - b| <= t(0.975, df)·sqrt(s_a²/n_a + s_b²/n_b), df by
  Welch-Satterthwaite. A side with one seed borrows the other side's s (both measure the same
  seed noise; df then from the side that has it); with one seed on both sides nothing is known
  about the noise and no difference is within it.

The table's `≈` mark and `ueb check` both call `difference_half_width`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# A cell whose 95% half-width is above this many accuracy points is not resolved at the run's
# budget: the table marks it, and more seeds (or a longer protocol) are needed to read it.
RESOLUTION_POINTS = 5.0


def t975(df: float) -> float:
    """The 97.5% quantile of Student's t with `df` (possibly fractional) degrees of freedom."""
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1")
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def half_width(std: float | None, n: int) -> float | None:
    """Half-width of the 95% t-interval of a mean of n values (None below two)."""
    if std is None or n < 2:
        return None
    return t975(n - 1) * std / math.sqrt(n)


def difference_half_width(
    std_a: float | None, n_a: int, std_b: float | None, n_b: int
) -> float | None:
    """Half-width of the 95% Welch interval of a difference of two means (module docstring);
    None when neither side has two values."""
    if n_a < 1 or n_b < 1:
        return None
    sa = std_a if n_a > 1 else None
    sb = std_b if n_b > 1 else None
    if sa is None and sb is None:
        return None
    if sa is None:
        assert sb is not None
        return t975(n_b - 1) * sb * math.sqrt(1 / n_a + 1 / n_b)
    if sb is None:
        return t975(n_a - 1) * sa * math.sqrt(1 / n_a + 1 / n_b)
    va, vb = sa**2 / n_a, sb**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return t975(max(1.0, df)) * se


def values_half_width(a: Sequence[float], b: Sequence[float]) -> float | None:
    """`difference_half_width` of two samples."""
    _, sa = mean_std(a)
    _, sb = mean_std(b)
    return difference_half_width(sa, len(a), sb, len(b))


@dataclass(frozen=True)
class NestedComponents:
    """A nested design's spread: P poisons, each trained on by V victims (balanced or not).

    One-way random effects: the victims' variance is the mean within-poison variance (MS_W),
    the poisons' is (MS_B - MS_W) / V (>= 0), MS_B = V x the variance of the poison means.
    The poisons are the independent units of the grand mean: its standard error is
    sqrt(MS_B / (P V)) on P - 1 degrees of freedom."""

    poisons: int
    victims: int
    poison_var: float
    victim_var: float
    se: float

    @property
    def poison_sd(self) -> float:
        return math.sqrt(self.poison_var)

    @property
    def victim_sd(self) -> float:
        return math.sqrt(self.victim_var)

    @property
    def half_width(self) -> float | None:
        return t975(self.poisons - 1) * self.se if self.poisons > 1 else None


def nested_components(groups: Sequence[Sequence[float]]) -> NestedComponents | None:
    """Variance components of values grouped by poison (None below two poisons)."""
    groups = [list(g) for g in groups if g]
    if len(groups) < 2:
        return None
    v = statistics.fmean(len(g) for g in groups)
    means = [statistics.fmean(g) for g in groups]
    ms_b = v * statistics.variance(means)
    within = [statistics.variance(g) for g in groups if len(g) > 1]
    ms_w = statistics.fmean(within) if within else 0.0
    return NestedComponents(
        poisons=len(groups),
        victims=round(v),
        poison_var=max(0.0, (ms_b - ms_w) / v),
        victim_var=ms_w,
        se=math.sqrt(ms_b / (len(groups) * v)),
    )
