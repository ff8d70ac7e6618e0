"""Failpoints for fault tests: `SEQSCORE_FAILPOINT=NAME:N` makes the process die (exit 137,
as SIGKILL would) the N-th time it passes the point NAME, to put a crash exactly where a
random kill only sometimes lands; `NAME:N:stop` freezes it there instead (SIGSTOP, as a long
GC pause or a frozen VM would) until the test sends SIGCONT. Unset, a pass costs one comparison."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

_name, _, _spec = os.environ.get("SEQSCORE_FAILPOINT", "").partition(":")
_count, _, _action = _spec.partition(":")
_remaining = int(_count) if _count.isdigit() else 0


def hit(name: str) -> None:
    global _remaining
    if name != _name or _remaining <= 0:
        return
    _remaining -= 1
    if _remaining == 0 and _action == "stop":
        log.warning("failpoint %s: freezing here", name)
        os.kill(os.getpid(), signal.SIGSTOP)
        log.warning("failpoint %s: thawed", name)
    elif _remaining == 0:
        log.warning("failpoint %s: dying here", name)
        logging.shutdown()
        os._exit(137)
