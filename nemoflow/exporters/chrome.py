"""Chrome trace JSON: open the file in ui.perfetto.dev or chrome://tracing.

Every scope becomes a complete event (``ph: "X"``), every mark an instant (``ph: "i"``), and
``ph: "M"`` metadata events name the process and the tracks.

Tracks come from the trace tree, not from threads. Asyncio tasks interleave on one thread, so
their scopes overlap without nesting, and a viewer can only draw properly nested slices on one
track. A scope therefore goes on its parent's track when it fits there (it lies within the
parent and overlaps none of the siblings already on that track), else on the first of the
parent's extra tracks where it overlaps no sibling, else on a new track named
``"<parent name> #2"``, ``#3`` … placed right below its parent's track. Siblings laid out
together are placed in order of start time, which needs the fewest tracks. Scopes whose parent
is not in the file (top-level scopes, whose parent is the never-emitted implicit root) go on
tracks named ``"trace <end of root uuid>"``: separate requests, and threads with a root of their
own, get separate tracks; threads working under one shared scope get separate tracks wherever
their scopes overlap.

Times: ``ts`` and ``dur`` are microseconds as floats with nanosecond precision, counted from
``otherData.time_origin`` (the earliest timestamp in the file, also given as epoch nanoseconds
in ``otherData.time_origin_ns``). Counting from the epoch would need more digits than a double
holds and lose the nanoseconds.

A finished subtree is laid out at the next ``force_flush``, not the moment its top scope ends:
a parent whose start event ran on another thread may be delivered after its child's end, and
waiting lets it still adopt the child. Scopes still open at ``force_flush`` are written as
slices ending at the flush time (or at their latest descendant) with ``args.open: true``; they
are laid out again, with their real end, once they finish. A mark goes on its parent scope's
track; one whose time lies outside its parent's span (only possible with explicit timestamps or
a handle to a closed scope) is written process-scoped (``s: "p"``) so it is not drawn inside an
unrelated slice.

The core stamps an automatic end at least 1 µs after its start, so with the compiled core a
scope that took less can seem to end after its parent, or after its next sibling started. Such
a scope (its duration is exactly that 1 µs) is drawn cut at its parent's end or its sibling's
start rather than given a track of its own.

The whole file is rewritten (temporary file, then ``os.replace``) by ``force_flush``,
``shutdown``, deregistering the last name and at interpreter exit, so it is complete and valid
whenever it is read. Everything is kept in memory for that (the ATOF JSONL exporter is the one
that writes as it goes). In a forked child the exporter starts empty and writes to the path
with the child's pid before the extension (``trace.json`` → ``trace.<pid>.json``).

The file policy is the ATOF exporter's: the file is created ``file_mode`` (``0o600``) and
missing directories ``dir_mode`` (``0o700``); a symbolic link or anything but a regular file at
the path is refused (``UnsafeFileError``) at construction and at every write. An existing
regular file at the path is replaced by the first write: that is what this exporter is for.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import math
import os
import sys
import threading
import weakref

import orjson

from .. import _exit
from .._backend import core as _core
from ._base import Exporter
from ._files import DIR_MODE, FILE_MODE, check_mode, create, make_dirs, refuse_unsafe

__all__ = ["ChromeTraceExporter", "validate_chrome_trace"]

_live: weakref.WeakSet = weakref.WeakSet()  # exporters to write at exit / reset in a forked child


class _Node:
    """A scope not laid out yet: open, or finished inside a subtree that is not."""

    __slots__ = ("uuid", "parent", "name", "cat", "start", "end", "input", "meta", "attrs",
                 "profile", "body", "children", "marks", "seq", "span_end")

    def __init__(self, uuid, parent, name, cat, start, input, meta, attrs, profile, seq):
        self.uuid = uuid
        self.parent = parent
        self.name = name
        self.cat = cat
        self.start = start
        self.end = None
        self.input = input
        self.meta = meta
        self.attrs = attrs
        self.profile = profile
        self.body = None  # the event's JSON without ph/ts/dur/pid/tid, once it has ended
        self.children = []
        self.marks = []
        self.seq = seq
        self.span_end = None  # end used for the layout (the flush time while open)

    def finish(self, ts, output, meta, profile):
        self.end = max(ts, self.start)  # a negative duration cannot be drawn
        self.body = _body(self.name, self.cat, self.uuid, self.parent, self.input, output, meta,
                          self.attrs, profile if profile is not None else self.profile, False)
        self.input = self.meta = self.attrs = self.profile = None

    def open_body(self):
        return _body(self.name, self.cat, self.uuid, self.parent, self.input, None, self.meta,
                     self.attrs, self.profile, True)


class _Mark:
    __slots__ = ("parent", "ts", "body")

    def __init__(self, parent, ts, body):
        self.parent = parent
        self.ts = ts
        self.body = body


class _Placed:
    """A scope (or a trace root) that has slices laid out under it.

    ``kids`` maps a track id to the sorted, mutually non-overlapping spans of this scope's
    children on that track; ``extra`` lists the tracks made for children that did not fit.
    Both are made when first needed: most scopes are leaves.
    """

    __slots__ = ("tid", "start", "end", "name", "kids", "extra")

    def __init__(self, tid, start, end, name):
        self.tid = tid
        self.start = start
        self.end = end
        self.name = name
        self.kids = None
        self.extra = None


class _Track:
    __slots__ = ("tid", "name", "parent_tid")

    def __init__(self, tid, name, parent_tid):
        self.tid = tid
        self.name = name
        self.parent_tid = parent_tid


def _conflict(s1, e1, s2, e2) -> bool:
    # Spans are half-open; a zero-length span conflicts with a span that would draw it inside.
    if s1 == e1:
        return s2 < e2 and s2 <= s1 < e2
    if s2 == e2:
        return s1 <= s2 < e1
    return s1 < e2 and s2 < e1


def _fits(spans, s, e) -> bool:
    if spans is None:
        return True
    starts, ends = spans
    i = bisect.bisect_right(starts, s)
    if i > 0 and _conflict(starts[i - 1], ends[i - 1], s, e):
        return False
    return not (i < len(starts) and _conflict(starts[i], ends[i], s, e))


def _span_end(node):
    return node.end if node.end is not None else node.span_end


# The core stamps an automatic end at least 1 µs after its start (and a parent's end no earlier
# than its children's), so scopes that took less can seem to outlast their parent, or reach
# past their next sibling's start, by up to that microsecond.
_MIN_AUTO_DURATION = 1000


def _drawn_ends(siblings, bound):
    """``siblings`` in order of start, each with the end to draw: a scope that reaches past its
    parent's end (``bound``) or its next sibling's start by no more than the automatic minimum
    is cut there, instead of needing a track of its own."""
    siblings = sorted(siblings, key=lambda c: (c.start, -_span_end(c), c.seq))
    out = []
    for i, node in enumerate(siblings):
        end = _span_end(node)
        if node.end is not None:
            limit = bound if bound is not None and bound > node.start else None
            if i + 1 < len(siblings):
                following = siblings[i + 1].start
                if following > node.start and (limit is None or following < limit):
                    limit = following
            if limit is not None and limit < end <= limit + _MIN_AUTO_DURATION:
                end = limit
        out.append((node, end))
    return out


# Laid-out events are kept as small tuples of ints and JSON bytes, not dicts: nothing for the
# garbage collector to walk, and a rewrite only formats the times.

def _body(name, cat, uuid, parent, input, output, meta, attrs, profile, is_open):
    args = {"uuid": uuid, "parent_uuid": parent, "input": input, "output": output,
            "metadata": meta, "attributes": attrs}
    if profile is not None:
        args["category_profile"] = profile
    if is_open:
        args["open"] = True
    return orjson.dumps({"name": name, "cat": cat, "args": args})[1:]


def _mark_body(ev):
    return orjson.dumps({"name": ev.name, "cat": ev.category or "mark",
                         "args": {"uuid": ev.uuid, "parent_uuid": ev.parent_uuid,
                                  "data": ev.data, "metadata": ev.metadata}})[1:]


def _us(ns) -> bytes:
    return repr(ns / 1000).encode()


def _render(record, origin, pid) -> bytes:
    if record[0] == "X":
        _, start, end, tid, body = record
        return b'{"ph":"X","ts":%b,"dur":%b,"pid":%d,"tid":%d,%b' % (
            _us(start - origin), _us(end - start), pid, tid, body)
    _, ts, scope, tid, body = record
    return b'{"ph":"i","s":"%b","ts":%b,"pid":%d,"tid":%d,%b' % (
        scope, _us(ts - origin), pid, tid, body)


def _default_process_name() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return f"nemoflow {prog}" if prog and prog != "-c" else "nemoflow"


class ChromeTraceExporter(Exporter):
    """Writes a Chrome trace JSON file (Perfetto, chrome://tracing) of every scope and mark."""

    default_name = "chrome"

    def __init__(self, path, *, process_name: str | None = None, file_mode: int = FILE_MODE,
                 dir_mode: int = DIR_MODE):
        if process_name is not None and not isinstance(process_name, str):
            raise TypeError(f"process_name must be str, not {type(process_name).__name__}")
        self._file_mode = check_mode(file_mode, "file_mode")
        check_mode(dir_mode, "dir_mode")
        self._path = os.path.abspath(os.fspath(path))
        self._check_path()
        make_dirs(os.path.dirname(self._path), dir_mode)
        self._process_name = process_name or _default_process_name()
        super().__init__()
        self._closing = False  # shutdown writes the file once, after the last name is gone
        self._new_state()
        _live.add(self)

    def _new_state(self):
        # ``_lock`` guards the trace state (the delivery thread and user threads both touch
        # it); ``_write_lock`` keeps snapshot-then-write in order without holding ``_lock``
        # while the file is formatted and written.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._nodes: dict = {}  # uuid -> _Node not laid out yet
        self._tops: dict = {}  # uuid -> _Node whose parent is not a node (ordered by arrival)
        self._tops_by_parent: dict = {}  # parent uuid -> {uuid of top: None} (ordered set)
        self._marks_by_parent: dict = {}  # parent uuid -> [_Mark] whose parent was unknown
        self._early_ends: dict = {}  # uuid -> end fields, for an end delivered before its start
        self._placed: dict = {}  # uuid -> _Placed, for every laid-out scope
        self._groups: dict = {}  # parent uuid not in the file -> _Placed (a trace root)
        self._tracks: list = []
        self._records: list = []  # laid-out slices and instants, times in ns
        self._n_slices = 0
        self._n_instants = 0
        self._min_ts = None
        self._seq = 0
        self._n_events = 0
        self._bad_events = 0
        self._writes = 0
        self._bytes = 0
        self._errors = 0
        self._undo = None  # a list while laying out open scopes provisionally

    # --- registration -------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The JSON file written by ``force_flush`` and ``shutdown``."""
        return self._path

    def deregister(self, name: str) -> bool:
        """Stop recording under ``name``; the last name out writes the file."""
        return super().deregister(name)

    def _last_deregistered(self) -> None:
        if self._closing:
            return
        try:
            self._write()
        except OSError as exc:  # counted in stats(); deregistering itself succeeded
            _core._warn_quietly(f"nemoflow: could not write the Chrome trace {self._path}: "
                                f"{exc}")

    def _flush(self, timeout: float | None) -> None:
        """Write the complete trace of everything emitted so far; raises OSError if it fails."""
        self._write()

    def _begin_close(self, timeout: float | None) -> None:
        self._closing = True

    def _close(self, timeout: float | None) -> None:
        try:
            self._write()
        finally:
            _live.discard(self)

    def stats(self) -> dict:
        """Events received, slices and instants laid out, scopes waiting, tracks, writes."""
        with self._lock:
            return {"events": self._n_events, "scopes": self._n_slices,
                    "marks": self._n_instants, "pending_scopes": len(self._nodes),
                    "tracks": len(self._tracks), "writes": self._writes, "bytes": self._bytes,
                    "errors": self._errors, "bad_events": self._bad_events,
                    "unmatched_ends": len(self._early_ends)}

    def __repr__(self):
        return f"<ChromeTraceExporter {self._path}>"

    # --- the delivery thread's side ---------------------------------------------------------

    def export(self, events) -> None:
        """Take a batch of events from the pipeline (called by the delivery thread)."""
        failure = None
        with self._lock:
            if self._closed:
                return
            for ev in events:
                try:
                    self._take(ev)
                except Exception as exc:  # one bad event must not cost the rest of the batch
                    self._bad_events += 1
                    if failure is None:
                        failure = exc
        if failure is not None:
            raise failure  # the core counts it and reports it once

    def _take(self, ev):
        self._n_events += 1
        ts = ev.timestamp_ns
        if self._min_ts is None or ts < self._min_ts:
            self._min_ts = ts
        if ev.kind != "scope":
            self._take_mark(_Mark(ev.parent_uuid, ts, _mark_body(ev)))
        elif ev.scope_category == "start":
            self._take_start(ev, ts)
        else:
            self._take_end(ev.uuid, ts, ev.data, ev.metadata, ev.category_profile)

    def _take_start(self, ev, ts):
        uuid = ev.uuid
        if uuid in self._nodes or uuid in self._placed:
            return
        self._seq += 1
        node = _Node(uuid, ev.parent_uuid, ev.name, ev.category, ts, ev.data, ev.metadata,
                     ev.attributes, ev.category_profile, self._seq)
        self._nodes[uuid] = node
        parent = self._nodes.get(node.parent)
        if parent is not None:
            parent.children.append(node)
        else:
            self._tops[uuid] = node
            self._tops_by_parent.setdefault(node.parent, {})[uuid] = None
        # Children and marks delivered before this start (they ran on another thread).
        for child_uuid in self._tops_by_parent.pop(uuid, ()):
            node.children.append(self._tops.pop(child_uuid))
        node.marks.extend(self._marks_by_parent.pop(uuid, ()))
        early = self._early_ends.pop(uuid, None)
        if early is not None:
            node.finish(*early)

    def _take_end(self, uuid, ts, output, meta, profile):
        node = self._nodes.get(uuid)
        if node is None:
            if uuid not in self._placed:
                self._early_ends[uuid] = (ts, output, meta, profile)
        elif node.end is None:
            node.finish(ts, output, meta, profile)

    def _take_mark(self, mark):
        parent = self._nodes.get(mark.parent)
        if parent is not None:
            parent.marks.append(mark)
            return
        placed = self._placed.get(mark.parent)
        if placed is not None:
            self._records.append(self._instant(mark, placed))
            self._n_instants += 1
        else:
            self._marks_by_parent.setdefault(mark.parent, []).append(mark)

    # --- layout -----------------------------------------------------------------------------

    def _new_track(self, name, parent_tid):
        tid = len(self._tracks) + 1
        self._tracks.append(_Track(tid, name, parent_tid))
        if self._undo is not None:
            self._undo.append(self._tracks.pop)
        return tid

    def _add_extra(self, owner, tid):
        if owner.extra is None:
            owner.extra = []
        owner.extra.append(tid)
        if self._undo is not None:
            self._undo.append(owner.extra.pop)

    def _group(self, parent_uuid):
        group = self._groups.get(parent_uuid)
        if group is None:
            label = "trace" if parent_uuid is None else f"trace {parent_uuid[-12:]}"
            group = self._groups[parent_uuid] = _Placed(None, None, None, label)
            if self._undo is not None:
                self._undo.append(lambda: self._groups.pop(parent_uuid))
        return group

    def _group_track(self, group):
        if not group.extra:
            self._add_extra(group, self._new_track(group.name, None))
        return group.extra[0]

    def _choose_track(self, owner, s, e):
        """The track for a child spanning [s, e) of ``owner``, recorded among its children."""
        kids = owner.kids
        if kids is None:
            kids = owner.kids = {}
        tid = None
        if (owner.tid is not None and owner.start <= s and e <= owner.end
                and _fits(kids.get(owner.tid), s, e)):
            tid = owner.tid
        else:
            for t in owner.extra or ():
                if _fits(kids.get(t), s, e):
                    tid = t
                    break
        if tid is None:
            n = len(owner.extra or ())
            if owner.tid is None:  # a trace root: its tracks are named after the trace
                name = owner.name if n == 0 else f"{owner.name} #{n + 1}"
            else:
                name = f"{owner.name} #{n + 2}"
            tid = self._new_track(name, owner.tid)
            self._add_extra(owner, tid)
        spans = kids.get(tid)
        if spans is None:
            spans = kids[tid] = ([], [])
            if self._undo is not None:
                self._undo.append(lambda: kids.pop(tid))
        starts, ends = spans
        i = bisect.bisect_right(starts, s)
        starts.insert(i, s)
        ends.insert(i, e)
        if self._undo is not None:
            self._undo.append(lambda: (starts.pop(i), ends.pop(i)))
        return tid

    def _owner_of(self, parent_uuid):
        placed = self._placed.get(parent_uuid)
        return placed if placed is not None else self._group(parent_uuid)

    def _instant(self, mark, owner):
        if owner.tid is None:
            return ("i", mark.ts, b"t", self._group_track(owner), mark.body)
        inside = owner.start <= mark.ts <= owner.end
        return ("i", mark.ts, b"t" if inside else b"p", owner.tid, mark.body)

    def _lay_out(self, siblings, owner, out, provisional):
        """Place ``siblings`` (children of ``owner``) and their subtrees, appending their
        records to ``out``. Committing, open scopes are left for later (they become tops of
        their own); provisionally, they end at their ``span_end``."""
        stack = []
        for node, end in reversed(_drawn_ends(siblings, owner.end)):
            stack.append((node, end, owner))
        while stack:
            node, end, owner = stack.pop()
            tid = self._choose_track(owner, node.start, end)
            placed = _Placed(tid, node.start, end, node.name)
            self._placed[node.uuid] = placed
            if self._undo is not None:
                self._undo.append(lambda u=node.uuid: self._placed.pop(u))
            body = node.body if node.body is not None else node.open_body()
            out.append(("X", node.start, end, tid, body))
            for mark in node.marks:
                out.append(self._instant(mark, placed))
            children = node.children
            if not provisional:
                del self._nodes[node.uuid]
                self._n_slices += 1
                self._n_instants += len(node.marks)
                waiting = [c for c in children if c.end is None]
                if waiting:
                    children = [c for c in children if c.end is not None]
                    for child in waiting:
                        self._tops[child.uuid] = child
                        self._tops_by_parent.setdefault(node.uuid, {})[child.uuid] = None
                node.children = node.marks = None  # laid out: only the records stay
            for child, child_end in reversed(_drawn_ends(children, end)):
                stack.append((child, child_end, placed))

    def _lay_out_tops(self, tops, out, provisional):
        by_parent: dict = {}
        for node in tops:
            by_parent.setdefault(node.parent, []).append(node)
        for parent_uuid, siblings in by_parent.items():
            self._lay_out(siblings, self._owner_of(parent_uuid), out, provisional)

    def _commit(self):
        """Lay out, for good, every finished subtree whose parent is not waiting for its end."""
        ready = [n for n in self._tops.values() if n.end is not None]
        for node in ready:
            del self._tops[node.uuid]
            waiting = self._tops_by_parent.get(node.parent)
            if waiting is not None:
                waiting.pop(node.uuid, None)
                if not waiting:
                    del self._tops_by_parent[node.parent]
        self._lay_out_tops(ready, self._records, False)
        for parent_uuid in list(self._marks_by_parent):
            if parent_uuid in self._nodes:
                continue
            owner = self._owner_of(parent_uuid)
            for mark in self._marks_by_parent.pop(parent_uuid):
                self._records.append(self._instant(mark, owner))
                self._n_instants += 1

    def _provisional(self, now):
        """Records of the still-open subtrees, laid out as if they ended ``now``, the tracks
        with them, and how many scopes are open; the layout is undone afterwards so that
        their real end can be placed later."""
        tops = list(self._tops.values())
        n_open = 0
        for top in tops:  # span ends, children first: a parent reaches past its children
            order, stack = [], [top]
            while stack:
                node = stack.pop()
                order.append(node)
                stack.extend(node.children)
            for node in reversed(order):
                if node.end is None:
                    n_open += 1
                    end = max(now, node.start)
                    for child in node.children:
                        end = max(end, _span_end(child))
                    for mark in node.marks:
                        end = max(end, mark.ts)
                    node.span_end = end
        out = []
        self._undo = []
        try:
            self._lay_out_tops(tops, out, True)
            tracks = list(self._tracks)
        finally:
            undo, self._undo = self._undo, None
            for step in reversed(undo):
                step()
        return out, tracks, n_open

    # --- writing ----------------------------------------------------------------------------

    def _snapshot(self):
        with self._lock:
            self._commit()
            now = self._now_ns()
            extra, tracks, n_open = self._provisional(now)
            records = self._records + extra
            origin = self._min_ts if self._min_ts is not None else now
        # Formatted outside the lock: the delivery thread goes on meanwhile.
        pid = os.getpid()
        parts = self._metadata_events(pid, tracks)
        parts += [_render(record, origin, pid) for record in records]
        other = {"exporter": "nemoflow", "format": "ATOF 0.1 as Chrome trace",
                 "time_origin": _core.format_timestamp(origin), "time_origin_ns": origin,
                 "time_unit": "us since time_origin", "open_scopes": n_open}
        return b"".join((b'{"traceEvents":[', b",".join(parts),
                         b'],"displayTimeUnit":"ms","otherData":', orjson.dumps(other), b"}"))

    def _now_ns(self):
        # Where open scopes end in a snapshot.
        return _core.now_ns()

    def _metadata_events(self, pid, tracks):
        events = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                   "args": {"name": self._process_name}}]
        # Extra tracks sort right below the track of the scope they were made for.
        below: dict = {}
        for track in tracks:
            below.setdefault(track.parent_tid, []).append(track)
        order, stack = [], list(reversed(below.get(None, ())))
        while stack:
            track = stack.pop()
            order.append(track)
            stack.extend(reversed(below.get(track.tid, ())))
        for index, track in enumerate(order):
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": track.tid,
                           "args": {"name": track.name}})
            events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": track.tid,
                           "args": {"sort_index": index}})
        return [orjson.dumps(e) for e in events]

    def _write(self):
        with self._write_lock:
            if self._closed:
                return
            data = self._snapshot()
            tmp = None
            try:
                fd, tmp = self._temporary()
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                self._check_path()
                os.replace(tmp, self._path)
                tmp = None
            except OSError:
                with self._lock:
                    self._errors += 1
                raise
            finally:
                if tmp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
            with self._lock:
                self._writes += 1
                self._bytes = len(data)

    def _check_path(self):
        try:
            st = os.lstat(self._path)
        except FileNotFoundError:
            return
        refuse_unsafe(self._path, st)

    def _temporary(self):
        # next to the file, so that os.replace is atomic; created, never opened if it exists
        directory, name = os.path.split(self._path)
        while True:
            tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
            try:
                return create(tmp, self._file_mode, append=False), tmp
            except FileExistsError:
                continue

    def _forked(self):
        stem, ext = os.path.splitext(self._path)
        self._path = f"{stem}.{os.getpid()}{ext}"
        self._new_state()


