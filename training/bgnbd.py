"""BG/NBD (Fader, Hardie & Lee 2005): the classic count model of "buy till you die".

Each customer has a Poisson event rate (gamma across customers, r and alpha) and after
each event drops out with probability p (beta across customers, a and b). Fit by maximum
likelihood on (x repeat events, t_x time of the last event, T observation length), all
measured from the customer's first event, in weeks. The churn baseline scores a customer
by minus the expected number of events in the coming horizon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

WEEK = 7 * 86_400.0
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class BGNBD:
    r: float
    alpha: float
    a: float
    b: float

    def expected_events(self, x: FloatArray, t_x: FloatArray, big_t: FloatArray, horizon: float) -> FloatArray:
        """E[events in (T, T + horizon] | x, t_x, T] (all times in weeks)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        t = horizon
        z = t / (alpha + big_t + t)
        hyp = hyp2f1(r + x, b + x, a + b + x - 1, z)
        numerator = (a + b + x - 1) / (a - 1) * (1 - ((alpha + big_t) / (alpha + big_t + t)) ** (r + x) * hyp)
        repeat = x > 0
        ratio = np.where(repeat, a / np.maximum(b + x - 1, 1e-9), 0.0)
        denominator = 1 + repeat * ratio * ((alpha + big_t) / (alpha + t_x)) ** (r + x)
        out = numerator / denominator
        return np.where(np.isfinite(out), out, 0.0)


def _neg_log_likelihood(log_params: FloatArray, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> float:
    r, alpha, a, b = np.exp(log_params)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + big_t)
    a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    likelihood = a1 + a2 + np.logaddexp(a3, a4)
    return float(-likelihood.sum())


def fit(x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> BGNBD:
    """Maximum likelihood on one row per customer (times in weeks)."""
    result = minimize(
        _neg_log_likelihood,
        x0=np.log([0.5, 5.0, 1.0, 2.0]),
        args=(x, t_x, big_t),
        method="Nelder-Mead",
        options={"maxiter": 4000, "xatol": 1e-4, "fatol": 1e-4},
    )
    r, alpha, a, b = np.exp(result.x)
    return BGNBD(float(r), float(alpha), float(max(a, 1.0001)), float(b))


def summary_at(
    ts: NDArray[np.int64], first_ts: NDArray[np.int64], count: NDArray[np.int64], score_ts: NDArray[np.int64]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(x, t_x, T) in weeks for customers scored at `score_ts` whose last event is at `ts`."""
    x = np.maximum(count - 1, 0).astype(np.float64)
    t_x = (ts - first_ts) / WEEK
    big_t = np.maximum((score_ts - first_ts) / WEEK, t_x + 1e-6)
    return x, t_x, big_t
