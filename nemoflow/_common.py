"""Cold logic both cores share: configuration checks, the metadata merge rule, diagnostics.

Nothing here runs on the traced thread's hot path; the compiled core and its pure-Python twin
import it so the rules are written once.
"""

from __future__ import annotations

import sys

import orjson

from . import _exit

MAX_RING = 1 << 20
DEFAULT_ARENA = 4 << 20            # payload bytes per recording thread
MIN_ARENA = 4096
MAX_ARENA = 1 << 30
NAME_INLINE = 23                   # short ASCII names travel inside the record

STATUS_NONE, STATUS_OK, STATUS_ERROR = 0, 1, 2


def check_configure(ring_size, overflow, exit_timeout, otel_parent, arena_size):
    """Every ``configure`` value checked, before any is applied; the exit timeout, normalised."""
    if ring_size is not None and (
            not isinstance(ring_size, int) or isinstance(ring_size, bool) or ring_size < 16
            or ring_size > MAX_RING or ring_size & (ring_size - 1)):
        raise ValueError(f"ring_size must be a power of two from 16 to {MAX_RING}, "
                         f"not {ring_size!r}")
    if arena_size is not None and (
            not isinstance(arena_size, int) or isinstance(arena_size, bool)
            or arena_size < MIN_ARENA or arena_size > MAX_ARENA):
        raise ValueError(f"arena_size must be a number of bytes from {MIN_ARENA} to "
                         f"{MAX_ARENA}, not {arena_size!r}")
    if overflow is not None and overflow not in ("block", "drop"):
        raise ValueError('overflow must be "block" or "drop"')
    if otel_parent is not None and otel_parent not in ("auto", "off"):
        raise ValueError('otel_parent must be "auto" or "off"')
    return None if exit_timeout is None else _exit.check_timeout(exit_timeout)


def exception_text(exc) -> str:
    """An exception's status description, before redaction: ``str(exc)``, "cancelled" for a
    bare asyncio cancel, a lone surrogate escaped (it cannot be written as UTF-8)."""
    try:
        text = str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"
    if not text and type(exc).__name__ == "CancelledError":
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and isinstance(exc, asyncio.CancelledError):
            return "cancelled"
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _decode(raw):
    return None if raw is None else orjson.loads(raw)


def merge_metadata(start_raw, end_raw, status, desc):
    """An end event's metadata: the start's, updated by the end's, then the status members.

    The compiled core writes the same bytes in C from the encoded sides (nemoflow_ring.h).
    """
    if end_raw is None and status == STATUS_NONE:
        return start_raw
    merged = _decode(start_raw)
    end = _decode(end_raw)
    if end is not None:
        if isinstance(merged, dict) and isinstance(end, dict):
            merged = {**merged, **end}
        else:
            merged = end
    if status != STATUS_NONE:
        if merged is None:
            merged = {}
        if isinstance(merged, dict):
            merged = dict(merged)
            merged["otel.status_code"] = "OK" if status == STATUS_OK else "ERROR"
            if status == STATUS_ERROR:
                merged["otel.status_description"] = desc
    return orjson.dumps(merged, option=orjson.OPT_SORT_KEYS)


def pipeline_stats(*, recording, drop, ring_size, arena_size, rings, freed, dropped_freed,
                   waits_freed, high_freed, oversize_freed, arena_high_freed, lost_no_memory,
                   deferred, exit_timeout, abandoned_at_detach, abandoned_at_exit):
    """The ``diagnostics()["pipeline"]`` dict, from counters each core copied out."""
    return {"recording": recording, "overflow": "drop" if drop else "block",
            "ring_size": ring_size, "arena_size": arena_size,
            "dropped": dropped_freed + sum([x["dropped"] for x in rings]) + lost_no_memory,
            "waits": waits_freed + sum([x["waits"] for x in rings]),
            "oversize_payloads": oversize_freed + sum([x["oversize"] for x in rings]),
            "arena_high_water": max([arena_high_freed] + [x["arena_high"] for x in rings]),
            "rings": rings, "rings_freed": freed, "high_water_freed": high_freed,
            "deferred": deferred, "exit_timeout": exit_timeout,
            "abandoned_at_detach": abandoned_at_detach, "abandoned_at_exit": abandoned_at_exit}
