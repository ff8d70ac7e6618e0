"""The project's error tree: one root, one-line subclasses; invalid input carries a reason."""

from __future__ import annotations


class SeqscoreError(Exception):
    """Root of every error seqscore raises on purpose."""


class ConfigError(SeqscoreError):
    """A setting, CLI argument or input file that cannot be used as given."""


class InvalidEvent(SeqscoreError):
    """An input record that breaks the event contract; it goes to the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KafkaUnavailable(SeqscoreError):
    """The broker did not answer in time, or refused a delivery."""


class Fenced(SeqscoreError):
    """A write for partitions another member has claimed since (exactly-once): this member is a
    zombie for them, and what it has not committed is void."""


class StateScriptError(SeqscoreError):
    """A state script failed inside Redis: a bug in the script or its arguments, not an
    outage, so waiting for Redis would stall for ever."""
