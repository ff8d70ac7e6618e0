"""The pieces of `seqscore dlq replay` that need no broker: headers of a replayed copy, the
reason filter, the time arguments and the summary line (end to end: tests/integration/test_dlq_replay.py)."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from consumer.cli import build_parser
from consumer.ops.dlq import ReplayReport, check_reasons, reason_of, replay_headers
from state.errors import ConfigError


def dead_letter(headers: list[tuple[str, bytes]]) -> Message:
    return Message(topic="activity-events.dlq", partition=2, offset=41, key=b"c1", value=b"{", headers=headers)


def test_a_replayed_copy_keeps_the_original_headers_and_says_where_it_came_from() -> None:
    msg = dead_letter([("origin", b"crm"), ("seqscore.reason", b"too_large"), ("seqscore.detail", b"70000 bytes"),
                       ("trace", b"t1"), ("seqscore.replayed-from", b"dlq:0:3"), ("seqscore.offset", b"9")])
    assert replay_headers(msg) == [("origin", b"crm"), ("trace", b"t1"), ("seqscore.replayed-from", b"dlq:2:41")]
    assert reason_of(msg) == "too_large"


def test_a_record_without_a_reason_header_is_counted_apart() -> None:
    assert reason_of(dead_letter([])) == "(none)"
    assert replay_headers(dead_letter([])) == [("seqscore.replayed-from", b"dlq:2:41")]


def test_reasons_are_checked_against_the_enum() -> None:
    assert check_reasons(None) is None
    assert check_reasons(["too_large", "bad_json"]) == {"too_large", "bad_json"}
    with pytest.raises(ConfigError, match="unknown reason too_big"):
        check_reasons(["too_big"])


@pytest.mark.parametrize(("text", "seconds"), [
    ("2024-03-01", 1709251200),
    ("2024-03-01T12:00:00+01:00", 1709290800),
    ("2024-03-01T11:00:00Z", 1709290800),
    ("1709290800", 1709290800),
    ("1709290800.5", 1709290800.5),
])
def test_since_and_until_take_iso_times_or_epoch_seconds(text: str, seconds: float) -> None:
    args = build_parser().parse_args(["dlq", "replay", "--since", text, "--until", text, "--reason", "empty",
                                      "--reason", "bad_json", "not_utf8"])
    assert args.since == seconds and args.until == seconds
    assert args.reason == ["empty", "bad_json", "not_utf8"] and not args.dry_run


@pytest.mark.parametrize("text", ["yesterday", "nan", "-5", "inf"])
def test_a_bad_time_is_a_one_line_usage_error(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["dlq", "replay", "--since", text])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_summary_is_one_line() -> None:
    report = ReplayReport(read=10, selected=3, replayed=3)
    report.by_reason.update({"too_large": 2, "bad_json": 1})
    assert report.summary() == "dlq replay: read 10, selected 3, replayed 3; by reason: bad_json 1, too_large 2"
    dry = ReplayReport(read=10, selected=3, dry_run=True)
    assert dry.summary() == "dlq replay: read 10, selected 3, would replay 3; by reason: none"
