"""Hostile record values, each with the reason the decoder must give it (README, "Contracts",
and docs/design.md). Shared by the property tests (tests/unit/serve/test_poison.py) and the
poison stream on the real stack (tests/integration/test_poison_stream.py), so both hold the
decoder to the same table."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import orjson

Event = dict[str, object]
Builder = Callable[[Event, random.Random], bytes]


def _dumps(event: object) -> bytes:
    # the stdlib writes NaN / Infinity literals (not JSON) and escapes lone surrogates, which
    # is exactly what producers in other languages get wrong
    return json.dumps(event, allow_nan=True).encode()


def _patched(**patch: object) -> Builder:
    return lambda event, _rng: _dumps(event | patch)


def _without(field: str) -> Builder:
    return lambda event, _rng: _dumps({k: v for k, v in event.items() if k != field})


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _random_bytes(event: Event, rng: random.Random) -> bytes:
    # 0xFF never occurs in UTF-8, so the reason is fixed whatever the other bytes are
    raw = bytearray(rng.randbytes(rng.randint(1, 300)))
    raw.insert(rng.randrange(len(raw) + 1), 0xFF)
    return bytes(raw)


def _not_json_text(event: Event, rng: random.Random) -> bytes:
    return ("<event " + "".join(rng.choice("abc xyz=\"'{") for _ in range(rng.randint(0, 60)))).encode()


def _truncated(event: Event, rng: random.Random) -> bytes:
    value = _dumps(event)
    return value[: rng.randint(1, len(value) - 1)]


def _raw_surrogate(event: Event, rng: random.Random) -> bytes:
    # a lone surrogate written as UTF-8 bytes (what CESU-8 / broken encoders emit)
    return json.dumps(event | {"activity": "C\ud800"}, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _deep_extra(event: Event, rng: random.Random) -> bytes:
    return _dumps(event)[:-1] + f',"trace":{_nested(rng.randint(250, 5000))}}}'.encode()


def _deep_attrs(event: Event, rng: random.Random) -> bytes:
    depth = rng.randint(250, 3000)
    return _dumps(event | {"attrs": None}).replace(b'"attrs": null', b'"attrs": ' + ('{"a":' * depth).encode()
                                                   + b"1" + b"}" * depth)


def _huge(event: Event, rng: random.Random) -> bytes:
    return _dumps(event | {"padding": "x" * rng.randint(65_537, 90_000)})


def _too_many_attrs(event: Event, rng: random.Random) -> bytes:
    return _dumps(event | {"attrs": {f"k{i}": i for i in range(rng.randint(65, 200))}})


# kind -> (builder from a valid event, the reason every value it builds must get)
HOSTILE: dict[str, tuple[Builder, str]] = {
    "empty": (lambda e, r: b"", "empty"),
    "whitespace": (lambda e, r: b" \n\t ", "bad_json"),
    "random_bytes": (_random_bytes, "not_utf8"),
    "raw_surrogate": (_raw_surrogate, "not_utf8"),
    "overlong_utf8": (lambda e, r: _dumps(e).replace(b'"activity": "', b'"activity": "\xc0\xaf', 1), "not_utf8"),
    "not_json_text": (_not_json_text, "bad_json"),
    "truncated": (_truncated, "bad_json"),
    "bom": (lambda e, r: b"\xef\xbb\xbf" + _dumps(e), "bad_json"),
    "trailing_garbage": (lambda e, r: _dumps(e) + b" {}", "bad_json"),
    "lone_surrogate_escape": (_patched(customer_id="c\udc00"), "bad_json"),
    "deep_extra_field": (_deep_extra, "bad_json"),
    "deep_attrs": (_deep_attrs, "bad_json"),
    "nan_in_extra_field": (_patched(score=float("nan")), "bad_json"),
    "infinity_in_extra_field": (_patched(meta={"x": [float("-inf")]}), "bad_json"),
    "huge": (_huge, "too_large"),
    "top_array": (lambda e, r: _dumps([e]), "not_object"),
    "top_number": (lambda e, r: b"42", "not_object"),
    "top_null": (lambda e, r: b"null", "not_object"),
    "top_string": (lambda e, r: _dumps(json.dumps(e)), "not_object"),
    "top_true": (lambda e, r: b"true", "not_object"),
    "top_nan": (lambda e, r: b"NaN", "not_object"),
    "missing_event_id": (_without("event_id"), "missing_field"),
    "missing_customer_id": (_without("customer_id"), "missing_field"),
    "missing_activity": (_without("activity"), "missing_field"),
    "missing_ts": (_without("ts"), "missing_field"),
    "empty_event_id": (_patched(event_id=""), "empty_field"),
    "empty_activity_detail": (_patched(activity_detail=""), "empty_field"),
    "long_event_id": (lambda e, r: _dumps(e | {"event_id": "e" * r.randint(257, 5000)}), "field_too_long"),
    "long_customer_id": (lambda e, r: _dumps(e | {"customer_id": "é" * r.randint(257, 2000)}), "field_too_long"),
    "long_activity": (lambda e, r: _dumps(e | {"activity": "A" * r.randint(65, 500)}), "field_too_long"),
    "customer_id_number": (_patched(customer_id=3454), "wrong_type"),
    "event_id_null": (_patched(event_id=None), "wrong_type"),
    "activity_list": (_patched(activity=["C"]), "wrong_type"),
    "activity_nan": (_patched(activity=float("nan")), "wrong_type"),
    "detail_object": (_patched(activity_detail={"x": 1}), "wrong_type"),
    "ts_year_1": (_patched(ts="0001-01-01T00:00:00+05:00"), "ts_out_of_range"),
    "ts_year_9999": (_patched(ts="9999-12-31T23:59:59-23:59"), "ts_out_of_range"),
    "ts_far_future": (_patched(ts="2100-01-01T00:00:00Z"), "ts_out_of_range"),
    "ts_before_epoch": (_patched(ts="1969-12-31T23:59:59Z"), "ts_out_of_range"),
    "ts_no_zone": (_patched(ts="2021-08-13T10:00:00"), "bad_timestamp"),
    "ts_date_only": (_patched(ts="2021-08-13"), "bad_timestamp"),
    "ts_not_a_date": (_patched(ts="2021-02-30T10:00:00Z"), "bad_timestamp"),
    "ts_epoch_seconds_string": (_patched(ts="1628841600"), "bad_timestamp"),
    "ts_epoch_millis_string": (_patched(ts="1628841600000"), "bad_timestamp"),
    "ts_number": (_patched(ts=1628841600), "bad_timestamp"),
    "ts_infinity": (_patched(ts=float("inf")), "bad_timestamp"),
    "attrs_nested": (_patched(attrs={"channel": {"name": "web"}}), "bad_attrs"),
    "attrs_list_value": (_patched(attrs={"tags": ["a", "b"]}), "bad_attrs"),
    "attrs_null_value": (_patched(attrs={"channel": None}), "bad_attrs"),
    "attrs_nan": (_patched(attrs={"amount": float("nan")}), "bad_attrs"),
    "attrs_infinity": (_patched(attrs={"amount": float("inf")}), "bad_attrs"),
    "attrs_array": (_patched(attrs=[1, 2]), "bad_attrs"),
    "attrs_string": (_patched(attrs="channel=web"), "bad_attrs"),
    "attrs_too_many": (_too_many_attrs, "bad_attrs"),
    "attrs_long_value": (lambda e, r: _dumps(e | {"attrs": {"note": "n" * r.randint(1025, 3000)}}), "bad_attrs"),
}


def hostile_records(template: bytes, n: int, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """`n` hostile values built from a valid event value, every kind in turn: (kind, value, reason)."""
    rng = random.Random(seed)
    event = orjson.loads(template)
    kinds = list(HOSTILE)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        build, reason = HOSTILE[kind]
        out.append((kind, build(event, rng), reason))
    return out
