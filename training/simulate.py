"""Synthetic customers and their activities, realistic enough to tell models apart.

The generator steps all customers at once (one numpy pass per event index), so a
million events take seconds. What it builds in, so that a sequence model has
something to find that a first-order Markov chain cannot:

- 8 coarse activities with 22 fine types (see ACTIVITIES), a latent segment per
  customer and a profile (signup, gender, age group) that shifts behaviour;
- the next activity depends on the last two activities, on the gap before the last
  one, and on two long-memory traits of the whole history: dissatisfaction (support
  contacts, complaints, long gaps) and loyalty (renewals, payments, upgrades);
- heavy-tailed gaps (lognormal x gamma customer rate), weekly seasonality (fewer
  events at weekends) and a daily rhythm;
- skewed counts: many one-event customers, most with <= 25 events, a tail over 100;
- churn: a per-event hazard rising with dissatisfaction, repeated support contacts
  and cancel requests, with gaps that lengthen before it; a churner falls silent, so
  churn labels follow from the data by the inactivity rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

COARSE = ("A", "B", "C", "D", "E", "F", "G", "H")
FINE_COUNTS = (3, 3, 4, 3, 2, 3, 2, 2)  # 22 fine types, e.g. A1..A3
ACTIVITIES = {
    "A": "extend or renew the service",
    "B": "report a problem (support contact)",
    "C": "open a marketing email",
    "D": "visit the website or app",
    "E": "complaint or escalation",
    "F": "pay a bill",
    "G": "downgrade or cancel request",
    "H": "buy an add-on or upgrade",
}
SEGMENTS = ("loyal", "casual", "deal_seeker", "fragile")
GENDERS = ("F", "M", "X")
AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
CHANNELS = ("web", "app", "email", "store", "call")
DAY = 86_400.0

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


@dataclass
class SimulatedHistory:
    """Events sorted by time (then customer), plus customer profiles and generator truth."""

    customer_ids: NDArray[np.str_]  # per customer
    signup: NDArray[np.int64]  # per customer, epoch seconds
    gender: NDArray[np.int64]
    age_group: NDArray[np.int64]
    segment: NDArray[np.int64]
    churned: NDArray[np.bool_]  # the generator's own churn decision
    event_customer: NDArray[np.int64]  # per event: customer index
    event_ts: NDArray[np.int64]  # epoch seconds
    coarse: NDArray[np.int64]
    fine: NDArray[np.int64]  # index within the coarse type (0-based)
    channel: NDArray[np.int64]
    amount: NDArray[np.float64]
    oracle_next: NDArray[np.int64]  # the generator's most likely next coarse activity, -1 if none
    start: int
    end: int
    seed: int

    @property
    def n_events(self) -> int:
        return len(self.event_ts)

    def activity_names(self) -> NDArray[np.str_]:
        return np.array(COARSE)[self.coarse]

    def detail_names(self) -> NDArray[np.str_]:
        return np.char.add(self.activity_names(), (self.fine + 1).astype(str))

    def event_ids(self) -> list[str]:
        return [f"s{self.seed}-{i:08d}" for i in range(self.n_events)]

    def iso_ts(self) -> NDArray[np.str_]:
        stamps = np.datetime_as_string(self.event_ts.astype("datetime64[s]"), unit="s")
        return np.char.add(stamps, "Z")


def _epoch(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def _customer_ids(n: int, rng: np.random.Generator) -> NDArray[np.str_]:
    digits = max(6, len(f"{n * 4:X}"))
    codes = rng.choice(16**digits, size=n, replace=False) if 16**digits < 2**62 else rng.permutation(n)
    return np.array([f"{c:0{digits}X}" for c in codes])


def _sample(logits: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.int64]:
    """Row-wise categorical draws by the Gumbel-max trick."""
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


def simulate(
    customers: int,
    seed: int = 0,
    start: str = "2021-01-01",
    end: str = "2022-06-01",
    activity_scale: float = 1.0,
) -> SimulatedHistory:
    """Generate the history of `customers` customers between `start` and `end` (UTC dates).

    `activity_scale` multiplies every customer's event rate (2.0 = twice as many events).
    """
    if customers < 1:
        raise ValueError("customers must be >= 1")
    rng = np.random.default_rng(seed)
    t_start, t_end = _epoch(start), _epoch(end)
    span = t_end - t_start
    n = customers

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

    t = signup.astype(np.float64)
    last = np.full(n, 8)  # 8 = no activity yet
    prev = np.full(n, 8)
    last_fine = np.zeros(n, dtype=np.int64)
    last_gap_days = np.zeros(n)
    dissatisfaction = np.zeros(n)
    loyalty = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    churned = np.zeros(n, dtype=bool)
    nxt = _sample(_SEGMENT_LOGITS[segment] + profile_logits, rng)

    fine_cum = [np.cumsum(rng.dirichlet(np.full(k, 2.0), size=4), axis=1) for k in FINE_COUNTS]
    hour_p = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()

    chunks: list[tuple[NDArray[np.int64], ...]] = []
    amounts: list[NDArray[np.float64]] = []
    step = 0
    while alive.any():
        idx = np.flatnonzero(alive)
        act = nxt[idx]
        # fine type: repeat the last fine type of the same coarse type half the time
        fine = np.zeros(len(idx), dtype=np.int64)
        u = rng.random(len(idx))
        for coarse_type, k in enumerate(FINE_COUNTS):
            rows = np.flatnonzero(act == coarse_type)
            if len(rows):
                cum = fine_cum[coarse_type][segment[idx[rows]]]
                fine[rows] = (u[rows, None] > cum).sum(axis=1).clip(0, k - 1)
        repeat = (last[idx] == act) & (rng.random(len(idx)) < 0.5)
        fine = np.where(repeat, last_fine[idx], fine)

        ts = t[idx].astype(np.int64)
        gap_before = last_gap_days[idx]  # observable at scoring time, unlike the gap to come
        prev[idx], last[idx], last_fine[idx] = last[idx], act, fine
        dissatisfaction[idx] = np.maximum(
            0.0, 0.85 * dissatisfaction[idx] + _DISSATISFACTION_STEP[act] + 0.35 * np.log1p(gap_before / 30.0)
        )
        loyalty[idx] = 0.92 * loyalty[idx] + _LOYALTY_STEP[act]

        # churn: a hazard per event, then silence
        seg = segment[idx]
        hazard_logit = (
            -4.6
            + 0.75 * dissatisfaction[idx]
            + _SEGMENT_CHURN_BIAS[seg]
            + 1.3 * (act == G)
            + 0.6 * ((prev[idx] == B) & (act == B))
            - 0.08 * loyalty[idx]
        )
        leave = rng.random(len(idx)) < 1.0 / (1.0 + np.exp(-hazard_logit))
        if step == 0:
            leave |= rng.random(len(idx)) < _SEGMENT_ONE_AND_DONE[seg]
        churned[idx[leave]] = True

        # the gap to the next event: heavy-tailed, longer as dissatisfaction grows
        mean_gap = _SEGMENT_GAP_DAYS[seg] * _GAP_AFTER[act] / rate[idx] * np.exp(0.25 * dissatisfaction[idx])
        gap_days = rng.lognormal(np.log(mean_gap) - 0.6, 1.1)
        t_next = t[idx] + gap_days * DAY
        day = np.floor(t_next / DAY)
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        weekend = (weekday >= 5) & (rng.random(len(idx)) < 0.6)
        day = np.where(weekend, day + (7 - weekday), day)
        hour = rng.choice(24, size=len(idx), p=hour_p)
        t_next = np.maximum(day * DAY + hour * 3600 + rng.integers(0, 3600, size=len(idx)), t[idx] + 60)
        last_gap_days[idx] = (t_next - t[idx]) / DAY
        t[idx] = t_next

        stop = leave | (t_next >= t_end)
        alive[idx[stop]] = False
        going = idx[~stop]
        logits = _SHARPNESS * (
            _SEGMENT_LOGITS[segment[going]]
            + profile_logits[going]
            + _AFTER_LAST[last[going]]
            + _PAIR_LOGITS[prev[going], last[going]]
            + 1.0 * np.minimum(dissatisfaction[going, None], 4.0) * _DISSATISFACTION_LOGITS
            + 3.0 * np.tanh(loyalty[going, None] / 3.0) * _LOYALTY_LOGITS
            + 2.0 * np.clip(np.log1p(gap_before[~stop]) / 3.0, 0, 1.5)[:, None] * _LONG_GAP_LOGITS
        )
        nxt[going] = _sample(logits, rng)
        oracle = np.full(len(idx), -1)
        oracle[~stop] = np.argmax(logits, axis=1)

        visible = ts >= t_start
        channel = np.where(act == C, 2, rng.choice(5, size=len(idx), p=[0.35, 0.35, 0.0, 0.15, 0.15]))
        amount = np.where(_AMOUNT_MEAN[act] > 0, rng.lognormal(np.log(_AMOUNT_MEAN[act] + 1), 0.4), 0.0)
        chunks.append((idx[visible], ts[visible], act[visible], fine[visible], channel[visible], oracle[visible]))
        amounts.append(amount[visible].round(2))
        step += 1

    event_customer = np.concatenate([c[0] for c in chunks])
    event_ts = np.concatenate([c[1] for c in chunks])
    coarse = np.concatenate([c[2] for c in chunks])
    fine_all = np.concatenate([c[3] for c in chunks])
    channel_all = np.concatenate([c[4] for c in chunks])
    amount_all = np.concatenate(amounts)
    oracle_next = np.concatenate([c[5] for c in chunks])
    order = np.lexsort((event_customer, event_ts))
    return SimulatedHistory(
        customer_ids=_customer_ids(n, rng),
        signup=signup,
        gender=gender,
        age_group=age_group,
        segment=segment,
        churned=churned,
        event_customer=event_customer[order],
        event_ts=event_ts[order],
        coarse=coarse[order],
        fine=fine_all[order],
        channel=channel_all[order],
        amount=amount_all[order],
        oracle_next=oracle_next[order],
        start=t_start,
        end=t_end,
        seed=seed,
    )


def per_customer_order(history: SimulatedHistory) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """The events' order by (customer, time) and where each customer's history starts in it."""
    order = np.lexsort((history.event_ts, history.event_customer))
    customer = history.event_customer[order]
    seq_start = np.ones(len(order), dtype=bool)
    seq_start[1:] = customer[1:] != customer[:-1]
    return order, seq_start


def summarize(history: SimulatedHistory, churn_horizon_days: int = 120) -> dict[str, object]:
    """What was generated, and how much a model that sees more than the last activity can gain."""
    from training.baselines import NgramBackoff, accuracy, markov, most_frequent, next_targets

    counts = np.bincount(history.event_customer, minlength=len(history.customer_ids))
    active = counts[counts > 0]
    order, seq_start = per_customer_order(history)
    tokens = history.coarse[order]
    target = next_targets(tokens, seq_start)
    # fit on 70% of customers, score on the rest: the margin a sequence model can aim for
    held_out = (history.event_customer[order] % 10) >= 7
    test = held_out & (target >= 0)
    oracle = history.oracle_next[order]
    models = {"most_frequent": most_frequent(8), "markov": markov(8), "ngram4": NgramBackoff(8, max_order=4)}
    next_action = {}
    for name, model in models.items():
        proba = model.fit(tokens, seq_start, ~held_out).predict_proba(tokens, seq_start)
        next_action[name] = round(accuracy(proba[test], target[test]), 4)
    next_action["generator_oracle"] = round(float((oracle[test] == target[test]).mean()), 4)

    cutoff = history.end - churn_horizon_days * DAY
    first = np.full(len(counts), np.iinfo(np.int64).max)
    last = np.zeros(len(counts), dtype=np.int64)
    np.minimum.at(first, history.event_customer, history.event_ts)
    np.maximum.at(last, history.event_customer, history.event_ts)
    eligible = (counts > 0) & (first < cutoff)
    churn_rate = float((last[eligible] < cutoff).mean()) if eligible.any() else float("nan")
    return {
        "customers": len(history.customer_ids),
        "customers_with_events": len(active),
        "events": int(history.n_events),
        "range": [_iso(history.start), _iso(history.end)],
        "events_per_customer": {f"p{p}": float(np.percentile(active, p)) for p in (50, 90, 99)}
        | {
            "max": int(active.max()) if len(active) else 0,
            "share_single": round(float((active == 1).mean()), 4),
            "share_le_25": round(float((active <= 25).mean()), 4),
            "over_100": int((active > 100).sum()),
        },
        "activity_share": {
            name: round(float(share), 4)
            for name, share in zip(
                COARSE, np.bincount(history.coarse, minlength=8) / max(history.n_events, 1), strict=True
            )
        },
        "churn_rate_inactivity_rule": round(churn_rate, 4),
        "churn_horizon_days": churn_horizon_days,
        "next_action_accuracy_held_out": next_action,
    }


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
