"""Trace context across processes: ``PropagationContext``, W3C ``traceparent`` in and out.

A process that hands work to another (an HTTP call, a queue message, a subprocess) captures
where it is in its trace; the receiver builds a stack from that context, so its scopes are
parented to the sender's scope and, when the context is rooted, its spans join the sender's
trace. The stack's bottom frames stand for the sender's scopes: they are never emitted and
cannot be popped.

For exporters, ``imported_parent(parent_uuid)`` says whether a ``parent_uuid`` is the
imported parent of a stack made from a rooted context, and if so gives the remote trace id
and ``tracestate`` its spans belong to.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import re
import threading
import uuid as _uuid
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from ._backend import core as _core
from ._types import InvalidArgumentError, ScopeType
from .context import ScopeStack

__all__ = [
    "PropagationContext",
    "capture_propagation_context",
    "capture_propagation_context_with_root",
    "capture_rootless_propagation_context",
    "capture_traceparent",
    "continue_trace",
    "create_scope_stack_from_propagation",
    "imported_parent",
    "inject_traceparent",
    "stack_root_uuid",
]

_VERSION = 1
_ZERO8 = bytes(8)
_HEXDIGITS = frozenset("0123456789abcdefABCDEF-")
_URN = "urn:uuid:"


def _invalid(text: str) -> ValueError:
    return ValueError(f"invalid argument: {text}")


def _parse_uuid(value) -> _uuid.UUID:
    # The reference's messages (Rust ``uuid``): callers match on "invalid character".
    if isinstance(value, _uuid.UUID):
        return value
    if not isinstance(value, str):
        raise TypeError(f"a uuid must be a str, not {type(value).__name__}")
    text = value[len(_URN):] if value.startswith(_URN) else value
    for i, ch in enumerate(text):
        if ch not in _HEXDIGITS:
            raise ValueError("invalid character: expected an optional prefix of `urn:uuid:` "
                             f"followed by [0-9a-fA-F-], found `{ch}` at {i + 1}")
    if "-" in text:
        groups = text.split("-")
        if [len(g) for g in groups] != [8, 4, 4, 4, 12]:
            raise ValueError("invalid group length or count: expected 5 groups of "
                             "8-4-4-4-12 hex digits")
    elif len(text) != 32:
        raise ValueError(f"invalid length: expected length 32 for simple format, "
                         f"found {len(text)}")
    return _uuid.UUID(text)


def _check_usable(name: str, value: _uuid.UUID) -> None:
    raw = value.bytes
    if raw[8:] == _ZERO8:  # all zero included
        raise _invalid(f"propagation context {name} is not a usable Relay identifier")


class PropagationContext:
    """Where a trace crossed a boundary: the causing scope and, when known, the trace root."""

    __slots__ = ("_version", "_root", "_parent", "_tracestate")

    def __init__(self, parent_uuid: str, root_uuid: str | None = None, version: int = 1, *,
                 tracestate: str | None = None):
        parent = _parse_uuid(parent_uuid)
        root = None if root_uuid is None else _parse_uuid(root_uuid)
        if not isinstance(version, int):
            raise TypeError(f"version must be an int, not {type(version).__name__}")
        if version != _VERSION:
            raise _invalid(f"unsupported propagation context version {int(version)}; "
                           f"expected {_VERSION}")
        _check_usable("parent_uuid", parent)
        if root is not None:
            _check_usable("root_uuid", root)
        if tracestate is not None and not isinstance(tracestate, str):
            raise TypeError(f"tracestate must be a str or None, not {type(tracestate).__name__}")
        self._version = _VERSION
        self._parent = str(parent)
        self._root = None if root is None else str(root)
        self._tracestate = tracestate or None

    @property
    def version(self) -> int:
        return self._version

    @property
    def root_uuid(self) -> str | None:
        return self._root

    @property
    def parent_uuid(self) -> str:
        return self._parent

    @property
    def tracestate(self) -> str | None:
        """The W3C ``tracestate`` received with a ``traceparent`` (not part of the JSON form)."""
        return self._tracestate

    def to_json(self) -> str:
        """The compact JSON wire form: ``{"version":1,"root_uuid":…,"parent_uuid":…}``."""
        if self._root is None:
            return f'{{"version":{self._version},"parent_uuid":"{self._parent}"}}'
        return (f'{{"version":{self._version},"root_uuid":"{self._root}",'
                f'"parent_uuid":"{self._parent}"}}')

    @classmethod
    def from_json(cls, value: str) -> PropagationContext:
        """Parse and validate the JSON wire form (unknown keys are ignored)."""
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            raise TypeError(f"value must be a str, not {type(value).__name__}")
        try:
            obj = json.loads(value)
        except ValueError as exc:
            raise _invalid(f"invalid propagation context JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _invalid("invalid propagation context JSON: expected an object, "
                           f"found {type(obj).__name__}")
        for key in ("version", "parent_uuid"):
            if key not in obj:
                raise _invalid(f"invalid propagation context JSON: missing field `{key}`")
        version, parent, root = obj["version"], obj["parent_uuid"], obj.get("root_uuid")
        if type(version) is not int:
            raise _invalid("invalid propagation context JSON: invalid type for `version`, "
                           "expected an integer")
        for key, v in (("parent_uuid", parent), ("root_uuid", root)):
            if v is not None and not isinstance(v, str):
                raise _invalid(f"invalid propagation context JSON: invalid type for `{key}`, "
                               "expected a string")
        if parent is None:
            raise _invalid("invalid propagation context JSON: invalid type for `parent_uuid`, "
                           "expected a string")
        return cls(parent, root, version)

    def to_traceparent(self) -> str:
        """``00-<root>-<low 8 bytes of parent>-01``; a rootless context has no trace id."""
        if self._root is None:
            raise _invalid("rootless propagation context cannot be converted to traceparent")
        return _traceparent(self._root, self._parent)

    @classmethod
    def from_traceparent(cls, traceparent: str, tracestate=None) -> PropagationContext:
        """A rooted context from a W3C ``traceparent`` (and ``tracestate``, kept verbatim)."""
        trace_id, parent_id = _parse_traceparent(traceparent)
        if tracestate is not None and not isinstance(tracestate, str):
            if isinstance(tracestate, (list, tuple)) and all(
                    isinstance(v, str) for v in tracestate):
                tracestate = ",".join(tracestate)
            else:
                raise TypeError("tracestate must be a str, a list of str or None, "
                                f"not {type(tracestate).__name__}")
        root = _uuid.UUID(trace_id)
        parent = _uuid.UUID(trace_id[:16] + parent_id)
        return cls(str(parent), str(root), tracestate=tracestate)

    def __eq__(self, other):
        if not isinstance(other, PropagationContext):
            return NotImplemented
        return (self._version, self._root, self._parent, self._tracestate) == (
            other._version, other._root, other._parent, other._tracestate)

    def __hash__(self):
        return hash((self._version, self._root, self._parent, self._tracestate))

    def __repr__(self):
        return (f"PropagationContext(parent_uuid={self._parent!r}, "
                f"root_uuid={self._root!r}, version={self._version})")


def _hex(uuid_text: str) -> str:
    return uuid_text.replace("-", "")


def _traceparent(root_uuid: str, parent_uuid: str) -> str:
    return f"00-{_hex(root_uuid)}-{_hex(parent_uuid)[16:]}-01"


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _parse_traceparent(value) -> tuple[str, str]:
    # W3C Trace Context level 1: a version we do not know is read by its version-00 prefix.
    if not isinstance(value, str):
        raise TypeError(f"traceparent must be a str, not {type(value).__name__}")
    text = value.strip(" \t")
    m = _TRACEPARENT.match(text)
    if m is None:
        raise ValueError("invalid traceparent: expected "
                         "'<2 hex>-<32 hex>-<16 hex>-<2 hex>' in lowercase")
    version, trace_id, parent_id = m.group(1), m.group(2), m.group(3)
    if version == "ff":
        raise ValueError("invalid traceparent: version ff is forbidden")
    if version == "00":
        if len(text) != 55:
            raise ValueError("invalid traceparent: version 00 is exactly 55 characters")
    elif len(text) > 55 and text[55] != "-":
        raise ValueError("invalid traceparent: fields after the flags must start with '-'")
    if trace_id == "0" * 32:
        raise ValueError("invalid traceparent: the trace id is all zero")
    if parent_id == "0" * 16:
        raise ValueError("invalid traceparent: the parent id is all zero")
    return trace_id, parent_id


# ---------------------------------------------------------------------------------------------
# Stacks made from a context, and what exporters need to know about them.

class _Imported:
    __slots__ = ("root_uuid", "parent_uuid", "tracestate")

    def __init__(self, root_uuid, parent_uuid, tracestate):
        self.root_uuid = root_uuid
        self.parent_uuid = parent_uuid
        self.tracestate = tracestate


_lock = threading.Lock()
# Bottom frame of an imported stack -> what was imported; the frame's lifetime bounds it.
_stacks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Imported parent uuid -> (root uuid as 32 hex, tracestate), for rooted imports only.
_parents: collections.OrderedDict = collections.OrderedDict()
_PARENTS_KEPT = 4096
# Until a stack is imported, no stack can have an imported root: LLM calls skip the lookup.
_any_imported = False
_AGENT = ScopeType.Agent


def imported_parent(parent_uuid: str):
    """``(root_uuid_hex, tracestate)`` when ``parent_uuid`` is the imported parent of a stack
    made from a rooted context (the last 4096 such stacks), else ``None``."""
    with _lock:
        entry = _parents.get(parent_uuid)
        if entry is not None:
            _parents.move_to_end(parent_uuid)
        return entry


def _imported_of(frame) -> _Imported | None:
    if not _any_imported:
        return None
    try:
        return _stacks.get(_core.root_of(frame))
    except TypeError:
        return None


def stack_root_uuid(frame=None) -> str:
    """The uuid of the root of ``frame``'s stack (default: the current one), propagated or not."""
    return _core.root_of(_core.current() if frame is None else frame).uuid


