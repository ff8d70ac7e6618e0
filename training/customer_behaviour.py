"""How the simulator's customers (training/simulate.py) act: who they are, drawn once, and
how each event moves them: its fine type, the traits it changes, the churn hazard, the gap
to the next event and which activity that will be."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from state.encoding import DAY

A, B, C, D, E, F, G, H = range(8)

# How each segment acts and how often (mean gap in days at rate 1).
_SEGMENT_SHARE = np.array([0.30, 0.38, 0.17, 0.15])
_SEGMENT_GAP_DAYS = np.array([11.0, 33.0, 20.0, 15.0])
_SEGMENT_CHURN_BIAS = np.array([-1.2, 0.0, 0.2, 0.8])
_SEGMENT_ONE_AND_DONE = np.array([0.04, 0.36, 0.30, 0.22])
_SEGMENT_LOGITS = np.array(
    [  # A     B     C     D     E     F     G     H
        [0.9, -0.2, 0.2, 0.6, -1.2, 0.8, -1.6, 0.4],  # loyal
        [0.0, 0.3, 0.8, 0.5, -0.8, 0.1, -0.8, -0.6],  # casual
        [0.3, -0.3, 1.0, 0.9, -1.0, -0.2, -0.4, 0.5],  # deal seeker
        [-0.2, 0.9, 0.0, 0.2, 0.3, 0.2, 0.1, -0.9],  # fragile
    ]
)
# First-order tendencies: row = last activity.
_AFTER_LAST = np.array(
    [  # A     B     C     D     E     F     G     H
        [-0.6, -0.2, 0.2, 0.5, -0.5, 1.2, -0.8, 0.3],  # after A: pay next
        [0.0, 0.9, -0.4, 0.1, 0.8, -0.2, 0.3, -0.6],  # after B: more support
        [0.2, -0.3, 0.4, 1.0, -0.6, -0.1, -0.4, 0.1],  # after C: visit
        [0.7, 0.0, -0.2, 0.2, -0.4, 0.1, -0.3, 0.5],  # after D: buy
        [-0.3, 0.9, -0.5, -0.1, 0.2, -0.2, 1.1, -0.8],  # after E: support or cancel
        [0.1, -0.2, 0.5, 0.3, -0.6, -0.8, -0.5, 0.2],  # after F
        [0.2, 0.6, -0.2, 0.0, 0.6, 0.0, -0.5, -0.8],  # after G
        [-0.2, 0.5, 0.3, 0.4, -0.4, 0.6, -0.6, -0.9],  # after H
    ]
)
# Second-order patterns (prev, last) -> boosts: what a Markov chain cannot see.
_PAIR_BOOSTS = {
    (B, B): {E: 2.2, G: 1.0},
    (C, D): {H: 2.0, A: 0.6},
    (D, D): {A: 2.2},
    (E, B): {G: 2.4},
    (A, F): {C: 1.6},
    (F, C): {D: 1.4, H: 0.8},
    (H, B): {E: 1.8},
    (D, C): {C: 1.6},
    (G, B): {A: 1.5},
    (C, C): {F: -1.0, D: 1.2},
}
_PAIR_LOGITS = np.zeros((9, 8, 8))  # prev index 8 = none
for (_prev, _last), _boosts in _PAIR_BOOSTS.items():
    for _act, _boost in _boosts.items():
        _PAIR_LOGITS[_prev, _last, _act] = _boost
# Long memory: dissatisfaction and loyalty accumulate over the whole history.
_DISSATISFACTION_LOGITS = np.array([-0.7, 0.6, -0.3, -0.2, 0.7, -0.2, 0.9, -0.8])
_LOYALTY_LOGITS = np.array([0.35, -0.2, -0.1, 0.0, -0.25, 0.3, -0.4, 0.5])
_DISSATISFACTION_STEP = np.array([-0.45, 0.8, 0.0, -0.1, 1.4, -0.2, 1.1, -0.6])
_LOYALTY_STEP = np.array([1.0, 0.0, 0.0, 0.1, -0.5, 0.6, -1.0, 1.2])
# A long gap before the last event changes what comes next (re-engagement via email/visit).
_LONG_GAP_LOGITS = np.array([-0.3, -0.2, 0.9, 0.7, -0.2, -0.4, 0.3, -0.3])
# Gaps: support is followed up fast, payments come monthly.
_GAP_AFTER = np.array([1.1, 0.35, 0.8, 0.7, 0.5, 1.4, 0.6, 1.0])
_SHARPNESS = 1.25
_HOUR_WEIGHTS = np.array([1, 1, 1, 1, 1, 2, 4, 7, 9, 11, 11, 10, 9, 9, 9, 9, 9, 10, 12, 13, 12, 9, 5, 2], dtype=float)
_AMOUNT_MEAN = np.array([40.0, 0.0, 0.0, 0.0, 0.0, 55.0, 0.0, 25.0])
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()


@dataclass
class Customers:
    """Every simulated customer: the profile drawn once, and the state the generator steps."""

    segment: NDArray[np.int64]
    age_group: NDArray[np.int64]
    gender: NDArray[np.int64]
    signup: NDArray[np.int64]
    rate: NDArray[np.float64]  # multiplies the segment's event rate
    profile_logits: NDArray[np.float64]  # how the profile shifts each activity
    t: NDArray[np.float64]  # the time of the coming event
    nxt: NDArray[np.int64]  # its activity
    last: NDArray[np.int64]  # 8 = no activity yet
    prev: NDArray[np.int64]
    last_fine: NDArray[np.int64]
    last_gap_days: NDArray[np.float64]
    dissatisfaction: NDArray[np.float64]
    loyalty: NDArray[np.float64]
    alive: NDArray[np.bool_]
    churned: NDArray[np.bool_]  # the generator's own churn decision

    @classmethod
    def draw(cls, n: int, t_start: int, t_end: int, activity_scale: float, rng: np.random.Generator) -> Customers:
        span = t_end - t_start
        segment = rng.choice(4, size=n, p=_SEGMENT_SHARE)
        age_group = np.clip(rng.normal(2.2 + 0.5 * (segment == 0), 1.4, size=n).round(), 0, 5).astype(np.int64)
        gender = rng.choice(3, size=n, p=[0.48, 0.48, 0.04])
        # signups start up to a year before the window; later signups are rarer
        signup = (t_start - 365 * DAY + rng.beta(1.3, 1.0, size=n) * (span + 365 * DAY)).astype(np.int64)
        # floored: a customer away for years would be a churner in any label
        rate = np.maximum(rng.gamma(0.9, 1.0 / 0.9, size=n), 0.3) * activity_scale
        older = age_group >= 4
        profile_logits = np.zeros((n, 8))
        profile_logits[:, C] += 0.5 * older
        profile_logits[:, D] += 0.4 * (age_group <= 1)
        profile_logits[:, H] += 0.2 * (gender == 1)
        return cls(
            segment,
            age_group,
            gender,
            signup,
            rate,
            profile_logits,
            t=signup.astype(np.float64),
            nxt=sample(_SEGMENT_LOGITS[segment] + profile_logits, rng),
            last=np.full(n, 8),
            prev=np.full(n, 8),
            last_fine=np.zeros(n, dtype=np.int64),
            last_gap_days=np.zeros(n),
            dissatisfaction=np.zeros(n),
            loyalty=np.zeros(n),
            alive=np.ones(n, dtype=bool),
            churned=np.zeros(n, dtype=bool),
        )

    def step(
        self, fine_cum: list[NDArray[np.float64]], t_end: int, first: bool, rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], ...]:
        """The coming event of every active customer: (customer, ts, activity, fine type, the
        generator's most likely next activity or -1 where the customer stops). `fine_cum`:
        per coarse type, each segment's cumulative fine-type shares."""
        idx = np.flatnonzero(self.alive)
        act = self.nxt[idx]
        fine = self._fine_types(idx, act, fine_cum, rng)
        ts = self.t[idx].astype(np.int64)
        gap_before = self.last_gap_days[idx]  # observable at scoring time, unlike the gap to come
        self._remember(idx, act, fine, gap_before)
        leave = self._leaves(idx, act, first, rng)
        self.churned[idx[leave]] = True
        t_next = self._next_times(idx, act, rng)
        self.last_gap_days[idx] = (t_next - self.t[idx]) / DAY
        self.t[idx] = t_next

        stop = leave | (t_next >= t_end)
        self.alive[idx[stop]] = False
        going = idx[~stop]
        logits = self._next_logits(going, gap_before[~stop])
        self.nxt[going] = sample(logits, rng)
        oracle = np.full(len(idx), -1)
        oracle[~stop] = np.argmax(logits, axis=1)
        return idx, ts, act, fine, oracle

    def _fine_types(
        self,
        idx: NDArray[np.int64],
        act: NDArray[np.int64],
        fine_cum: list[NDArray[np.float64]],
        rng: np.random.Generator,
    ) -> NDArray[np.int64]:
        """By segment, or the last fine type of the same coarse type half the time."""
        fine = np.zeros(len(idx), dtype=np.int64)
        u = rng.random(len(idx))
        for coarse_type, cum_by_segment in enumerate(fine_cum):
            rows = np.flatnonzero(act == coarse_type)
            if len(rows):
                cum = cum_by_segment[self.segment[idx[rows]]]
                fine[rows] = (u[rows, None] > cum).sum(axis=1).clip(0, cum_by_segment.shape[1] - 1)
        repeat = (self.last[idx] == act) & (rng.random(len(idx)) < 0.5)
        return np.where(repeat, self.last_fine[idx], fine)

    def _remember(
        self, idx: NDArray[np.int64], act: NDArray[np.int64], fine: NDArray[np.int64], gap_before: NDArray[np.float64]
    ) -> None:
        self.prev[idx], self.last[idx], self.last_fine[idx] = self.last[idx], act, fine
        self.dissatisfaction[idx] = np.maximum(
            0.0, 0.85 * self.dissatisfaction[idx] + _DISSATISFACTION_STEP[act] + 0.35 * np.log1p(gap_before / 30.0)
        )
        self.loyalty[idx] = 0.92 * self.loyalty[idx] + _LOYALTY_STEP[act]

    def _leaves(
        self, idx: NDArray[np.int64], act: NDArray[np.int64], first: bool, rng: np.random.Generator
    ) -> NDArray[np.bool_]:
        """Who churns: a hazard per event, then silence."""
        seg = self.segment[idx]
        hazard_logit = (
            -4.6
            + 0.75 * self.dissatisfaction[idx]
            + _SEGMENT_CHURN_BIAS[seg]
            + 1.3 * (act == G)
            + 0.6 * ((self.prev[idx] == B) & (act == B))
            - 0.08 * self.loyalty[idx]
        )
        leave = rng.random(len(idx)) < 1.0 / (1.0 + np.exp(-hazard_logit))
        if first:
            leave |= rng.random(len(idx)) < _SEGMENT_ONE_AND_DONE[seg]
        return leave

    def _next_times(
        self, idx: NDArray[np.int64], act: NDArray[np.int64], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """The gap to the next event: heavy-tailed, longer as dissatisfaction grows."""
        seg = self.segment[idx]
        mean_gap = _SEGMENT_GAP_DAYS[seg] * _GAP_AFTER[act] / self.rate[idx] * np.exp(0.25 * self.dissatisfaction[idx])
        gap_days = rng.lognormal(np.log(mean_gap) - 0.6, 1.1)
        t_next = self.t[idx] + gap_days * DAY
        day = np.floor(t_next / DAY)
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        weekend = (weekday >= 5) & (rng.random(len(idx)) < 0.6)
        day = np.where(weekend, day + (7 - weekday), day)
        hour = rng.choice(24, size=len(idx), p=_HOUR_P)
        return np.maximum(day * DAY + hour * 3600 + rng.integers(0, 3600, size=len(idx)), self.t[idx] + 60)

    def _next_logits(self, going: NDArray[np.int64], gap_before: NDArray[np.float64]) -> NDArray[np.float64]:
        return _SHARPNESS * (
            _SEGMENT_LOGITS[self.segment[going]]
            + self.profile_logits[going]
            + _AFTER_LAST[self.last[going]]
            + _PAIR_LOGITS[self.prev[going], self.last[going]]
            + 1.0 * np.minimum(self.dissatisfaction[going, None], 4.0) * _DISSATISFACTION_LOGITS
            + 3.0 * np.tanh(self.loyalty[going, None] / 3.0) * _LOYALTY_LOGITS
            + 2.0 * np.clip(np.log1p(gap_before) / 3.0, 0, 1.5)[:, None] * _LONG_GAP_LOGITS
        )


def event_details(act: NDArray[np.int64], rng: np.random.Generator) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """(channel, amount) of events with the activities `act`."""
    channel = np.where(act == C, 2, rng.choice(5, size=len(act), p=[0.35, 0.35, 0.0, 0.15, 0.15]))
    amount = np.where(_AMOUNT_MEAN[act] > 0, rng.lognormal(np.log(_AMOUNT_MEAN[act] + 1), 0.4), 0.0)
    return channel, amount


def sample(logits: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.int64]:
    """Row-wise categorical draws by the Gumbel-max trick."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
