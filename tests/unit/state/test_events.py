from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.bench.loadgen import MALFORMED_KINDS, corrupt
from state.errors import InvalidEvent
from state.events import InvalidReason, decode_event, json_schemas

VALID = orjson.dumps(
    {
        "event_id": "e-1",
        "customer_id": "3454BA",
        "activity": "C",
        "activity_detail": "C2",
        "ts": "2021-08-13T10:00:00+02:00",
        "attrs": {"channel": "web", "amount": 12.5, "promo": True},
    }
)


def reason_of(value: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as info:
        decode_event(value)
    return info.value.reason


def test_valid_event_decodes_with_its_zone() -> None:
    event = decode_event(VALID)
    assert event.customer_id == "3454BA"
    assert event.ts_seconds == 1628841600  # 08:00 UTC
    assert event.attrs == {"channel": "web", "amount": 12.5, "promo": True}


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    event = decode_event(VALID[:-1] + b',"campaign":"x"}')
    assert not hasattr(event, "campaign")


def test_minimal_event_needs_no_detail_or_attrs() -> None:
    event = decode_event(b'{"event_id":"1","customer_id":"c","activity":"Create ticket","ts":"2021-01-01T00:00:00Z"}')
    assert event.activity_detail is None and event.attrs is None


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bad_json", "bad_json"),
        ("missing_field", "missing_field"),
        ("wrong_type", "wrong_type"),
        ("bad_timestamp", "bad_timestamp"),
        ("no_zone", "bad_timestamp"),
        ("not_utf8", "not_utf8"),
        ("too_large", "too_large"),
        ("nested_attrs", "bad_attrs"),
        ("empty", "empty"),
        ("nan_attr", "bad_attrs"),
        ("not_object", "not_object"),
    ],
)
def test_each_malformed_kind_gets_its_reason(kind: str, reason: str) -> None:
    assert reason_of(corrupt(VALID, kind)) == reason


def test_every_generated_malformed_kind_is_covered() -> None:
    reasons = {reason_of(corrupt(VALID, kind)) for kind in MALFORMED_KINDS}
    assert reasons <= {r.value for r in InvalidReason}


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"ts": "0001-01-01T00:00:00+05:00"}, "ts_out_of_range"),
        ({"ts": "9999-12-31T23:59:59Z"}, "ts_out_of_range"),
        ({"ts": "1969-12-31T23:59:59Z"}, "ts_out_of_range"),
        ({"ts": "2021-08-13"}, "bad_timestamp"),
        ({"ts": 1628841600}, "bad_timestamp"),
        ({"event_id": ""}, "empty_field"),
        ({"customer_id": "x" * 257}, "field_too_long"),
        ({"activity": "a" * 65}, "field_too_long"),
        ({"customer_id": 42}, "wrong_type"),
        ({"attrs": [1, 2]}, "bad_attrs"),
        ({"attrs": {f"k{i}": i for i in range(65)}}, "bad_attrs"),
        ({"attrs": {"note": "x" * 1025}}, "bad_attrs"),
        ({"event_id": None}, "wrong_type"),
    ],
)
def test_field_rules(patch: dict[str, object], reason: str) -> None:
    event = orjson.loads(VALID) | patch
    assert reason_of(orjson.dumps(event)) == reason


def test_null_and_top_level_scalars_are_rejected() -> None:
    assert reason_of(None) == "empty"
    assert reason_of(b"null") == "not_object"
    assert reason_of(b"42") == "not_object"
    assert reason_of(b"Infinity") in {"not_object", "bad_json"}


def test_size_limit_is_configurable() -> None:
    with pytest.raises(InvalidEvent, match="too_large"):
        decode_event(VALID, max_bytes=len(VALID) - 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_escape_as_other_errors(value: bytes) -> None:
    try:
        decode_event(value)
    except InvalidEvent as exc:
        assert exc.reason in {r.value for r in InvalidReason}


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=30,
    )
)
def test_arbitrary_json_is_valid_or_rejected_with_a_reason(doc: object) -> None:
    try:
        value = json.dumps(doc).encode()
    except ValueError:
        return
    try:
        decode_event(value)
    except InvalidEvent as exc:
        assert exc.reason in {r.value for r in InvalidReason}


def test_json_schema_files_are_current() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "docs" / "schemas"
    for name, schema in json_schemas().items():
        path = root / name
        assert path.is_file(), f"{path} missing: run `seqscore schemas`"
        assert path.read_text() == json.dumps(schema, indent=2, sort_keys=True) + "\n", (
            f"{path} is stale: run `seqscore schemas`"
        )
