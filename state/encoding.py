"""History -> model input: the one encoding used by training, evaluation and serving.

State keeps raw history (event time, activity code per level); a model's manifest
(FeatureSpec) turns it into model input at scoring time, so a new vocabulary or
window needs no state migration. Arrays, not objects: one call encodes a batch.

Model input for a batch of n windows of length L (pre-padded: real events sit next
to the output, which matters for recurrent nets; token 0 = padding, 1 = unknown):

- `tokens`  int32   (n, L)     activity tokens
- `steps`   float32 (n, L, 8)  per event: gap since the previous event in the window,
                               tenure (time since the customer's first event), events so far,
                               the gap again on a scale of seconds, then the event's time of
                               day and day of week (sin, cos each; UTC)
- `context` float32 (n, C)     at scoring time: elapsed time since the last event, and the
                               optional profile (gender, age group one-hot; all zero if unknown)

Durations enter as log1p(days) divided by scaling constants learned from the training
data and stored in the manifest, then clipped to [0, 2]. In process logs the order of
work within a day carries much of the signal (two steps logged in the same second are
one action), which log1p(days) flattens to zero, so the gap enters a second time as
log1p(seconds) over a fixed year, where 0 s, a second, a minute and an hour stay apart.
The clock features are points
on the unit circle, so 23:59 sits next to 00:00 and Sunday next to Monday.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

PAD_TOKEN = 0
OOV_TOKEN = 1
FIRST_TOKEN = 2
N_STEP_FEATURES = 8
SECONDS_SCALE = float(np.log1p(365 * 86_400))  # log1p(seconds) of a year: the short-gap feature's 1.0
SHORT_GAP_FEATURE = 3  # index of that feature in `steps`
# the n-gram's gap buckets (training/ngram.py): the same second, a minute, an hour, a day, longer;
# edges at half seconds, so that no whole-second gap sits on an edge after rounding
GAP_BUCKET_SECONDS = (0.5, 59.5, 3599.5, 86399.5)
DAY = 86_400.0
WEEK_DAYS = 7
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday = 0
GENDERS = ("F", "M", "X")
AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_MAX_SCALED = 2.0

Int64Array = NDArray[np.int64]
CodeArray = NDArray[np.uint32]
FloatArray = NDArray[np.float32]


def activity_code(name: str) -> int:
    """A stable 32-bit code of an activity name, as state stores it (0 is reserved for padding)."""
    return zlib.crc32(name.encode("utf-8")) or 1


def activity_codes(names: NDArray[Any] | list[str]) -> CodeArray:
    """Codes of many names, hashing each distinct name once."""
    values = np.asarray(names, dtype=object)
    if values.size == 0:
        return np.zeros(0, dtype=np.uint32)
    unique, inverse = np.unique(values.astype(str), return_inverse=True)
    return np.array([activity_code(u) for u in unique], dtype=np.uint32)[inverse.reshape(values.shape)]


@dataclass(frozen=True)
class FeatureSpec:
    """What a model expects: stored in its manifest, applied identically everywhere."""

    window: int
    level: str  # "coarse" = activity, "fine" = activity_detail
    vocabulary: tuple[str, ...]  # known activities; token = index + FIRST_TOKEN
    gap_scale: float  # log1p(days) of inter-event gaps / elapsed time
    tenure_scale: float  # log1p(days) since the first event
    count_scale: float  # log1p(number of events so far)
    use_profile: bool = False
    genders: tuple[str, ...] = GENDERS
    age_groups: tuple[str, ...] = AGE_GROUPS
    _lookup: tuple[CodeArray, Int64Array] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        codes = activity_codes(list(self.vocabulary)).astype(np.uint32)
        order = np.argsort(codes, kind="stable")
        if len(np.unique(codes)) != len(codes):
            raise ValueError("two vocabulary names share an activity code")
        object.__setattr__(self, "_lookup", (codes[order], (order + FIRST_TOKEN).astype(np.int64)))

    @property
    def n_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + FIRST_TOKEN

    @property
    def n_context(self) -> int:
        return 1 + (len(self.genders) + len(self.age_groups) if self.use_profile else 0)

    def tokens(self, codes: CodeArray) -> Int64Array:
        """Activity codes -> tokens: 0 stays padding, unknown codes become OOV."""
        sorted_codes, tokens = self._lookup
        if len(sorted_codes) == 0:
            return np.where(codes == 0, PAD_TOKEN, OOV_TOKEN).astype(np.int64)
        pos = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
        found = sorted_codes[pos] == codes
        return np.where(codes == 0, PAD_TOKEN, np.where(found, tokens[pos], OOV_TOKEN))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_lookup", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "_lookup"}
        for key in ("vocabulary", "genders", "age_groups"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@dataclass
class RawWindows:
    """Raw history of n scoring points: each customer's last L events before the score time.

    `ts` and `codes` are pre-padded with zeros; `count` is the number of the customer's
    events up to and including the window's last; `first_ts` the customer's first event
    time ever (tenure survives the window); gender / age_group are indices, -1 unknown.
    """

    ts: Int64Array  # (n, L) epoch seconds
    codes: CodeArray  # (n, L)
    count: Int64Array  # (n,)
    first_ts: Int64Array  # (n,)
    score_ts: Int64Array  # (n,)
    gender: Int64Array  # (n,)
    age_group: Int64Array  # (n,)

    def __len__(self) -> int:
        return int(self.ts.shape[0])


def _scaled_days(seconds: NDArray[Any], scale: float) -> FloatArray:
    days = np.maximum(np.asarray(seconds, dtype=np.float64), 0.0) / DAY
    return np.minimum(np.log1p(days) / scale, _MAX_SCALED).astype(np.float32)


def step_features(
    ts: Int64Array, codes: CodeArray, count: Int64Array, first_ts: Int64Array, spec: FeatureSpec
) -> FloatArray:
    """(n, L, 8): gap since the previous event in the window, tenure, events so far, the gap
    in log seconds, time of day and day of week (each as sin, cos)."""
    real = codes != 0
    gaps = np.zeros(ts.shape, dtype=np.int64)
    gaps[:, 1:] = np.where(real[:, :-1] & real[:, 1:], ts[:, 1:] - ts[:, :-1], 0)
    tenure = np.where(real, ts - first_ts[:, None], 0)
    # events so far at each position: the last real one has `count`, counting back from there
    from_end = np.cumsum(real[:, ::-1], axis=1)[:, ::-1] - 1
    so_far = np.where(real, count[:, None] - from_end, 0)
    out = np.empty((*ts.shape, N_STEP_FEATURES), dtype=np.float32)
    out[..., 0] = _scaled_days(gaps, spec.gap_scale)
    out[..., 1] = _scaled_days(tenure, spec.tenure_scale)
    out[..., 2] = (np.log1p(np.maximum(so_far, 0)) / spec.count_scale).clip(0, _MAX_SCALED)
    out[..., SHORT_GAP_FEATURE] = short_gap_feature(gaps)
    out[..., 4:] = clock_features(ts)
    return np.where(real[..., None], out, 0.0).astype(np.float32)


def short_gap_feature(gap_seconds: NDArray[Any]) -> FloatArray:
    """log1p(seconds) over a year, clipped: the gap on the scale where process steps differ."""
    return np.minimum(np.log1p(np.maximum(gap_seconds, 0)) / SECONDS_SCALE, _MAX_SCALED).astype(np.float32)


GAP_BUCKET_EDGES = short_gap_feature(np.array(GAP_BUCKET_SECONDS))


def gap_bucket(feature: FloatArray) -> Int64Array:
    """0..len(GAP_BUCKET_SECONDS): which bucket a short-gap feature value falls in (the served
    model computes the same from its `steps` input: training/layers.py)."""
    return np.sum(np.asarray(feature, np.float32)[..., None] >= GAP_BUCKET_EDGES, axis=-1).astype(np.int64)


def clock_features(ts: Int64Array) -> FloatArray:
    """(..., 4): time of day and day of week of epoch seconds `ts` (UTC), as sin and cos."""
    days = np.asarray(ts, dtype=np.int64) // int(DAY)
    day_turn = (np.asarray(ts, dtype=np.int64) - days * int(DAY)) / DAY
    week_turn = (((days + EPOCH_WEEKDAY) % WEEK_DAYS) + day_turn) / WEEK_DAYS
    angles = np.stack([day_turn, week_turn], axis=-1) * (2 * np.pi)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def context_features(
    elapsed_seconds: NDArray[Any], gender: Int64Array, age_group: Int64Array, spec: FeatureSpec
) -> FloatArray:
    """(..., C): elapsed time at scoring, then the profile one-hots when the model uses them."""
    elapsed = _scaled_days(elapsed_seconds, spec.gap_scale)[..., None]
    if not spec.use_profile:
        return elapsed
    shape = np.shape(elapsed_seconds)
    g = np.broadcast_to(np.asarray(gender).reshape(gender.shape + (1,) * (len(shape) - gender.ndim)), shape)
    a = np.broadcast_to(np.asarray(age_group).reshape(age_group.shape + (1,) * (len(shape) - age_group.ndim)), shape)
    onehot_g = (g[..., None] == np.arange(len(spec.genders))).astype(np.float32)
    onehot_a = (a[..., None] == np.arange(len(spec.age_groups))).astype(np.float32)
    return np.concatenate([elapsed, onehot_g, onehot_a], axis=-1)


def encode(raw: RawWindows, spec: FeatureSpec) -> dict[str, NDArray[Any]]:
    """Model input for scoring each window at its score time (serving and evaluation)."""
    if raw.ts.shape[1] != spec.window:
        raise ValueError(f"windows hold {raw.ts.shape[1]} events, the model expects {spec.window}")
    last_ts = raw.ts[:, -1]
    return {
        "tokens": spec.tokens(raw.codes).astype(np.int32),
        "steps": step_features(raw.ts, raw.codes, raw.count, raw.first_ts, spec),
        "context": context_features(raw.score_ts - last_ts, raw.gender, raw.age_group, spec),
    }


def window_index(ends: Int64Array, starts: Int64Array, window: int) -> tuple[Int64Array, NDArray[np.bool_]]:
    """Gather indices (n, L) of the last `window` events up to `ends` (inclusive), not before
    `starts`, pre-padded; and the mask of real positions."""
    idx = ends[:, None] - (window - 1) + np.arange(window)[None, :]
    real = idx >= starts[:, None]
    return np.where(real, idx, 0), real


def gather_windows(
    ts: Int64Array,
    codes: CodeArray,
    customer_start: Int64Array,
    ends: Int64Array,
    score_ts: Int64Array,
    window: int,
    gender: Int64Array | None = None,
    age_group: Int64Array | None = None,
) -> RawWindows:
    """RawWindows for events sorted by (customer, time): window i ends at event `ends[i]`.

    `customer_start[k]` is the index of the first event of event k's customer; gender
    and age_group are per event (the customer's), or unknown when None.
    """
    starts = customer_start[ends]
    idx, real = window_index(ends, starts, window)
    n = len(ends)
    return RawWindows(
        ts=np.where(real, ts[idx], 0).astype(np.int64),
        codes=np.where(real, codes[idx], 0).astype(np.uint32),
        count=(ends - starts + 1).astype(np.int64),
        first_ts=ts[starts].astype(np.int64),
        score_ts=np.asarray(score_ts, dtype=np.int64),
        gender=np.full(n, -1, np.int64) if gender is None else gender[ends].astype(np.int64),
        age_group=np.full(n, -1, np.int64) if age_group is None else age_group[ends].astype(np.int64),
    )