def create_scope_stack_from_propagation(context: PropagationContext) -> ScopeStack:
    """A new stack continuing ``context``: scopes opened on it are parented to its parent."""
    if not isinstance(context, PropagationContext):
        raise TypeError(f"expected a PropagationContext, got {type(context).__name__}")
    root_uuid, parent_uuid = context.root_uuid, context.parent_uuid
    if root_uuid is None:
        bottom = top = _core.imported_frame(parent_uuid, "propagated-root", ScopeType.Agent,
                                            None)
    else:
        bottom = top = _core.imported_frame(root_uuid, "propagated-root", ScopeType.Agent, None)
        if parent_uuid != root_uuid:
            top = _core.imported_frame(parent_uuid, "propagated-parent", ScopeType.Unknown,
                                       bottom)
    global _any_imported
    with _lock:
        _any_imported = True
        _stacks[bottom] = _Imported(root_uuid, parent_uuid, context.tracestate)
        if root_uuid is not None:
            _parents[parent_uuid] = (_hex(root_uuid), context.tracestate)
            _parents.move_to_end(parent_uuid)
            while len(_parents) > _PARENTS_KEPT:
                _parents.popitem(last=False)
    return ScopeStack(top)


# The managed tool or LLM call whose callback is running here, if any: what a context captured
# inside the callback is parented to (the call is never pushed on the stack).
active_call: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "nemoflow.active_call", default=None)


