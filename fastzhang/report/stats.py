"""The report's statistics over seeds: mean, sample standard deviation, 95% t- and Welch intervals.

Standard library only (scipy is no dependency). Student's t quantile is found by bisection on
the t tail, P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2), the regularized incomplete
beta function evaluated by its continued fraction (modified Lentz, Numerical Recipes §6.4):
exact to ~1e-12 for any real df > 0, as Welch's fractional degrees of freedom need.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable

LEVEL = 0.95  # two-sided


@dataclass(frozen=True)
class Summary:
    """The finite values of one quantity over a configuration's runs (a diverged run's null left out):
    n, mean, sample standard deviation (n − 1 in the denominator; NaN below two), min and max."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float

    def interval(self) -> tuple[float, float] | None:
        """The 95% t-interval of the mean, mean ± t(n − 1) s / sqrt(n); None below two values."""
        if self.n < 2:
            return None
        half = t_quantile(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def summarize(values: Iterable[Any]) -> Summary:
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    mean = math.fsum(v) / len(v) if v else math.nan
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return Summary(len(v), mean, std, min(v, default=math.nan), max(v, default=math.nan))


def welch(a: Summary, b: Summary) -> tuple[float, float, float] | None:
    """(mean(a) − mean(b), and its 95% Welch interval's ends); None unless both have two values or more."""
    if a.n < 2 or b.n < 2:
        return None
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    d = a.mean - b.mean
    if va + vb == 0:  # no spread on either side: the difference is all there is
        return d, d, d
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))  # Welch-Satterthwaite
    half = t_quantile(df) * math.sqrt(va + vb)
    return d, d - half, d + half


@functools.lru_cache(maxsize=None)
def t_quantile(df: float, level: float = LEVEL) -> float:
    """t with P(|T| <= t) = level for Student's t with `df` > 0 degrees of freedom (math.inf: the normal)."""
    def above(t: float) -> bool:  # P(T > t) > (1 - level) / 2, for t >= 0
        p = math.erfc(t / math.sqrt(2)) if math.isinf(df) else _beta_regularized(df / 2, 0.5, df / (df + t * t))
        return p / 2 > (1 - level) / 2

    lo, hi = 0.0, 1.0
    while above(hi):
        lo, hi = hi, 2 * hi
    for _ in range(60):  # halves the bracket to below 1e-15 of its width
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if above(mid) else (lo, mid)
    return (lo + hi) / 2


def _beta_regularized(a: float, b: float, x: float) -> float:
    """I_x(a, b); its continued fraction converges fast for x < (a + 1) / (a + b + 2), else 1 − I_{1−x}(b, a)."""
    if x <= 0 or x >= 1:
        return max(0.0, min(1.0, x))
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):  # about sqrt(max(a, b)) terms
        for coefficient in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + coefficient * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + coefficient / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta fraction did not converge (a={a}, b={b}, x={x})")
