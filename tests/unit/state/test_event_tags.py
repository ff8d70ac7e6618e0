"""Event tags are keyed (audit A15.2): ids made to collide without the key do not collide
with it, and the decoder tags with the state's key."""

from __future__ import annotations

import orjson
from confluent_kafka import Message

from consumer.serve.source import EventDecoder
from state.store import LEGACY_TAG_KEY, event_tag


def colliding_pair(key: bytes) -> tuple[str, str]:
    """Two ids with the same tag under `key`, by a birthday search (about 80,000 tries)."""
    seen: dict[int, str] = {}
    for i in range(1_000_000):
        event_id = f"forged-{i}"
        tag = event_tag(event_id, key)
        if tag in seen:
            return seen[tag], event_id
        seen[tag] = event_id
    raise AssertionError("no collision in a million ids")


def test_ids_made_to_collide_under_one_key_do_not_collide_under_another() -> None:
    known, secret = b"k" * 16, b"s" * 16
    first, second = colliding_pair(known)
    assert event_tag(first, known) == event_tag(second, known)
    assert event_tag(first, secret) != event_tag(second, secret), "without the key a collision is a guess"
    assert event_tag("plumless", LEGACY_TAG_KEY) == event_tag("buckeroo", LEGACY_TAG_KEY), "CRC32's known pair"
    assert event_tag("plumless", secret) != event_tag("buckeroo", secret)


def test_the_decoder_tags_each_event_with_the_state_key() -> None:
    value = orjson.dumps({"event_id": "e-1", "customer_id": "c", "activity": "A", "ts": "2021-08-13T10:00:00Z"})
    message = Message(topic="activity-events", partition=0, offset=0, key=b"c", value=value,
                      timestamp=(1, 1_628_848_800_000))
    keys = (b"a" * 16, b"b" * 16, LEGACY_TAG_KEY)
    tags = [EventDecoder(1 << 16, tag_key=key).decode([message]).events.tag.tolist() for key in keys]
    assert tags == [[event_tag("e-1", key)] for key in keys]
    assert len({tag[0] for tag in tags}) == 3