def _position():
    top = _core.current()
    call = active_call.get()
    if call is not None and _core.is_closed(call):
        call = None
    return top, call


def _agent_root(frames, imported) -> str | None:
    # The reference's session root: the imported root, else the outermost explicit agent
    # scope, else the stack's own root unless the stack was imported without one.
    if imported is not None and imported.root_uuid is not None:
        return imported.root_uuid
    for f in frames[1:]:
        if f.scope_type is ScopeType.Agent:
            return f.uuid
    if imported is not None:
        return None
    return frames[0].uuid


def capture_propagation_context() -> PropagationContext:
    """The current position (the active managed call, else the stack top), with its root."""
    top, call = _position()
    frames = _core.open_frames(top)
    imported = _imported_of(top)
    parent = call.uuid if call is not None else top.uuid
    return PropagationContext(parent, _agent_root(frames, imported),
                              tracestate=imported.tracestate if imported else None)


def capture_rootless_propagation_context() -> PropagationContext:
    """The current position without a root: the receiver's first span starts a new trace."""
    top, call = _position()
    return PropagationContext(call.uuid if call is not None else top.uuid)


def capture_propagation_context_with_root(root_uuid: str | None) -> PropagationContext:
    """The current position with ``root_uuid`` as the trace root (``None``: rootless)."""
    top, call = _position()
    return PropagationContext(call.uuid if call is not None else top.uuid, root_uuid)


def _trace_root(frames, imported, fallback) -> str | None:
    if imported is not None and imported.root_uuid is not None:
        return imported.root_uuid
    if len(frames) > 1:
        return frames[1].uuid
    return fallback


_NO_SCOPE = ("invalid argument: no emitted Relay scope is available for W3C trace context "
             "capture")


def _capture() -> tuple[str, str | None]:
    top, call = _position()
    imported = _imported_of(top)
    frames = _core.open_frames(top)
    root = _trace_root(frames, imported, call.uuid if call is not None else None)
    if root is None:
        raise InvalidArgumentError(_NO_SCOPE)
    parent = call.uuid if call is not None else top.uuid
    return _traceparent(root, parent), (imported.tracestate if imported else None)


def capture_traceparent() -> str:
    """The W3C ``traceparent`` of the current position; raises when nothing was emitted yet."""
    return _capture()[0]


