"""Poison input against the decoder the scorer runs (consumer/serve/source.py EventDecoder): it never
raises, and every record is either a valid event with exactly the fields it was sent with, or
invalid with the one reason the contract gives it (README, "Contracts"; docs/design.md)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.serve.source import Decoded, EventDecoder
from state.encoding import activity_code
from state.events import DEFAULT_MAX_EVENT_BYTES, MAX_ACTIVITY_CHARS, MAX_ID_CHARS, InvalidReason
from state.store import event_tag
from tests.poison_cases import HOSTILE, hostile_records

REASONS = {r.value for r in InvalidReason}
FIELDS = ("event_id", "customer_id", "activity", "activity_detail", "ts", "attrs")
TEMPLATE = orjson.dumps({"event_id": "e-1", "customer_id": "3454BA", "activity": "C", "activity_detail": "C2",
                         "ts": "2021-08-13T10:00:00+02:00", "attrs": {"channel": "web", "amount": 12.5}})
BOUNDED = settings(max_examples=250, deadline=None)


def record(value: bytes | None, offset: int = 0) -> Message:
    return Message(topic="activity-events", partition=offset % 3, offset=offset, key=b"k", value=value,
                   timestamp=(1, 1_700_000_000_000 + offset))


def decode_one(value: bytes | None, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Decoded:
    decoded = EventDecoder(max_bytes).decode([record(value)])
    assert len(decoded.events) + len(decoded.invalid) == 1, "each record is either valid or invalid"
    assert not decoded.errors
    return decoded


def reason_of(value: bytes | None, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> str:
    decoded = decode_one(value, max_bytes)
    assert decoded.invalid, f"expected invalid, decoded {decoded.event_ids}"
    msg, reason, detail = decoded.invalid[0]
    assert msg.value() == value, "the invalid record is the original, bytes unchanged"
    assert reason in REASONS and detail
    return reason


# -- valid events -----------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=MAX_ID_CHARS) | st.text(alphabet="x€😀", min_size=MAX_ID_CHARS,
                                                             max_size=MAX_ID_CHARS)
activities = st.text(min_size=1, max_size=MAX_ACTIVITY_CHARS)
attr_values = (st.text(max_size=1024) | st.booleans() | st.integers(-(2**63), 2**63 - 1)
               | st.floats(allow_nan=False, allow_infinity=False))
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
instants = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59),
                        timezones=st.just(UTC))
json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12)
extra_fields = st.dictionaries(st.text(max_size=12).filter(lambda k: k not in FIELDS), json_values, max_size=4)


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, object], int]:
    """A valid event as a dict, and its event time in epoch seconds."""
    instant = draw(instants)
    local = instant.astimezone(draw(offsets))
    ts = local.isoformat()
    if local.utcoffset() == timedelta(0) and draw(st.booleans()):
        ts = ts.replace("+00:00", "Z")
    event: dict[str, object] = {"event_id": draw(ids), "customer_id": draw(ids), "activity": draw(activities),
                                "ts": ts}
    if draw(st.booleans()):
        event["activity_detail"] = draw(activities | st.none())
    if draw(st.booleans()):
        event["attrs"] = draw(st.dictionaries(st.text(min_size=1, max_size=64), attr_values, max_size=8) | st.none())
    return event, int(instant.timestamp())


def encode(event: object, ascii_only: bool = True) -> bytes:
    return json.dumps(event, ensure_ascii=ascii_only).encode()


@BOUNDED
@given(valid_events(), st.booleans())
def test_a_valid_event_decodes_with_the_fields_it_was_sent_with(generated: tuple[dict[str, object], int],
                                                                ascii_only: bool) -> None:
    event, ts = generated
    decoded = decode_one(encode(event, ascii_only))
    assert not decoded.invalid, decoded.invalid and decoded.invalid[0][1:]
    activity, detail = str(event["activity"]), event.get("activity_detail")
    assert decoded.event_ids == [event["event_id"]]
    assert decoded.events.customer_ids == [event["customer_id"]]
    assert decoded.events.ts.tolist() == [ts]
    assert decoded.events.coarse.tolist() == [activity_code(activity)]
    assert decoded.events.fine.tolist() == [activity_code(str(detail) if detail else activity)]
    assert decoded.events.tag.tolist() == [event_tag(str(event["event_id"]))]
    assert decoded.kafka_ts.tolist() == [1_700_000_000_000]


@BOUNDED
@given(valid_events(), extra_fields)
def test_unknown_top_level_fields_are_ignored(generated: tuple[dict[str, object], int],
                                              extra: dict[str, object]) -> None:
    """The one rule for unknown fields (docs/serving.md): ignored, so producers can add fields
    before the scorer knows them; the record must still be a valid JSON object as a whole."""
    event, _ = generated
    plain, with_extra = decode_one(encode(event)), decode_one(encode(extra | event))
    assert not with_extra.invalid
    assert with_extra.event_ids == plain.event_ids
    for name in ("customer_ids",):
        assert getattr(with_extra.events, name) == getattr(plain.events, name)
    for name in ("ts", "coarse", "fine", "tag"):
        assert getattr(with_extra.events, name).tolist() == getattr(plain.events, name).tolist()


@BOUNDED
@given(valid_events())
def test_the_size_limit_is_exact(generated: tuple[dict[str, object], int]) -> None:
    value = encode(generated[0], ascii_only=False)
    assert not decode_one(value, max_bytes=len(value)).invalid
    assert reason_of(value, max_bytes=len(value) - 1) == "too_large"


# -- one rule broken --------------------------------------------------------------------------

not_strings = (st.integers() | st.floats(allow_nan=False) | st.booleans()
               | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
naive = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2099, 12, 30))
out_of_range = (st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1968, 12, 31))
                | st.datetimes(min_value=datetime(2101, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
BAD_UTF8 = (b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xf4\x90\x80\x80")


@st.composite
def broken(draw: st.DrawFn) -> tuple[bytes, str]:
    """A valid event with exactly one rule broken, and the reason it must get."""
    event, _ = draw(valid_events())
    value = encode(event)
    rule = draw(st.sampled_from([
        "missing", "empty", "too_long", "id_type", "detail_type", "ts_type", "ts_no_zone", "ts_epoch_string",
        "ts_out_of_range", "attrs_nested", "attrs_not_finite", "attrs_not_object", "not_object", "not_utf8",
        "truncated", "lone_surrogate", "deep", "nan_extra", "too_large", "empty_value",
    ]))
    field = draw(st.sampled_from(["event_id", "customer_id", "activity"]))
    limit = MAX_ACTIVITY_CHARS if field == "activity" else MAX_ID_CHARS
    if rule == "missing":
        dropped = draw(st.sampled_from([field, "ts"]))
        return encode({k: v for k, v in event.items() if k != dropped}), "missing_field"
    if rule == "empty":
        return encode(event | {draw(st.sampled_from([field, "activity_detail"])): ""}), "empty_field"
    if rule == "too_long":
        return encode(event | {field: draw(st.text(min_size=limit + 1, max_size=limit + 300))}), "field_too_long"
    if rule == "id_type":
        return encode(event | {field: draw(not_strings | st.none())}), "wrong_type"
    if rule == "detail_type":
        return encode(event | {"activity_detail": draw(not_strings)}), "wrong_type"
    if rule == "ts_type":
        return encode(event | {"ts": draw(not_strings | st.none())}), "bad_timestamp"
    if rule == "ts_no_zone":
        return encode(event | {"ts": draw(naive).isoformat()}), "bad_timestamp"
    if rule == "ts_epoch_string":
        return encode(event | {"ts": str(draw(st.integers(0, 4_000_000_000_000) | st.floats(0, 4e9)))}), \
            "bad_timestamp"
    if rule == "ts_out_of_range":
        return encode(event | {"ts": draw(out_of_range).replace(tzinfo=draw(offsets)).isoformat()}), "ts_out_of_range"
    if rule == "attrs_nested":
        inner = draw(st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers()))
        return encode(event | {"attrs": {draw(st.text(min_size=1, max_size=8)): inner}}), "bad_attrs"
    if rule == "attrs_not_finite":
        literal = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        return encode(event | {"attrs": {"amount": literal}}), "bad_attrs"
    if rule == "attrs_not_object":
        return encode(event | {"attrs": draw(st.lists(st.integers(), max_size=3) | st.text() | st.integers())}), \
            "bad_attrs"
    if rule == "not_object":
        return encode(draw(st.sampled_from([[event], 42, 1.5, "event", True, None, []]))), "not_object"
    if rule == "not_utf8":
        # inserted before a quote: an ASCII byte, never inside a multi-byte character
        quotes = [i for i, b in enumerate(value) if b == ord('"')]
        at = draw(st.sampled_from(quotes))
        return value[:at] + draw(st.sampled_from(BAD_UTF8)) + value[at:], "not_utf8"
    if rule == "truncated":
        return value[: draw(st.integers(1, len(value) - 1))], "bad_json"
    if rule == "lone_surrogate":
        surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
        return encode(event | {field: "x" + surrogate}), "bad_json"
    if rule == "deep":
        depth = draw(st.integers(201, 2000))  # the parser's nesting limit is 200
        return value[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}", "bad_json"
    if rule == "nan_extra":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        key = json.dumps(draw(st.text(max_size=5).filter(lambda k: k not in FIELDS)))
        return value[:-1] + f", {key}: [{literal}]}}".encode(), "bad_json"
    if rule == "too_large":
        return encode(event | {"padding": "p" * DEFAULT_MAX_EVENT_BYTES}), "too_large"
    return draw(st.sampled_from([b"", None])), "empty"


@settings(max_examples=300, deadline=None)
@given(broken())
def test_a_record_with_one_rule_broken_gets_that_rule_s_reason(case: tuple[bytes, str]) -> None:
    value, reason = case
    assert reason_of(value) == reason


# -- anything at all --------------------------------------------------------------------------

any_char = st.characters() | st.characters(categories=("Cs",))  # lone surrogates too

@BOUNDED
@given(st.binary(max_size=600) | st.text(any_char, max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    decoded = decode_one(value)
    assert all(reason in REASONS for _, reason, _ in decoded.invalid)


@BOUNDED
@given(st.recursive(json_leaves | st.floats() | st.text(any_char),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=6), max_leaves=40))
def test_arbitrary_json_never_raises(doc: object) -> None:
    value = json.dumps(doc).encode()  # NaN / Infinity literals and lone surrogate escapes included
    decoded = decode_one(value)
    assert all(reason in REASONS for _, reason, _ in decoded.invalid)


@BOUNDED
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 10_000)), min_size=1, max_size=40), valid_events())
def test_a_batch_splits_into_its_valid_and_invalid_records_in_order(plan: list[tuple[bool, int]],
                                                                   generated: tuple[dict[str, object], int]) -> None:
    event, _ = generated
    hostile = hostile_records(encode(event), len(HOSTILE), seed=len(plan))
    values, expected = [], []
    for i, (bad, pick) in enumerate(plan):
        if bad:
            _, value, reason = hostile[pick % len(hostile)]
            values.append(value)
            expected.append(reason)
        else:
            values.append(encode(event | {"event_id": f"e{i}"}))
            expected.append(f"e{i}")
    messages = [record(v, offset) for offset, v in enumerate(values)]
    decoded = EventDecoder(DEFAULT_MAX_EVENT_BYTES).decode(messages)
    assert decoded.event_ids == [e for e, (bad, _) in zip(expected, plan, strict=True) if not bad]
    assert [reason for _, reason, _ in decoded.invalid] == [e for e, (bad, _) in zip(expected, plan, strict=True)
                                                            if bad]
    assert [m.offset() for m, _, _ in decoded.invalid] == [i for i, (bad, _) in enumerate(plan) if bad]
    assert decoded.events.offset.tolist() == [i for i, (bad, _) in enumerate(plan) if not bad]


# -- the table shared with the stream test ----------------------------------------------------

@pytest.mark.parametrize("kind", list(HOSTILE))
def test_each_hostile_kind_gets_its_reason(kind: str) -> None:
    build, reason = HOSTILE[kind]
    event = orjson.loads(TEMPLATE)
    for seed in range(5):
        assert reason_of(build(event, random.Random(seed))) == reason, kind


def test_the_hostile_table_covers_every_reason() -> None:
    assert {reason for _, reason in HOSTILE.values()} == REASONS


# -- event time far ahead of the record (a device with a wrong clock) --------------------------

def _at(ts: datetime, record_ms: int) -> Message:
    value = orjson.dumps(orjson.loads(TEMPLATE) | {"ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return Message(topic="activity-events", partition=0, offset=1, key=b"k", value=value, timestamp=(1, record_ms))


@pytest.mark.parametrize(("ahead", "valid"), [(timedelta(days=5 * 365), False), (timedelta(hours=25), False),
                                              (timedelta(hours=23), True), (timedelta(days=-400), True)])
def test_an_event_dated_far_after_its_record_is_dead_lettered_and_never_moves_the_clock(
    ahead: timedelta, valid: bool
) -> None:
    record = datetime(2024, 5, 1, 12, tzinfo=UTC)
    message = _at(record + ahead, int(record.timestamp() * 1000))
    decoded = EventDecoder(DEFAULT_MAX_EVENT_BYTES, 86_400).decode([message])
    assert len(decoded.events) == int(valid)
    if not valid:
        _, reason, detail = decoded.invalid[0]
        assert reason == InvalidReason.TS_OUT_OF_RANGE.value and "SEQSCORE_STATE__MAX_FUTURE_SECONDS" in detail


def test_the_wall_clock_caps_a_record_timestamp_that_is_itself_ahead() -> None:
    future = datetime.now(UTC) + timedelta(days=3 * 365)
    decoded = EventDecoder(DEFAULT_MAX_EVENT_BYTES, 86_400).decode([_at(future, int(future.timestamp() * 1000))])
    assert [reason for _, reason, _ in decoded.invalid] == [InvalidReason.TS_OUT_OF_RANGE.value]
