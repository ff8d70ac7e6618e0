from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from state.encoding import (
    DAY,
    OOV_TOKEN,
    PAD_TOKEN,
    FeatureSpec,
    activity_code,
    activity_codes,
    encode,
    gather_windows,
    step_features,
)
from training.history import History, history_from_table

SPEC = FeatureSpec(
    window=4,
    level="coarse",
    vocabulary=("A", "B", "C"),
    gap_scale=np.log1p(30.0),
    tenure_scale=np.log1p(365.0),
    count_scale=np.log1p(100.0),
)


def small_history() -> History:
    day = 86_400
    table = pa.table(
        {
            "customer_id": ["x", "x", "y", "x", "y", "x", "x"],
            "ts": pa.array(np.array([0, 1, 0, 3, 2, 10, 12]) * day + 1_600_000_000).cast(pa.timestamp("s", tz="UTC")),
            "activity": ["A", "B", "C", "Z", "A", "C", "A"],
        }
    )
    return history_from_table(table, "test")


def test_activity_codes_are_stable_and_never_padding() -> None:
    assert activity_code("A") == activity_code("A") != activity_code("B")
    assert activity_code("A") != 0
    assert activity_codes(["A", "B", "A"]).tolist() == [activity_code("A"), activity_code("B"), activity_code("A")]


def test_tokens_keep_padding_and_map_unknown_to_oov() -> None:
    codes = np.array([0, activity_code("A"), activity_code("C"), activity_code("nope")], dtype=np.uint32)
    assert SPEC.tokens(codes).tolist() == [PAD_TOKEN, 2, 4, OOV_TOKEN]


def test_spec_round_trips_through_the_manifest() -> None:
    again = FeatureSpec.from_dict(SPEC.to_dict())
    assert again == SPEC
    assert again.tokens(activity_codes(["B"])).tolist() == [3]


def test_windows_are_pre_padded_and_stay_within_the_customer() -> None:
    h = small_history()
    ends = np.arange(len(h))
    raw = gather_windows(h.ts, h.codes("coarse"), h.customer_start, ends, h.ts[ends], 4)
    x_rows = np.flatnonzero(h.customer == 0)  # customer "x" has 5 events
    tokens = SPEC.tokens(raw.codes)
    assert tokens[x_rows[0]].tolist() == [0, 0, 0, 2]
    assert tokens[x_rows[1]].tolist() == [0, 0, 2, 3]
    assert tokens[x_rows[4]].tolist() == [3, 1, 4, 2]  # the window slides: last 4 of 5, Z is unknown
    assert raw.count[x_rows].tolist() == [1, 2, 3, 4, 5]
    assert (raw.first_ts[x_rows] == h.ts[x_rows[0]]).all()
    y_rows = np.flatnonzero(h.customer == 1)
    assert tokens[y_rows[1]].tolist() == [0, 0, 4, 2]


def test_step_features_gap_tenure_count() -> None:
    h = small_history()
    raw = gather_windows(h.ts, h.codes("coarse"), h.customer_start, np.array([4]), h.ts[[4]], 4)
    steps = step_features(raw.ts, raw.codes, raw.count, raw.first_ts, SPEC)[0]
    gap_days = np.expm1(steps[:, 0] * SPEC.gap_scale)
    tenure_days = np.expm1(steps[:, 1] * SPEC.tenure_scale)
    count = np.expm1(steps[:, 2] * SPEC.count_scale)
    assert np.allclose(gap_days, [0, 2, 7, 2], atol=1e-4)  # first in-window gap is unknown -> 0
    assert np.allclose(tenure_days, [1, 3, 10, 12], atol=1e-3)
    assert np.allclose(count, [2, 3, 4, 5], atol=1e-3)


def test_elapsed_time_enters_the_context() -> None:
    h = small_history()
    end = np.array([len(h) - 1])
    at_event = encode(gather_windows(h.ts, h.codes("coarse"), h.customer_start, end, h.ts[end], 4), SPEC)
    later = encode(gather_windows(h.ts, h.codes("coarse"), h.customer_start, end, h.ts[end] + int(30 * DAY), 4), SPEC)
    assert at_event["context"][0, 0] == 0
    assert later["context"][0, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(at_event["tokens"], later["tokens"])


def test_profile_one_hots_when_the_model_uses_them() -> None:
    spec = FeatureSpec(**{**SPEC.to_dict(), "use_profile": True})
    h = small_history()
    h.gender[:] = 1
    raw = gather_windows(h.ts, h.codes("coarse"), h.customer_start, np.array([0]), h.ts[[0]], 4, h.gender, h.age_group)
    context = encode(raw, spec)["context"][0]
    assert context.shape == (spec.n_context,)
    assert context[1:4].tolist() == [0, 1, 0] and context[4:].sum() == 0


def test_window_length_must_match_the_model() -> None:
    h = small_history()
    raw = gather_windows(h.ts, h.codes("coarse"), h.customer_start, np.array([0]), h.ts[[0]], 5)
    with pytest.raises(ValueError, match="expects 4"):
        encode(raw, SPEC)