# ---------------------------------------------------------------------------------------------
# Carriers (HTTP headers and the like).

def _header_values(carrier, name: str) -> list:
    get_all = getattr(carrier, "get_all", None)  # email.message.Message, http.client headers
    if callable(get_all):
        try:
            values = get_all(name)
        except Exception:
            values = None
        if values:
            return [v for v in values if isinstance(v, str)]
    out: list[str] = []
    try:
        items = list(carrier.items())
    except Exception:
        return out
    for key, value in items:
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if not isinstance(key, str) or key.lower() != name:
            continue
        for v in (value if isinstance(value, (list, tuple)) else (value,)):
            if isinstance(v, bytes):
                v = v.decode("latin-1")
            if isinstance(v, str):
                out.append(v)
    return out


def _context_of(carrier) -> PropagationContext | None:
    try:
        parents = _header_values(carrier, "traceparent")
        if len(parents) != 1:  # none, or ambiguous
            return None
        states = _header_values(carrier, "tracestate")
        return PropagationContext.from_traceparent(parents[0], ",".join(states) or None)
    except Exception:
        return None


@contextlib.contextmanager
def continue_trace(carrier: Mapping) -> Iterator[ScopeStack]:
    """``with continue_trace(headers):`` runs the block in the caller's trace, read from its
    ``traceparent`` / ``tracestate``; without a valid one, in a new trace. Never raises."""
    context = _context_of(carrier)
    stack = (ScopeStack(_core.new_root()) if context is None
             else create_scope_stack_from_propagation(context))
    with stack:
        yield stack


def _set_header(carrier: MutableMapping, name: str, value: str) -> None:
    for key in [k for k in carrier if isinstance(k, str) and k.lower() == name]:
        del carrier[key]
    carrier[name] = value


def inject_traceparent(carrier: MutableMapping) -> MutableMapping:
    """Write ``traceparent`` (and ``tracestate`` when held) into ``carrier``, replacing keys of
    any case; leaves it unchanged when there is no emitted scope to point at."""
    try:
        traceparent, tracestate = _capture()
    except InvalidArgumentError:
        return carrier
    _set_header(carrier, "traceparent", traceparent)
    if tracestate:
        _set_header(carrier, "tracestate", tracestate)
    return carrier


# ---------------------------------------------------------------------------------------------
# Managed LLM calls.

_SESSION_KEYS = ("codex_subagent_session_id", "subagent_session_id", "subagent_id", "session_id")


def _session_id(frame) -> str:
    meta = frame.metadata
    if isinstance(meta, dict):
        for key in _SESSION_KEYS:
            value = meta.get(key)
            if isinstance(value, str):
                return value
    return frame.name


def session_headers(request, top):
    """``request`` with ``x-dynamo-session-id`` / ``x-dynamo-parent-session-id`` set from the
    innermost explicit agent scopes of ``top``'s stack, as the reference writes them."""
    _, inner, outer = _core.stack_anchor(top)
    if inner is None:
        return request
    headers = dict(request.headers)
    headers["x-dynamo-session-id"] = _session_id(inner)
    if outer is not None:
        headers["x-dynamo-parent-session-id"] = _session_id(outer)
    else:
        headers.pop("x-dynamo-parent-session-id", None)
    return type(request)(headers, request.content)


def trace_headers(request, top, span_uuid: str):
    """``request`` with a lowercase ``traceparent`` for the LLM span ``span_uuid`` (and the
    imported ``tracestate``), replacing headers of those names in any case."""
    imported = _imported_of(top)
    if imported is not None and imported.root_uuid is not None:
        root, tracestate = imported.root_uuid, imported.tracestate
    else:
        above = _core.stack_anchor(top)[0]
        root = span_uuid if above is None else above.uuid
        tracestate = None
    old = request.headers
    headers = {}
    for key, value in old.items():
        if key.__class__ is str and key.lower() == "traceparent":
            continue
        headers[key] = value
    # the span id is the uuid's last 8 bytes: its last two groups
    headers["traceparent"] = (f"00-{root.replace('-', '')}-{span_uuid[19:23]}"
                              f"{span_uuid[24:]}-01")
    if tracestate:
        _set_header(headers, "tracestate", tracestate)
    return type(request)(headers, request.content)


def with_current_traceparent(request):
    """``request`` with ``capture_traceparent()`` (+ ``tracestate``), when there is one."""
    try:
        traceparent, tracestate = _capture()
    except InvalidArgumentError:
        return request
    headers = dict(request.headers)
    _set_header(headers, "traceparent", traceparent)
    if tracestate:
        _set_header(headers, "tracestate", tracestate)
    return type(request)(headers, request.content)