# --------------------------------------------------------------------------------------------
# Process lifecycle: the file is written at exit; a forked child starts its own.

def _write_all_at_exit():
    _core._exit_begin()  # the exit timeout covers this hook and the core's
    for exporter in list(_live):
        try:
            exporter.shutdown()
        except Exception as exc:  # exit must go on; say what was lost
            _core._warn_quietly(f"nemoflow: could not write the Chrome trace {exporter.path}: "
                                f"{exc}")


def _after_fork_in_child():
    for exporter in list(_live):
        exporter._forked()
    _exit.watch_children(_write_all_at_exit)


atexit.register(_write_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
_exit.watch_children(_write_all_at_exit)  # multiprocessing children skip atexit


# --------------------------------------------------------------------------------------------
# Structural validation (no viewer runs in CI).

_INSTANT_SCOPES = ("t", "p", "g")
_METADATA_NAMES = {"process_name", "process_labels", "process_sort_index", "thread_name",
                   "thread_sort_index"}


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _ns(value) -> int:
    # Compared in whole nanoseconds: microsecond floats with three decimals round-trip exactly.
    return round(value * 1000)


def validate_chrome_trace(obj) -> list:
    """Problems that would make a viewer misdraw or reject ``obj`` (a loaded trace); [] if none.

    Checks the keys each phase needs, that ``ts``/``dur`` are numbers >= 0, that the complete
    events of every (pid, tid) track nest properly (no partial overlap), and that an instant
    naming a parent slice (``args.parent_uuid``) lies within that slice, on its track; an
    instant with no parent slice in the trace is top level and may be anywhere.
    """
    problems = []
    if isinstance(obj, dict):
        events = obj.get("traceEvents")
        if not isinstance(events, list):
            return ["traceEvents is missing or not a list"]
        unit = obj.get("displayTimeUnit", "ms")
        if unit not in ("ms", "ns"):
            problems.append(f"displayTimeUnit must be 'ms' or 'ns', not {unit!r}")
    elif isinstance(obj, list):
        events = obj
    else:
        return [f"a trace is a JSON object or array, not {type(obj).__name__}"]

    tracks: dict = {}  # (pid, tid) -> [(start_ns, end_ns, index)]
    by_uuid: dict = {}  # slice uuid -> (track, start_ns, end_ns)
    instants = []
    for i, ev in enumerate(events):
        where = f"event {i}"
        if not isinstance(ev, dict):
            problems.append(f"{where}: not an object")
            continue
        ph = ev.get("ph")
        if not isinstance(ph, str) or not ph:
            problems.append(f"{where}: missing ph")
            continue
        where = f"event {i} (ph {ph!r}, name {ev.get('name')!r})"
        required = {"X": ("name", "ts", "dur", "pid", "tid"), "B": ("name", "ts", "pid", "tid"),
                    "E": ("ts", "pid", "tid"), "i": ("name", "ts", "pid"),
                    "I": ("name", "ts", "pid"), "M": ("name", "pid", "args"),
                    "C": ("name", "ts", "pid", "args")}.get(ph, ("ts",))
        missing = [k for k in required if k not in ev]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        bad = False
        for key in ("ts", "dur"):
            if key in ev and not (_is_number(ev[key]) and ev[key] >= 0):
                problems.append(f"{where}: {key} must be a number >= 0, not {ev[key]!r}")
                bad = True
        if "name" in required and not isinstance(ev["name"], str):
            problems.append(f"{where}: name must be a string")
        for key in ("pid", "tid"):
            if key in ev and (isinstance(ev[key], bool) or not isinstance(ev[key], (int, str))):
                problems.append(f"{where}: {key} must be an integer or a string")
                bad = True
        args = ev.get("args")
        if "args" in ev and not isinstance(args, dict):
            problems.append(f"{where}: args must be an object")
            args = None
        if bad:
            continue
        if ph == "X":
            start = _ns(ev["ts"])
            end = start + _ns(ev["dur"])
            track = (ev["pid"], ev["tid"])
            tracks.setdefault(track, []).append((start, end, i))
            uuid = args.get("uuid") if args else None
            if uuid is not None:
                if uuid in by_uuid:
                    problems.append(f"{where}: slice uuid {uuid} appears twice")
                by_uuid[uuid] = (track, start, end)
        elif ph in ("i", "I"):
            scope = ev.get("s", "t")
            if scope not in _INSTANT_SCOPES:
                problems.append(f"{where}: s must be one of t, p, g, not {scope!r}")
            elif scope == "t":
                if "tid" not in ev:
                    problems.append(f"{where}: missing tid (thread-scoped instant)")
                else:
                    instants.append((i, where, (ev["pid"], ev["tid"]), _ns(ev["ts"]), args))
        elif ph == "M":
            meta = ev["name"]
            if meta not in _METADATA_NAMES:
                problems.append(f"{where}: unknown metadata event")
            elif meta.startswith("thread") and "tid" not in ev:
                problems.append(f"{where}: missing tid")
            elif meta.endswith("_name") and not isinstance((args or {}).get("name"), str):
                problems.append(f"{where}: args.name must be a string")
            elif meta.endswith("sort_index") and not _is_number((args or {}).get("sort_index")):
                problems.append(f"{where}: args.sort_index must be a number")

    for (pid, tid), spans in tracks.items():
        spans.sort(key=lambda s: (s[0], -s[1], s[2]))
        open_spans: list = []
        for start, end, i in spans:
            while open_spans and open_spans[-1][1] <= start:
                open_spans.pop()
            if open_spans and end > open_spans[-1][1]:
                outer = open_spans[-1]
                problems.append(
                    f"track pid={pid} tid={tid}: event {i} [{start}, {end}] ns overlaps event "
                    f"{outer[2]} [{outer[0]}, {outer[1]}] ns without nesting in it")
            open_spans.append((start, end, i))

    for _i, where, track, ts, args in instants:
        parent = by_uuid.get(args.get("parent_uuid")) if args else None
        if parent is None:
            continue  # top level: no parent slice in this trace
        parent_track, start, end = parent
        if parent_track != track:
            problems.append(f"{where}: on track {track}, but its parent slice is on track "
                            f"{parent_track}")
        elif not start <= ts <= end:
            problems.append(f"{where}: at {ts} ns, outside its parent slice [{start}, {end}] ns")
    return problems
