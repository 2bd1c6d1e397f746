"""ATIF (Agent Trajectory Interchange Format) trajectories of the runs nemoflow records.

``AtifExporter`` keeps the scope events it receives and turns them into one ``ATIF-v1.7``
trajectory on demand (NeMo Flow 0.2's API)::

    exporter = nemoflow.exporters.AtifExporter("run-42", "planner", "1.0")
    exporter.register("atif")
    run_agent()
    trajectory = exporter.export()        # a dict; export_json() gives the compact text

``AtifFileExporter`` writes one trajectory file per top-level agent scope as it ends.
``nemoflow convert TRACE.jsonl --to atif`` gives the same trajectory from a recorded file: all
three use ``events_to_trajectory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import threading
from typing import Any

from .. import subscribers as _subscribers
from ._atif_convert import (
    ATIF_SCHEMA_VERSION,
    agent_info,
    dumps,
    events_to_trajectory,
    sort_keys,
)
from ._base import Exporter
from ._files import (
    DIR_MODE,
    FILE_MODE,
    UnsafeFileError,
    check_mode,
    create,
    make_dirs,
    refuse_unsafe,
)

__all__ = ["ATIF_SCHEMA_VERSION", "AtifExporter", "AtifFileExporter", "events_to_trajectory"]


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _agent(agent_name, agent_version, model_name, tool_definitions, extra) -> dict:
    _check_str(agent_name, "agent_name")
    _check_str(agent_version, "agent_version")
    if model_name is not None:
        _check_str(model_name, "model_name")
    if tool_definitions is not None and not (
            isinstance(tool_definitions, list | tuple)
            and all(isinstance(t, dict) for t in tool_definitions)):
        raise TypeError("tool_definitions must be a list of dicts")
    # a JSON round trip: what is not JSON fails here, not at export time
    from .._backend import core as _core
    _core.encode({"t": list(tool_definitions or ()), "e": extra})
    return agent_info(agent_name, agent_version, model_name,
                      None if tool_definitions is None else list(tool_definitions), extra)


def _flush_blocking(method: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _subscribers.flush()
        return
    raise RuntimeError(f"AtifExporter.{method}() would block the running event loop; use "
                       "await exporter.export_async()")


class AtifExporter(Exporter):
    """Collects the events of a run and exports them as one ATIF trajectory (a dict).

    Marks are not collected. ``export()`` waits until everything emitted before it was
    delivered and does not clear; ``clear()`` starts a new trajectory.
    """

    default_name = "atif"

    def __init__(self, session_id: str, agent_name: str, agent_version: str, *,
                 model_name: str | None = None, tool_definitions: list | None = None,
                 extra: Any = None):
        super().__init__()
        self.session_id = _check_str(session_id, "session_id")
        self._agent = _agent(agent_name, agent_version, model_name, tool_definitions, extra)
        self._lock = threading.Lock()
        self._events: list = []

    def export(self, events=None):
        """The trajectory as a dict (keys sorted); waits for delivery first.

        Inside a running event loop's thread use ``await export_async()``. (Called with a
        batch, this is the pipeline delivering events.)
        """
        if events is not None:
            scopes = [ev for ev in events if ev.kind == "scope"]
            with self._lock:
                self._events.extend(scopes)
            return None
        _flush_blocking("export")
        return sort_keys(self._trajectory())

    async def export_async(self) -> dict:
        """``export()`` for coroutines: waits for delivery without blocking the event loop."""
        await _subscribers.flush_async()
        return sort_keys(self._trajectory())

    def export_json(self) -> str:
        """The trajectory as compact JSON in the schema's field order; waits for delivery."""
        _flush_blocking("export_json")
        return dumps(self._trajectory())

    def clear(self) -> None:
        """Forget the events collected so far."""
        with self._lock:
            self._events.clear()

    def stats(self) -> dict:
        """Scope events held for the next export."""
        with self._lock:
            held = len(self._events)
        return {**super().stats(), "events": held}

    def _trajectory(self) -> dict:
        with self._lock:
            events = list(self._events)
        return events_to_trajectory([ev.to_dict() for ev in events], self.session_id,
                                    self._agent)


