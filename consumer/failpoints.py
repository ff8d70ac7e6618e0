"""Failpoints for fault tests: `SEQSCORE_FAILPOINT=NAME:N` makes the process die (exit 137,
as SIGKILL would) the N-th time it passes the point NAME, to put a crash exactly where a
random kill only sometimes lands. Unset, a pass costs one comparison."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

_name, _, _count = os.environ.get("SEQSCORE_FAILPOINT", "").partition(":")
_remaining = int(_count) if _count.isdigit() else 0


def hit(name: str) -> None:
    global _remaining
    if name != _name or _remaining <= 0:
        return
    _remaining -= 1
    if _remaining == 0:
        log.warning("failpoint %s: dying here", name)
        logging.shutdown()
        os._exit(137)
