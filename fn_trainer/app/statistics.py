"""Statistics over seeds: a configuration's spread, and the difference of two
configurations with Welch's t confidence interval.

With K seeds per configuration, a result is ``mean ± std`` (sample standard deviation,
``ddof=1``) over its K runs. Two configurations a and b differ by ``mean(a) - mean(b)``;
Welch's t interval (unequal variances, Welch–Satterthwaite degrees of freedom)::

    se = sqrt(s_a**2 / n_a + s_b**2 / n_b)
    diff ± t_{0.975, df} * se

The difference exceeds seed noise when that interval, as printed (its ends rounded
outwards), excludes 0; where neither side varies over its seeds there is no interval.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Optional, Sequence

LEVEL = 0.95  # the confidence level of every interval in the report


class Spread(NamedTuple):
    """``mean`` and sample ``std`` of ``n`` runs (``std`` is ``None`` for one run)."""

    mean: float
    std: Optional[float]
    n: int


ONE_SEED = "one seed: no interval"
NO_SPREAD = "no interval: every seed gave the same value on both sides, so seed noise is not measured"


class Difference(NamedTuple):
    """``mean(a) - mean(b)`` and its ``LEVEL`` interval ``[low, high]``; without one (``None``),
    ``why`` says why: fewer than two runs on a side, or no spread on either."""

    diff: float
    low: Optional[float]
    high: Optional[float]
    why: Optional[str] = None

    @property
    def exceeds_noise(self) -> Optional[bool]:
        """Whether the interval excludes 0; ``None`` without an interval."""
        if self.low is None:
            return None
        return self.low > 0 or self.high < 0

    def rounded(self, digits: int) -> "Difference":
        """The interval with its ends rounded outwards to ``digits`` decimals: it holds the
        computed one (to within 1e-6 of a last digit), so that a verdict on it never
        contradicts the printed numbers."""
        if self.low is None:
            return self
        scale = 10 ** digits
        # rounded to 1e-6 of the last digit first: 0.004 * 1e4 is 40.000000000000007, not above 40
        return self._replace(low=math.floor(round(self.low * scale, 6)) / scale,
                             high=math.ceil(round(self.high * scale, 6)) / scale)


def spread(values: Sequence[float]) -> Spread:
    """The mean and sample standard deviation of ``values`` (at least one, all finite: a
    diverged run's missing value is left out by the caller, never averaged in)."""
    if not values:
        raise ValueError("spread needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"spread needs finite values, got {list(values)}")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Spread(mean, std, n)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Difference:
    """``mean(a) - mean(b)`` with Welch's t interval at ``level`` (``scipy.stats.ttest_ind``,
    ``equal_var=False``). Two sides without any spread (every run of each equal, as where
    all collapse to one class) give none: a few equal values do not show there is no noise."""
    diff = spread(a).mean - spread(b).mean
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, None, None, ONE_SEED)
    if len(set(a)) == 1 and len(set(b)) == 1:
        return Difference(diff, None, None, NO_SPREAD)
    from scipy import stats  # here: scipy.stats takes 0.5 s to import, and most runs have one seed

    with warnings.catch_warnings():
        # scipy warns of "precision loss" for a side whose values are all equal (its variance
        # is rounding noise, ~1e-33, where it is 0): the interval is still right, and such a
        # side is common (every seed at 100%, or all stuck at the same accuracy).
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return Difference(diff, float(interval.low), float(interval.high))


def format_spread(s: Spread, digits: int = 4) -> str:
    """``0.8955 ± 0.0021`` (the mean alone for one run)."""
    return f"{s.mean:.{digits}f}" if s.std is None else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"


def format_difference(d: Difference, digits: int = 4) -> str:
    """``+0.0123 [+0.0050, +0.0196], exceeds seed noise`` (or ``within seed noise``), the
    interval rounded outwards and the verdict taken on it (``Difference.rounded``)."""
    if d.low is None:
        return f"{d.diff:+.{digits}f} ({d.why})"
    d = d.rounded(digits)
    verdict = "exceeds seed noise" if d.exceeds_noise else "within seed noise"
    return f"{d.diff:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}], {verdict}"
