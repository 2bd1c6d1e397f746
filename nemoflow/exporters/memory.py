"""In-memory recording: the event objects as delivered, and a NumPy table of scopes and marks.

For tests (see ``nemoflow.testing.record``) and for analysis in a notebook::

    import numpy as np
    from nemoflow.exporters import InMemoryRecorder

    rec = InMemoryRecorder()
    rec.register("analysis")
    run_agent()
    rec.force_flush()
    t = rec.to_numpy()
    done = t[(t["kind"] == "scope") & (t["duration_ns"] >= 0)]  # finished scopes
    for name in np.unique(done["name"]):
        d = done["duration_ns"][done["name"] == name]
        print(f"{name}: n={d.size} p95={np.percentile(d, 95) / 1e6:.2f} ms")
    errors = np.count_nonzero(t["status"] == "ERROR")
"""

from __future__ import annotations

import os
import threading
import weakref

from ._base import Exporter

__all__ = ["InMemoryRecorder", "rows_to_numpy"]

_live: weakref.WeakSet = weakref.WeakSet()

# ``name`` is an object (str) field: names are free text of any length, and a fixed-width
# unicode field would truncate them silently; ``==``, ``np.unique`` and sorting work the same.
_FIELDS = [("uuid", "U36"), ("parent_uuid", "U36"), ("name", "O"), ("kind", "U5"),
           ("category", "U16"), ("start_ns", "i8"), ("end_ns", "i8"), ("duration_ns", "i8"),
           ("status", "U5"), ("depth", "i4")]


def rows_to_numpy(rows):
    """The ``to_numpy()`` table of (uuid, parent, name, kind, category, start, end, status,
    depth) rows."""
    import numpy as np  # imported here: `import nemoflow` must stay cheap

    table = np.empty(len(rows), dtype=_FIELDS)
    if rows:
        table[:] = [(u, p, n, k, c, s, e, -1 if s < 0 or e < 0 else e - s, st, d)
                    for u, p, n, k, c, s, e, st, d in rows]
    return table


class InMemoryRecorder(Exporter):
    """Keeps every event delivered while registered; ``to_numpy()`` gives one row per scope
    and per mark."""

    default_name = "memory"

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._events: list = []
        self._received = 0
        _live.add(self)

    def export(self, events) -> None:
        """Take a batch of events from the pipeline (called by the delivery thread)."""
        with self._lock:
            if not self._closed:
                self._events.extend(events)
                self._received += len(events)

    @property
    def events(self) -> list:
        """A copy of the events recorded so far, in delivery order."""
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        """Forget the events recorded so far."""
        with self._lock:
            self._events.clear()

    def stats(self) -> dict:
        """Events received, and events held now (``clear()`` drops them)."""
        with self._lock:
            return {"events": self._received, "held": len(self._events)}

    def to_numpy(self):
        """A NumPy structured array, one row per scope (start and end joined) and per mark.

        Fields: ``uuid``, ``parent_uuid`` ("" when none), ``name`` (str objects), ``kind``
        ("scope" / "mark"), ``category`` ("" for a mark without one), ``start_ns``, ``end_ns``
        (-1 while open; the mark's time for a mark), ``duration_ns`` (-1 while open, 0 for a
        mark), ``status`` ("OK" / "ERROR" from the end's ``otel.status_code``, else ""),
        ``depth`` (0 for a scope or mark whose parent was not recorded, parent's + 1 below).
        Rows are in the order their first event was delivered; a scope whose start was not
        recorded (the recorder was registered while it was open) has ``start_ns`` -1.
        """
        rows: dict = {}  # uuid -> [uuid, parent, name, kind, category, start, end, status]
        for ev in self.events:
            uuid = ev.uuid
            if ev.kind != "scope":
                ts = ev.timestamp_ns
                rows[uuid] = [uuid, ev.parent_uuid or "", ev.name, "mark", ev.category or "",
                              ts, ts, ""]
                continue
            row = rows.get(uuid)
            if row is None:
                row = rows[uuid] = [uuid, ev.parent_uuid or "", ev.name, "scope", ev.category,
                                    -1, -1, ""]
            if ev.scope_category == "start":
                row[5] = ev.timestamp_ns
            else:
                row[6] = ev.timestamp_ns
                meta = ev.metadata
                status = meta.get("otel.status_code") if isinstance(meta, dict) else None
                row[7] = status if status in ("OK", "ERROR") else ""

        depth: dict = {}
        for uuid in rows:
            chain = []
            while uuid not in depth:
                chain.append(uuid)
                parent = rows.get(rows[uuid][1])
                if parent is None or parent[3] != "scope":
                    depth[uuid] = 0
                    chain.pop()
                    break
                uuid = parent[0]
            d = depth[uuid]
            for u in reversed(chain):
                d += 1
                depth[u] = d

        return rows_to_numpy([(*row, depth[row[0]]) for row in rows.values()])

    def __repr__(self):
        return f"<InMemoryRecorder {self.name!r} events={len(self._events)}>"


def _after_fork_in_child():
    # The delivery thread may have held a recorder's lock when the process forked.
    for recorder in list(_live):
        recorder._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
