"""state/layout.py and the scripts agree: the arguments of apply_batch.lua by name and
position, the packed layouts' sizes, and the key names."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

from state.layout import (
    EVENT_ARG_DTYPE,
    HEADER_DTYPE,
    RECORD_DTYPE,
    STORED_HEADER_BYTES,
    UPDATE_ARG_DTYPE,
    ApplyArgs,
    Keys,
)

SCRIPT = resources.files("state").joinpath("scripts/apply_batch.lua").read_text()
# the Lua local that reads each ApplyArgs field
LUA_NAME = {
    "capacity": "capacity", "lateness_s": "lateness", "ttl_s": "ttl", "n_events": "n", "mode": "writes",
    "n_updates": "n_updates", "events": "EVENTS", "updates": "UPDATES", "prefix": "PREFIX", "marks": "MARKS",
    "clocks": "CLOCKS", "undo": "keeps_undo", "n_own": "n_own", "max_due": "MAX_DUE",
}


def lua_argv_positions() -> dict[str, int]:
    """Lua local name -> the ARGV index it is read from, from `local a, b = f(ARGV[i]), ARGV[j]`."""
    found: dict[str, int] = {}
    for names, values in re.findall(r"^local ([\w, ]+) = (.*ARGV\[\d+\].*)$", SCRIPT, flags=re.M):
        indexes = [int(i) for i in re.findall(r"ARGV\[(\d+)\]", values)]
        for name, index in zip([n.strip() for n in names.split(",")], indexes, strict=False):
            found[name] = index
    return found


def test_the_script_reads_each_argument_where_apply_args_puts_it() -> None:
    positions = lua_argv_positions()
    fields = [f.name for f in dataclasses.fields(ApplyArgs) if f.name != "precomputed"]
    assert set(fields) == set(LUA_NAME), "every field has its Lua reader"
    for index, field in enumerate(fields, start=1):
        assert positions[LUA_NAME[field]] == index, f"{field} is ARGV[{index}] in Python"
    assert positions["PRE_VALUES"] == len(fields) + 1, "the precomputed write follows"
    args = ApplyArgs(*range(4), "w", 5, b"e", b"u", "p", b"m", b"c", b"", 13, 14, (b"v", b"m", b"s"))
    assert args.argv()[4] == "w" and len(args.argv()) == 17


def test_packed_layouts_match_the_sizes_the_script_uses() -> None:
    hdr, rec = (int(x) for x in re.search(r"^local HDR, REC = (\d+), (\d+)", SCRIPT, flags=re.M).groups())  # type: ignore[union-attr]
    ev, upd = (int(x) for x in re.search(r"^local EV, UPD = (\d+), (\d+)", SCRIPT, flags=re.M).groups())  # type: ignore[union-attr]
    assert (hdr, rec) == (STORED_HEADER_BYTES, RECORD_DTYPE.itemsize)
    assert (ev, upd) == (EVENT_ARG_DTYPE.itemsize, UPDATE_ARG_DTYPE.itemsize)
    assert HEADER_DTYPE.itemsize == 48, "the reply's header: the stored one plus the record count"


def test_keys_of_one_customer_share_a_hash_tag_and_name_their_customer() -> None:
    keys = Keys("pfx")
    assert keys.window("c:1") == "pfx:{c:c:1}:w" and keys.profile("c:1") == "pfx:{c:c:1}:p"
    assert keys.customer_of_window(keys.window("c:1").encode()) == "c:1"
    assert keys.quiet(3) == "pfx:quiet:3" and keys.undo(3) == "pfx:undo:3" and keys.undo(3).startswith(keys.undo_prefix)
    assert "PREFIX .. ':quiet:'" in SCRIPT and "PREFIX .. ':undo:'" in SCRIPT and "':clock'" in SCRIPT