# -- file mode ---------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_META = re.compile(r"^metadata\.([A-Za-z0-9_.\-]+?)(?::-(.*))?$")
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def _safe_name(name: str, what: str) -> str:
    if (not name or name in (".", "..") or ".." in name or _UNSAFE_CHARS.search(name)
            or ":" in name or name != name.strip()):
        raise ValueError(f"nemoflow: {what} {name!r} is not a safe file name (no path "
                         "separators, '..', ':', control characters or surrounding spaces)")
    return name


def _check_template(template: str) -> str:
    _check_str(template, "filename")
    literal = _PLACEHOLDER.sub("x", template)
    if "{" in literal or "}" in literal:
        raise ValueError(f"nemoflow: unbalanced braces in ATIF file name template {template!r}")
    _safe_name(literal, "ATIF file name template")
    for field in _PLACEHOLDER.findall(template):
        if field == "session_id":
            continue
        found = _META.match(field)
        if found is None:
            raise ValueError(f"nemoflow: unknown placeholder {{{field}}} in ATIF file name "
                             "template (use {session_id} or {metadata.<path>:-fallback})")
        if found.group(2) is not None:
            _safe_name(found.group(2), "fallback")
    return template


def render_filename(template: str, session_id: str, metadata: Any) -> str:
    """The file name for one trajectory; ``ValueError`` when a substitution is unsafe."""

    def value(match) -> str:
        field = match.group(1)
        if field == "session_id":
            return _safe_name(session_id, "session id")
        found = _META.match(field)
        assert found is not None
        current = metadata
        for key in found.group(1).split("."):
            current = current.get(key) if isinstance(current, dict) else None
        if isinstance(current, bool) or not isinstance(current, str | int):
            if found.group(2) is None:
                raise ValueError(f"nemoflow: metadata.{found.group(1)} is missing for the "
                                 "ATIF file name and the template gives no fallback")
            return found.group(2)
        return _safe_name(str(current), f"metadata.{found.group(1)} value")

    return _safe_name(_PLACEHOLDER.sub(value, template), "ATIF file name")


