"""Small-sample inference for paired seed comparisons: Student-t intervals, the smallest detectable effect (power),
and the verdict wording that follows from an interval (docs/analysis.md, "Claims").

scipy is a test dependency only, so the t distribution is computed here (regularised incomplete beta by Lentz's
continued fraction, quantiles by bisection); tests/analysis/test_calibration.py checks it against scipy.
"""

from __future__ import annotations

import math

import numpy as np

SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "undecided at this power"


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with df degrees of freedom (bisection on t_cdf, to 1e-10)."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise ValueError(f"t_ppf needs 0 < q < 1 and df > 0 (q={q}, df={df})")
    lo, hi = -1e3, 1e3
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
        if hi - lo < 1e-10:
            break
    return 0.5 * (lo + hi)


def t_interval(values, level: float) -> dict:
    """Mean of `values` (one per seed) with its Student-t interval; sd and n; no interval below 2 values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    out = {"n": int(v.size), "mean": float(v.mean()) if v.size else None, "sd": None, "ci": None}
    if v.size >= 2:
        sd = float(v.std(ddof=1))
        half = t_ppf(0.5 + level / 2.0, v.size - 1) * sd / math.sqrt(v.size)
        out |= {"sd": sd, "ci": [out["mean"] - half, out["mean"] + half]}
    return out


def detectable(sd: float, n: int, level: float = 0.95, power: float = 0.8) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at 1 - level detects with `power`, given the
    seed-to-seed sd of the paired difference and n seeds: (t_{1-alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n)
    (the usual normal-approximation formula with t quantiles)."""
    if n < 2 or sd is None:
        return None
    return (t_ppf(0.5 + level / 2.0, n - 1) + t_ppf(power, n - 1)) * sd / math.sqrt(n)


def verdict(ci: list[float] | None, ref: float = 0.0) -> str:
    """The wording an interval supports about an effect claimed to be > ref: never stronger than the interval."""
    if ci is None:
        return "no interval (fewer than 2 seeds)"
    if ci[0] > ref:
        return SUPPORTED
    if ci[1] < ref:
        return CONTRADICTED
    return UNDECIDED


def pct(loss_diff: float | None) -> float | None:
    """A loss difference (nats, reference minus arm) as the % perplexity improvement 100 (1 - exp(-diff))."""
    return None if loss_diff is None else 100.0 * (1.0 - math.exp(-loss_diff))
