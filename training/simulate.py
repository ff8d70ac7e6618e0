"""Synthetic customers and their activities, realistic enough to tell models apart.

The generator steps all customers at once (one numpy pass per event index), so a
million events take seconds. What it builds in (training/customer_behaviour.py), so that a
sequence model has something to find that a first-order Markov chain cannot:

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

from training.customer_behaviour import Customers, event_details

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
    people = Customers.draw(customers, t_start, t_end, activity_scale, rng)
    fine_cum = [np.cumsum(rng.dirichlet(np.full(k, 2.0), size=4), axis=1) for k in FINE_COUNTS]
    chunks: list[tuple[NDArray[np.int64], ...]] = []
    amounts: list[NDArray[np.float64]] = []
    step = 0
    while people.alive.any():
        idx, ts, act, fine, oracle = people.step(fine_cum, t_end, step == 0, rng)
        channel, amount = event_details(act, rng)
        visible = ts >= t_start
        chunks.append((idx[visible], ts[visible], act[visible], fine[visible], channel[visible], oracle[visible]))
        amounts.append(amount[visible].round(2))
        step += 1
    return _history(people, chunks, amounts, _customer_ids(customers, rng), (t_start, t_end), seed)


def _history(
    people: Customers,
    chunks: list[tuple[NDArray[np.int64], ...]],
    amounts: list[NDArray[np.float64]],
    customer_ids: NDArray[np.str_],
    span: tuple[int, int],
    seed: int,
) -> SimulatedHistory:
    """The visible events of every step, sorted by time (then customer)."""
    event_customer = np.concatenate([c[0] for c in chunks])
    event_ts = np.concatenate([c[1] for c in chunks])
    order = np.lexsort((event_customer, event_ts))
    return SimulatedHistory(
        customer_ids=customer_ids,
        signup=people.signup,
        gender=people.gender,
        age_group=people.age_group,
        segment=people.segment,
        churned=people.churned,
        event_customer=event_customer[order],
        event_ts=event_ts[order],
        coarse=np.concatenate([c[2] for c in chunks])[order],
        fine=np.concatenate([c[3] for c in chunks])[order],
        channel=np.concatenate([c[4] for c in chunks])[order],
        amount=np.concatenate(amounts)[order],
        oracle_next=np.concatenate([c[5] for c in chunks])[order],
        start=span[0],
        end=span[1],
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