def write_atomically(directory: str, name: str, text: str, mode: int) -> str:
    """Write ``text`` to ``directory/name`` through a temporary file and ``os.replace``."""
    path = os.path.join(directory, name)
    with contextlib.suppress(FileNotFoundError):
        refuse_unsafe(path, os.lstat(path))
    for attempt in range(100):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = create(tmp, mode, append=False)
        except FileExistsError:
            continue
        break
    else:
        raise OSError(errno.EEXIST, "nemoflow: no free temporary file name", path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            refuse_unsafe(path, os.lstat(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _is_trajectory_scope(start: dict) -> bool:
    meta = start.get("metadata")
    role = meta.get("nemo_relay_scope_role") if isinstance(meta, dict) else None
    return start.get("category") == "agent" or role == "turn"


def _inside(raw: dict, agent: str, parents: dict) -> bool:
    current = raw["uuid"] if raw["kind"] == "scope" else raw.get("parent_uuid")
    while current is not None:
        if current == agent:
            return True
        current = parents.get(current)
    return False


class AtifFileExporter(Exporter):
    """Writes one pretty-printed trajectory file per top-level agent scope (an agent scope in
    no other, or a top-level scope with metadata ``nemo_relay_scope_role="turn"``) once the
    top-level scope holding it has ended.

    The file name comes from ``filename``: ``{session_id}`` (the scope's metadata
    ``session_id``, else its uuid) and ``{metadata.<path>:-fallback}`` (the scope's start
    metadata). A substitution holding a path separator, ``..`` or a control character is
    refused: the trajectory is not written and the failure is counted in
    ``nemoflow.diagnostics()``. Files are replaced atomically, created ``0o600``; a symbolic
    link at the destination is refused.
    """

    default_name = "atif-files"

    def __init__(self, output_directory: str, *, agent_name: str = "nemoflow",
                 agent_version: str = "0", filename: str = "nemo-relay-atif-{session_id}.json",
                 model_name: str | None = None, tool_definitions: list | None = None,
                 extra: Any = None, file_mode: int = FILE_MODE, dir_mode: int = DIR_MODE):
        super().__init__()
        self.output_directory = os.fspath(output_directory)
        self.filename = _check_template(filename)
        self._agent = _agent(agent_name, agent_version, model_name, tool_definitions, extra)
        self._file_mode = check_mode(file_mode, "file_mode")
        self._dir_mode = check_mode(dir_mode, "dir_mode")
        self._tops: dict = {}     # open scope uuid → uuid of its top-level scope
        self._groups: dict = {}   # top-level scope uuid → its events (dicts), until it ends
        self._written: list = []
        self._lock = threading.Lock()

    @property
    def paths(self) -> list:
        """The files written so far, in order."""
        with self._lock:
            return list(self._written)

    def export(self, events) -> None:
        """Take a batch of events (called by the delivery thread)."""
        tops = self._tops
        for ev in events:
            raw = ev.to_dict()
            uuid = raw["uuid"]
            if raw["kind"] == "mark":
                top = tops.get(raw.get("parent_uuid"))
                if top is not None:
                    self._groups[top].append(raw)
                continue
            if raw.get("scope_category") == "start":
                top = tops.get(raw.get("parent_uuid"), uuid)
                tops[uuid] = top
                self._groups.setdefault(top, []).append(raw)
                continue
            top = tops.get(uuid)
            if top is None:  # its start came before this exporter was registered
                continue
            self._groups[top].append(raw)
            if top == uuid:
                group = self._groups.pop(top)
                for member in group:
                    tops.pop(member["uuid"], None)
                self._write(group)

    def _write(self, group: list) -> None:
        """Write the trajectories of one finished top-level scope: itself when it is an agent
        or a turn, else each outermost agent scope inside it."""
        if _is_trajectory_scope(group[0]):
            self._write_one(group)
            return
        parents = {raw["uuid"]: raw.get("parent_uuid") for raw in group
                   if raw["kind"] == "scope" and raw.get("scope_category") == "start"}
        outermost = {raw["uuid"] for raw in group
                     if raw["kind"] == "scope" and raw.get("scope_category") == "start"
                     and raw.get("category") == "agent"}
        for uuid in list(outermost):
            parent = parents.get(uuid)
            while parent in parents:
                if parent in outermost:
                    outermost.discard(uuid)
                    break
                parent = parents[parent]
        for agent in sorted(outermost, key=[r["uuid"] for r in group].index):
            self._write_one([raw for raw in group if _inside(raw, agent, parents)])

    def _write_one(self, group: list) -> None:
        start = group[0]
        meta = start.get("metadata")
        sid = meta.get("session_id") if isinstance(meta, dict) else None
        session_id = sid if isinstance(sid, str) and sid else start["uuid"]
        try:
            trajectory = events_to_trajectory(group, session_id, self._agent)
            extra = trajectory.get("extra") or {}
            identity = {"session_id": session_id}
            for key in ("session_instance_id", "user_id"):
                value = meta.get(key) if isinstance(meta, dict) else None
                identity[key] = value if isinstance(value, str) else None
            extra.update({"observed_events": group, "nemo_relay": identity})
            trajectory["extra"] = sort_keys(extra)
            name = render_filename(self.filename, session_id, meta)
            make_dirs(self.output_directory, self._dir_mode)
            path = write_atomically(self.output_directory, name,
                                    dumps(trajectory, indent=True) + "\n", self._file_mode)
        except Exception as exc:  # a bad payload or a full disk must not stop the others
            self._report(f"atif-{type(exc).__name__}", f"ATIF trajectory not written: {exc}")
            return
        with self._lock:
            self._written.append(path)


__all__ += ["UnsafeFileError", "render_filename"]
