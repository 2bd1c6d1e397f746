"""Projections of ATOF events to OTLP spans: ``full``, ``gen_ai`` and ``openinference``.

A projection runs on the delivery thread. It sees every event in emission order, keeps the
open spans, and returns each span when its scope ends. The three share the span rules (ids,
parents, trace membership, status, ``error.type``, the ``exception`` event, session identity,
payload flattening, metadata promotion, attribute mappings, marks); each writes its own
attributes, key for key, value type for value type and in the order NeMo Relay 0.10.4 writes
them, so tools built for its spans read ours unchanged.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import uuid as _uuid
from typing import Any

import orjson

from ... import propagation as _propagation
from ..._backend import core as _core
from ...codecs import normalize as _nz
from ._model import (
    FLAGS_LOCAL,
    FLAGS_REMOTE,
    KIND_CLIENT,
    KIND_INTERNAL,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    Span,
    SpanEvent,
)

__all__ = [
    "PROJECTIONS",
    "FullProjection",
    "GenAIProjection",
    "OpenInferenceProjection",
    "check_attribute_mappings",
    "check_promote_prefixes",
    "flatten",
    "otel_parent",
    "stack_root",
]

_log = logging.getLogger("nemoflow")
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
COMPLETED_CACHE_SIZE = 4096
_CATEGORIES = frozenset({"agent", "function", "tool", "llm", "retriever", "embedder", "reranker",
                         "guardrail", "evaluator", "custom", "unknown"})
_CLIENT = frozenset({"llm", "tool", "retriever", "embedder", "reranker"})
_SCOPE_TYPES = {c: c for c in _CATEGORIES}  # categories already in their canonical spelling
_new_span = Span.__new__
_EMPTY: dict = {}  # read only: the metadata of an event that has none
_NONE: list = []  # read only: no promoted metadata
_NO_KEYS: frozenset = frozenset()
_METRIC_SCHEMA = {"name": "nemo.relay.metric_measurements", "version": "1"}
_RESERVED = ("nemo_relay.", "gen_ai.", "error.", "exception.", "input.", "output.", "llm.",
             "openinference.", "server.", "service.", "session.", "tool.", "tool_call.", "user.")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$")


def _json(value: Any) -> str:
    """Compact JSON with sorted keys, as the reference writes nested values."""
    return _nz.json_text(value)


def _keys(pairs) -> frozenset:
    return frozenset([k for k, _ in pairs]) if pairs else _NO_KEYS


def _scope_type(category: Any) -> str:
    cat = category.lower() if isinstance(category, str) else ""
    return cat if cat in _CATEGORIES else "unknown"


def _value(value: Any):
    """A JSON scalar as a typed attribute value, None to drop it, or JSON text."""
    if value is None:
        return None
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return value if _I64_MIN <= value <= _I64_MAX else str(value)
    return _json(value)


def flatten(prefix: str, payload: Any, out: list, skip: frozenset | set = frozenset()) -> None:
    """Append ``prefix.<field>`` per top-level field of an object (sorted), or ``prefix``."""
    if payload is None:
        return
    if isinstance(payload, dict):
        for key in sorted(payload):
            if key in skip:
                continue
            value = _value(payload[key])
            if value is not None:
                out.append((f"{prefix}.{key}", value))
        return
    value = _value(payload)
    if value is not None:
        out.append((prefix, value))


def _id_bytes(text: str) -> bytes:
    """The 16 bytes of a uuid string (canonical or bare hex)."""
    try:
        raw = bytes.fromhex(text.replace("-", ""))
    except (ValueError, AttributeError):
        raw = b""
    return raw if len(raw) == 16 else _uuid.UUID(text).bytes


_GIVEN_ROOT: dict = {}  # event type -> whether its events can carry propagation_root_uuid


def _given_root(ev):
    kind = type(ev)
    has = _GIVEN_ROOT.get(kind)
    if has is None:
        # nemoflow's own events (slotted, or extension types) have no such field.
        has = _GIVEN_ROOT[kind] = hasattr(kind, "propagation_root_uuid") or getattr(
            kind, "__dictoffset__", 1) != 0
    return getattr(ev, "propagation_root_uuid", None) if has else None


def otel_parent(ev):
    """``(trace_id, span_id, is_remote, trace_state)`` of the OpenTelemetry span that was
    current when a top-level scope or mark started (INTEROP §12.3), or None."""
    ctx = getattr(ev, "otel_parent", None)
    if ctx is None:
        return None
    try:
        trace_id = ctx.trace_id.to_bytes(16, "big")
        span_id = ctx.span_id.to_bytes(8, "big")
        state = ctx.trace_state
        state = state.to_header() if state else ""
        remote = bool(ctx.is_remote)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    if not any(trace_id) or not any(span_id):
        return None
    return trace_id, span_id, remote, state


def stack_root(ev, parent_root: tuple | None) -> tuple:
    """The emitting stack's propagation root of an event, as ``(uuid, agent_rooted)``.

    A root recorded on the event (``propagation_root_uuid``, as NeMo Relay writes it) wins.
    Otherwise it is derived from the stream: the outermost agent scope among the event's
    known ancestors, else the stack root, which is the ``parent_uuid`` of the outermost
    known scope.
    """
    given = _given_root(ev)
    is_agent = ev.kind == "scope" and ev.category == "agent"
    if isinstance(given, str) and given:
        agent_rooted = (parent_root[1] if parent_root is not None else False) or (
            given == ev.uuid and is_agent)
        return given, agent_rooted or (parent_root is None and given != ev.parent_uuid)
    if parent_root is not None:
        if parent_root[1]:
            return parent_root
        if is_agent:
            return ev.uuid, True
        return parent_root
    if is_agent:
        return ev.uuid, True
    return (ev.parent_uuid or ev.uuid), False


def check_promote_prefixes(prefixes) -> list:
    """Validate ``promote_metadata_prefixes``; returns them as a list."""
    if prefixes is None:
        return []
    if isinstance(prefixes, str) or not all(isinstance(p, str) for p in prefixes):
        raise TypeError("promote_metadata_prefixes must be a list of str")
    seen = set()
    out = list(prefixes)
    for p in out:
        if not p.strip():
            raise ValueError("metadata promotion prefix must not be blank")
        if p != p.strip():
            raise ValueError(f'metadata promotion prefix "{p}" must not have surrounding '
                             "whitespace")
        if any(c in p for c in "*?[]"):
            raise ValueError(f'metadata promotion prefix "{p}" must be a literal prefix, '
                             "not a glob")
        if not _PREFIX_RE.match(p):
            raise ValueError(f'metadata promotion prefix "{p}" must contain letter, number, '
                             "underscore, or hyphen segments separated by single dots, with "
                             "an optional trailing dot")
        if p in seen:
            raise ValueError(f'metadata promotion prefix "{p}" is duplicated')
        seen.add(p)
    return out


def check_attribute_mappings(mappings) -> list:
    """Validate ``attribute_mappings`` (``[{key, alias}]``); returns ``[(key, alias)]``."""
    if mappings is None:
        return []
    out = []
    aliases = set()
    for m in mappings:
        if not isinstance(m, dict) or not isinstance(m.get("key"), str) or not isinstance(
                m.get("alias"), str):
            raise TypeError("attribute mappings must be dicts with str 'key' and 'alias'")
        key, alias = m["key"], m["alias"]
        if not key.strip():
            raise ValueError("attribute mapping key must not be blank")
        if not alias.strip():
            raise ValueError("attribute mapping alias must not be blank")
        if alias in aliases:
            raise ValueError(f'attribute mapping alias "{alias}" is duplicated')
        aliases.add(alias)
        out.append((key, alias))
    return out


_BIG = "unsigned integer is larger than OTLP i64"
_NESTED = "nested arrays and objects are not supported"


def _promotable(value: Any):
    """``(ok, value, reason)`` for a metadata value to promote (reasons as the reference's)."""
    if value is None:
        return False, None, "null values are not OTLP attributes"
    if isinstance(value, bool | str | float):
        return True, value, None
    if isinstance(value, int):
        if _I64_MIN <= value <= _I64_MAX:
            return True, value, None
        return False, None, _BIG
    if isinstance(value, dict):
        return False, None, "object values are not supported"
    if isinstance(value, list):
        kinds: set[str] = set()
        for item in value:
            if isinstance(item, bool):
                kinds.add("bool")
            elif isinstance(item, int):
                if not _I64_MIN <= item <= _I64_MAX:
                    return False, None, _BIG
                kinds.add("number")
            elif isinstance(item, float):
                kinds.add("number")
            elif isinstance(item, str):
                kinds.add("str")
            else:
                return False, None, _NESTED
        if len(kinds) > 1:
            return False, None, "array values must have one primitive type"
        if any(isinstance(item, float) for item in value):
            return True, [float(item) for item in value], None  # ints among doubles
        return True, list(value), None
    return False, None, "this value type is not supported"


def _reserved(key: str) -> bool:
    return key == "metadata" or key.startswith(_RESERVED)


class _Open:
    """An open span: its context and what the end needs from the start."""

    __slots__ = ("trace_id", "span_id", "parent_span_id", "flags", "trace_state", "name", "kind",
                 "start_ns", "attrs", "events", "root", "category", "start", "err_type",
                 "exc_type", "promoted", "trace_root", "gen_name", "provider")
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    flags: int
    trace_state: str
    name: str
    kind: int
    start_ns: int
    attrs: list
    events: list
    root: tuple
    category: str
    start: Any
    err_type: str | None
    exc_type: str | None
    promoted: list
    trace_root: bool
    gen_name: str
    provider: str | None


class _Projection:
    """Shared rules; subclasses write the attributes."""

    name = ""
    marks = True  # gen_ai drops marks
    session_identity = True
    mappings_apply = True

    def __init__(self, *, mark_projection: str = "inherit", mark_exclude_names=("llm.chunk",),
                 attribute_mappings=None, promote_metadata_prefixes=None, report=None):
        if mark_projection not in ("inherit", "event", "tool"):
            raise ValueError('mark_projection must be "inherit", "event" or "tool"')
        self.mark_projection = mark_projection
        self.mark_exclude = frozenset(mark_exclude_names or ())
        self.mappings = check_attribute_mappings(attribute_mappings)
        self.prefixes = tuple(check_promote_prefixes(promote_metadata_prefixes))
        self._report = report
        self._open: dict = {}
        # Completed span contexts, oldest first out: a dict for lookup and a ring of its keys
        # (a uuid completes once, so the ring's order is the completion order).
        self._done: dict = {}
        self._done_order: collections.deque = collections.deque()
        self.ends_without_start = 0
        self.metric_marks = 0
        self.metric_marks_invalid = 0
        self.spans_unfinished = 0
        self._unknown_status_logged = False

    # --- diagnostics ------------------------------------------------------------------------

    def _diag(self, code: str, message: str) -> None:
        if self._report is not None:
            self._report(code, message)

    def stats(self) -> dict:
        """The projection's counters, shown beside the exporter's."""
        return {"spans_open": len(self._open), "spans_unfinished": self.spans_unfinished,
                "ends_without_start": self.ends_without_start,
                "metric_marks_skipped": self.metric_marks,
                "metric_marks_invalid": self.metric_marks_invalid}

    def shutdown(self) -> list:
        """Count the spans still open (they are never exported) and forget them."""
        self.spans_unfinished += len(self._open)
        self._open.clear()
        return []

    # --- ids and parents --------------------------------------------------------------------

    def _context(self, parent_uuid):
        """``(trace_id, parent_span_id, root, open, remote, trace_state)`` of a parent uuid
        (§3 steps 1-3: an open span, a completed one, the imported parent of a stack made from
        a rooted propagation context), or None; step 4 is ``otel_parent``."""
        if parent_uuid is None:
            return None
        o = self._open.get(parent_uuid)
        if o is not None:
            return o.trace_id, o.span_id, o.root, True, False, o.trace_state
        done = self._done.get(parent_uuid)
        if done is not None:
            return done[0], done[1], done[2], False, False, done[3]
        if _propagation._any_imported:
            imported = _propagation.imported_parent(parent_uuid)
            if imported is not None:
                root_hex, trace_state = imported
                root = str(_uuid.UUID(root_hex))
                return (bytes.fromhex(root_hex), _id_bytes(parent_uuid)[8:], (root, False),
                        False, True, trace_state or "")
        return None

    @staticmethod
    def _trace_id(own: bytes, root) -> bytes:
        if root[1]:
            try:
                return _id_bytes(root[0])
            except ValueError:
                return own
        return own

    # --- events -----------------------------------------------------------------------------

    def on_event(self, ev):
        """Project one event; returns the spans it finished."""
        if ev.kind == "scope":
            if ev.scope_category == "start":
                self._start(ev)
                return None
            span = self._end(ev)
            return [span] if span is not None else None
        if ev.kind == "mark":
            return self._mark(ev)
        return None

    def _start(self, ev) -> None:
        # Runs for every span: the common cases (a parent still open, or none, and an event
        # without a recorded propagation root) take no detour through _context / stack_root.
        uuid = ev.uuid
        try:
            raw = bytes.fromhex(uuid.replace("-", ""))
        except (ValueError, AttributeError):
            raw = b""
        if len(raw) != 16:
            raw = _id_bytes(uuid)
        parent_uuid = ev.parent_uuid
        category = ev.category
        plain = _GIVEN_ROOT.get(type(ev)) is False  # its events never carry a root
        o = _Open()
        parent = self._open.get(parent_uuid) if parent_uuid is not None else None
        if parent is not None:
            o.trace_id, o.parent_span_id = parent.trace_id, parent.span_id
            o.trace_root = False
            o.flags = FLAGS_LOCAL
            o.trace_state = parent.trace_state
            root = parent.root
            if not plain or (category == "agent" and not root[1]):
                root = stack_root(ev, root)
        else:
            ctx = self._context(parent_uuid) if parent_uuid is not None else None
            if ctx is None and plain:
                root = (uuid, True) if category == "agent" else (parent_uuid or uuid, False)
            else:
                root = stack_root(ev, ctx[2] if ctx is not None else None)
            if ctx is not None:
                o.trace_id, o.parent_span_id = ctx[0], ctx[1]
                o.trace_root = False
                o.flags = FLAGS_REMOTE if ctx[4] else FLAGS_LOCAL
                o.trace_state = ctx[5]
            else:
                o.flags = FLAGS_LOCAL
                joined = otel_parent(ev)
                if joined is not None:
                    # A child of the OpenTelemetry span current at its start (§3 step 4).
                    o.trace_id, o.parent_span_id, remote, o.trace_state = joined
                    o.trace_root = False
                    if remote:
                        o.flags = FLAGS_REMOTE
                else:
                    o.trace_id = self._trace_id(raw, root) if root[1] else raw
                    o.parent_span_id = None
                    o.trace_root = True
                    o.trace_state = ""
        o.span_id = raw[8:]
        o.root = root
        cat = _SCOPE_TYPES.get(category) if type(category) is str else None
        o.category = cat = cat if cat is not None else _scope_type(category)
        o.start_ns = ev.timestamp_ns
        o.kind = KIND_CLIENT if cat in _CLIENT else KIND_INTERNAL
        o.events = []
        o.err_type = o.exc_type = None
        o.start = ev
        o.name = ev.name
        o.provider = None
        # The start metadata is decoded only when something here reads it.
        metadata = ev.metadata if (self.prefixes or self.session_identity) else None
        o.promoted = self._promotions(metadata) if self.prefixes else _NONE
        attrs = self.start_attributes(ev, o, metadata)
        if self.session_identity and o.trace_root:
            self._session(metadata, root, attrs)
        if o.promoted:
            self.after_promotions(attrs, 0, metadata, o.promoted)
        o.attrs = attrs
        self._open[uuid] = o

    def _end(self, ev):
        uuid = ev.uuid
        o = self._open.pop(uuid, None)
        if o is None:
            self.ends_without_start += 1
            return None
        metadata = ev.metadata
        meta = metadata if isinstance(metadata, dict) else _EMPTY
        code = meta.get("otel.status_code") if meta else None
        status, message = STATUS_UNSET, ""
        if code is None:
            pass
        elif code == "OK":
            status = STATUS_OK
        elif code == "ERROR":
            status = STATUS_ERROR
            desc = meta.get("otel.status_description")
            message = desc if isinstance(desc, str) else ""
        elif code != "UNSET" and not self._unknown_status_logged:
            self._unknown_status_logged = True
            _log.warning("nemoflow: unknown otel.status_code %r on %r; the span's status is "
                         "UNSET (reported once)", code, ev.name)
        end_promoted = self._promotions(metadata) if self.prefixes else _NONE
        end_attrs = self.end_attributes(ev, o, end_promoted, metadata)
        if status == STATUS_ERROR:
            err = meta.get("error.type")
            err = err if isinstance(err, str) else (o.err_type or "_OTHER")
            exc = meta.get("exception.type")
            exc = exc if isinstance(exc, str) else o.exc_type
            if self.writes_error_type:
                end_attrs = [a for a in end_attrs if a[0] != "error.type"]
                end_attrs.append(("error.type", err))
            if exc is not None:
                o.events.append(SpanEvent("exception", ev.timestamp_ns,
                                          [("exception.type", exc)]))
            parent = self._open.get(ev.parent_uuid) if ev.parent_uuid is not None else None
            if parent is not None:
                if parent.err_type is None:
                    parent.err_type = err
                if parent.exc_type is None:
                    parent.exc_type = exc
        if o.category == "llm":
            end_attrs.extend(self.end_model_attributes(ev, o))
        # The open span is done with: its start attributes become the span's.
        attrs = o.attrs
        first_end = len(attrs)
        if end_attrs:
            attrs.extend(end_attrs)
        if self.mappings_apply and self.mappings:
            self._apply_mappings(attrs)
        promoted = (self._finish_promotions(attrs, o.promoted, end_promoted, meta)
                    if o.promoted or end_promoted else None)
        if promoted:
            attrs.extend(promoted)
            self.after_promotions(attrs, first_end, metadata, o.promoted + end_promoted)
        # Remembered for the children and marks that arrive after it ended.
        trace_id, span_id, trace_state = o.trace_id, o.span_id, o.trace_state
        done = self._done
        if uuid not in done:
            order = self._done_order
            order.append(uuid)
            if len(order) > COMPLETED_CACHE_SIZE:
                del done[order.popleft()]
        done[uuid] = (trace_id, span_id, o.root, trace_state)
        # Span's fields set directly: a call with keyword arguments costs three times more.
        span = _new_span(Span)
        span.trace_id = trace_id
        span.span_id = span_id
        span.parent_span_id = o.parent_span_id
        span.flags = o.flags
        span.trace_state = trace_state
        span.name = self.span_name(o)
        span.kind = o.kind
        span.start_ns = o.start_ns
        span.end_ns = ev.timestamp_ns
        span.attributes = attrs
        span.events = o.events
        span.status_code = status
        span.status_message = message
        return span

    # --- shared attribute rules -------------------------------------------------------------

    writes_error_type = True

    def _session(self, metadata, root, attrs: list) -> None:
        meta = metadata if isinstance(metadata, dict) else {}
        for src, key in (("session_id", "session.id"), ("user_id", "user.id"),
                         ("agent_kind", "nemo_relay.agent.kind")):
            value = meta.get(src)
            if isinstance(value, str):
                attrs.append((key, value))
        attrs.append(("nemo_relay.session.instance_id", root[0]))

    def _promotions(self, metadata) -> list:
        """``[(key, value)]`` promoted from top-level metadata; refusals are reported."""
        if not self.prefixes or not isinstance(metadata, dict):
            return []
        out = []
        for key, value in metadata.items():
            if not key.startswith(self.prefixes):
                continue
            if _reserved(key):
                self._diag(f"otel.metadata_promotion_value_unsupported.{key}",
                           f'OpenTelemetry metadata attribute "{key}" was not promoted: '
                           "attribute key is reserved by Relay or an OpenTelemetry projection")
                continue
            ok, typed, reason = _promotable(value)
            if not ok:
                self._diag(f"otel.metadata_promotion_value_unsupported.{key}",
                           f'OpenTelemetry metadata attribute "{key}" was not promoted: '
                           f"{reason}")
                continue
            out.append((key, typed))
        return out

    @staticmethod
    def _finish_promotions(attrs, start_promoted, end_promoted, end_meta) -> list:
        written = {k for k, _ in attrs}
        end_keys = {k for k, _ in end_promoted}
        out = []
        for key, value in start_promoted:
            if key in written or key in end_keys or key in end_meta:
                continue
            out.append((key, value))
        for key, value in end_promoted:
            if key not in written:
                out.append((key, value))
        return out

    def after_promotions(self, attrs, first, metadata, promoted) -> None:
        """Called when a start (``first`` = 0) or an end (``first`` = where the end's
        attributes begin) promoted metadata."""

    def _apply_mappings(self, attrs: list) -> None:
        present = {k for k, _ in attrs}
        last = dict(attrs)
        for key, alias in self.mappings:
            if key in last and alias not in present:
                attrs.append((alias, last[key]))
                present.add(alias)

    # --- marks ------------------------------------------------------------------------------

    def _mark(self, ev):
        schema = ev.data_schema
        if isinstance(schema, dict) and schema.get("name") == _METRIC_SCHEMA["name"]:
            self.metric_marks += 1
            if schema != _METRIC_SCHEMA or not self._valid_metric(ev.data):
                self.metric_marks_invalid += 1
                self._diag("otel.metric_mark_invalid",
                           f'OpenTelemetry metric mark "{ev.name}" is invalid')
            return None
        if not self.marks:
            return None
        metadata = ev.metadata
        meta = metadata if isinstance(metadata, dict) else {}
        attrs: list = [("nemo_relay.mark.uuid", ev.uuid),
                       ("nemo_relay.mark.parent_uuid", ev.parent_uuid or "")]
        promoted = self._promotions(metadata)
        skip = frozenset(k for k, _ in promoted)
        flatten("nemo_relay.mark.data", ev.data, attrs)
        flatten("nemo_relay.mark.metadata", metadata, attrs, skip)
        category = getattr(ev, "category", None)
        if isinstance(category, str) and category:
            attrs.append(("nemo_relay.mark.category", category))
        flatten("nemo_relay.mark.category_profile", ev.category_profile, attrs)
        ctx = self._context(ev.parent_uuid)
        root = stack_root(ev, ctx[2] if ctx is not None else None)
        if ev.name == "session.start":
            self._session(metadata, root, attrs)
        hook = meta.get("hook_event_name")
        excluded = ev.name in self.mark_exclude or (
            isinstance(hook, str) and hook in self.mark_exclude)
        as_tool = self.mark_projection == "tool" and not excluded
        parent_open = ctx is not None and ctx[3]
        if not as_tool and parent_open:
            self._mappings_and_promotions(attrs, promoted)
            self._open[ev.parent_uuid].events.append(SpanEvent(ev.name, ev.timestamp_ns, attrs))
            return None
        if as_tool:
            attrs.append(("nemo_relay.mark.projection", "tool"))
            attrs.extend(self.tool_mark_attributes(ev))
        else:
            attrs.extend(self.orphan_mark_attributes(ev))
        if not parent_open:
            attrs.append(("nemo_relay.mark.orphan", True))
        self._mappings_and_promotions(attrs, promoted)
        raw = _id_bytes(ev.uuid)
        flags, trace_state = FLAGS_LOCAL, ""
        joined = otel_parent(ev) if ctx is None else None
        if ctx is not None:
            trace_id, parent_id = ctx[0], ctx[1]
            flags, trace_state = (FLAGS_REMOTE if ctx[4] else FLAGS_LOCAL), ctx[5]
        elif joined is not None:
            trace_id, parent_id, remote, trace_state = joined
            if remote:
                flags = FLAGS_REMOTE
        else:
            trace_id, parent_id = self._trace_id(raw, root), None
        t = ev.timestamp_ns
        return [Span(trace_id, raw[8:], f"mark:{ev.name}", t, t, parent_span_id=parent_id,
                     flags=flags, trace_state=trace_state, kind=KIND_INTERNAL,
                     attributes=attrs)]

    def _mappings_and_promotions(self, attrs, promoted) -> None:
        if self.mappings:
            self._apply_mappings(attrs)
        present = {k for k, _ in attrs}
        attrs.extend((k, v) for k, v in promoted if k not in present)

    @staticmethod
    def _valid_metric(data) -> bool:
        measurements = data.get("measurements") if isinstance(data, dict) else None
        return isinstance(measurements, list) and all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"]
            and isinstance(m.get("kind"), str) and isinstance(m.get("value"), int | float)
            and not isinstance(m.get("value"), bool) for m in measurements)

    def tool_mark_attributes(self, ev) -> list:
        return []

    def orphan_mark_attributes(self, ev) -> list:
        return []

    # --- per projection ---------------------------------------------------------------------

    def span_name(self, o) -> str:
        return o.name

    def start_attributes(self, ev, o, metadata) -> list:
        """The projection's start attributes (``metadata``: the start's, when read)."""
        raise NotImplementedError

    def end_attributes(self, ev, o, end_promoted, metadata) -> list:
        """The projection's end attributes (``metadata``: the end's)."""
        raise NotImplementedError

    def end_model_attributes(self, ev, o) -> list:
        return []


def _llm_request(start):
    return _nz.normalize_request(start.data, start.name, start.category_profile)


def _llm_response(ev):
    return _nz.normalize_response(ev.data, ev.category_profile)


def _model(start, end, request=None, response=None):
    return _nz.model_name(response=response, end_data=end.data,
                          end_profile=end.category_profile, request=request,
                          start_data=(start.data or {}).get("content")
                          if isinstance(start.data, dict) else None,
                          start_profile=start.category_profile)


def _handle_attributes(ev) -> str:
    names = ev.attributes
    return _json(list(names)) if names else "[]"


def _profile(ev) -> dict:
    p = ev.category_profile
    return p if isinstance(p, dict) else {}


class FullProjection(_Projection):
    """Every ATOF field as ``nemo_relay.*`` attributes: the lossless view."""

    name = "full"

    def start_attributes(self, ev, o, metadata) -> list:
        attrs = [("nemo_relay.uuid", ev.uuid), ("nemo_relay.parent_uuid", ev.parent_uuid or ""),
                 ("nemo_relay.scope_type", o.category)]
        call_id = _profile(ev).get("tool_call_id")
        if isinstance(call_id, str):
            attrs.append(("nemo_relay.tool_call_id", call_id))
        attrs.append(("nemo_relay.handle_attributes", _handle_attributes(ev)))
        data = ev.data
        flatten("nemo_relay.start.data", data, attrs)
        flatten("nemo_relay.start.metadata", metadata, attrs,
                _keys(o.promoted))
        flatten("nemo_relay.start.input", data, attrs)
        return attrs

    def end_attributes(self, ev, o, end_promoted, metadata) -> list:
        attrs: list = []
        data = ev.data
        flatten("nemo_relay.end.data", data, attrs)
        flatten("nemo_relay.end.metadata", metadata, attrs,
                _keys(end_promoted))
        flatten("nemo_relay.end.output", data, attrs)
        profile = _profile(ev)
        if o.category == "tool" and profile.get("tool_result_annotation") is not None:
            attrs.append(("nemo_relay.tool.result.annotation",
                          _json(profile["tool_result_annotation"])))
        if o.category == "llm":
            cost = _nz.cost(_llm_response(ev), data, policy="any")
            if cost is not None:
                attrs.append(("nemo_relay.llm.cost.total", float(cost.total)))
                attrs.append(("nemo_relay.llm.cost.currency", cost.currency))
        return attrs

    def end_model_attributes(self, ev, o) -> list:
        if o.category != "llm":
            return []
        start = o.start
        model = _model(start, ev, _llm_request(start), _llm_response(ev))
        return [("nemo_relay.model_name", model)] if model else []

    def tool_mark_attributes(self, ev) -> list:
        return [("nemo_relay.scope_type", "tool")]


_OI_KINDS = {"agent": "AGENT", "tool": "TOOL", "llm": "LLM", "retriever": "RETRIEVER",
             "embedder": "EMBEDDING", "reranker": "RERANKER", "guardrail": "GUARDRAIL",
             "evaluator": "EVALUATOR"}


class OpenInferenceProjection(_Projection):
    """OpenInference semantic conventions (Arize Phoenix): span kinds, input/output values,
    LLM messages, token counts."""

    name = "openinference"
    writes_error_type = False

    def start_attributes(self, ev, o, metadata) -> list:
        cat = o.category
        attrs = [("openinference.span.kind", _OI_KINDS.get(cat, "CHAIN")),
                 ("nemo_relay.uuid", ev.uuid), ("nemo_relay.parent_uuid", ev.parent_uuid or ""),
                 ("nemo_relay.scope_type", cat)]
        call_id = _profile(ev).get("tool_call_id")
        if isinstance(call_id, str):
            attrs.append(("tool_call.id", call_id))
        skip = _keys(o.promoted)
        if cat != "llm":
            self._metadata(metadata, attrs, skip)
        data = ev.data
        if cat != "llm":
            attrs.append(("nemo_relay.handle_attributes", _handle_attributes(ev)))
            flatten("nemo_relay.start.data", data, attrs)
            flatten("nemo_relay.start.input", data, attrs)
            if cat == "tool":
                attrs.append(("tool.name", ev.name))
                attrs.append(("tool_call.function.name", ev.name))
        if cat == "llm":
            value = _nz.llm_input_value(data)
            if value is not None:
                attrs.append(("input.value", value[0]))
                attrs.append(("input.mime_type", value[1]))
            attrs.extend(_nz.openinference_request_attributes(_llm_request(ev)))
        elif data is not None:
            text = _json(data)
            attrs.append(("input.value", text))
            attrs.append(("input.mime_type", "application/json"))
            if cat == "tool":
                attrs.append(("tool.parameters", text))
                attrs.append(("tool_call.function.arguments", text))
        return attrs

    @staticmethod
    def _metadata(metadata, attrs, skip) -> None:
        if metadata is None:
            return
        shown = ({k: v for k, v in metadata.items() if k not in skip}
                 if isinstance(metadata, dict) and skip else metadata)
        attrs.append(("metadata", _json(shown)))
        flatten("openinference.metadata", metadata, attrs, skip)

    def end_attributes(self, ev, o, end_promoted, metadata) -> list:
        attrs: list = []
        data = ev.data
        flatten("nemo_relay.end.data", data, attrs)
        self._metadata(metadata, attrs, _keys(end_promoted))
        flatten("nemo_relay.end.output", data, attrs)
        profile = _profile(ev)
        if o.category == "tool" and profile.get("tool_result_annotation") is not None:
            attrs.append(("nemo_relay.tool.result.annotation",
                          _json(profile["tool_result_annotation"])))
        value = _nz.output_value(data)
        if value is not None:
            attrs.append(("output.value", value[0]))
            attrs.append(("output.mime_type", value[1]))
        if o.category == "llm":
            response = _llm_response(ev)
            usage = _nz.merged_usage(response, data, provider=o.name)
            cost = _nz.cost(response, data, policy="usd")
            attrs.extend(_nz.openinference_usage_attributes(
                usage, float(cost.total) if cost is not None else None))
            attrs.extend(_nz.openinference_response_attributes(response))
        return attrs

    def after_promotions(self, attrs, first, metadata, promoted) -> None:
        # As the reference: a start or end that promoted metadata moves its ``metadata``
        # attribute after the promotions, without the promoted keys.
        if not isinstance(metadata, dict):
            return
        for i in range(first, len(attrs)):
            if attrs[i][0] == "metadata":
                del attrs[i]
                break
        else:
            return  # this phase wrote no metadata (an LLM start)
        keys = {k for k, _ in promoted}
        attrs.append(("metadata", _json({k: v for k, v in metadata.items() if k not in keys})))

    def end_model_attributes(self, ev, o) -> list:
        if o.category != "llm":
            return []
        start = o.start
        model = _model(start, ev, _llm_request(start), _llm_response(ev))
        return [("llm.model_name", model)] if model else []

    def tool_mark_attributes(self, ev) -> list:
        attrs = [("openinference.span.kind", "TOOL"), ("tool.name", ev.name),
                 ("tool_call.function.name", ev.name)]
        if ev.data is not None:
            attrs.append(("output.value", _json(ev.data)))
            attrs.append(("output.mime_type", "application/json"))
        if ev.metadata is not None:
            attrs.append(("metadata", _json(ev.metadata)))
        return attrs

    def orphan_mark_attributes(self, ev) -> list:
        return [("openinference.span.kind", "CHAIN")]


# --- gen_ai --------------------------------------------------------------------------------

_MODELED_PROFILE = frozenset({"model_name", "tool_call_id", "subtype", "tool_result_annotation",
                              "annotated_request", "annotated_response"})
_PROVIDERS = (("azure_ai_inference", "azure.ai.inference"),
              ("azure ai inference", "azure.ai.inference"),
              ("azure_openai", "azure.ai.openai"), ("azure openai", "azure.ai.openai"),
              ("anthropic", "anthropic"), ("claude", "anthropic"), ("bedrock", "aws.bedrock"),
              ("cohere", "cohere"), ("deepseek", "deepseek"), ("gemini", "gcp.gemini"),
              ("vertex", "gcp.vertex_ai"), ("groq", "groq"), ("mistral", "mistral_ai"),
              ("openai", "openai"), ("gpt", "openai"), ("perplexity", "perplexity"))
_API_PROVIDERS = {"anthropic_messages": "anthropic", "openai_chat": "openai",
                  "openai_responses": "openai", "oci_genai": "oci.genai"}


def _sources(ev):
    profile = ev.category_profile
    out = []
    if isinstance(profile, dict):
        out.append(({k: v for k, v in profile.items() if k not in _MODELED_PROFILE}, False))
    out.extend((src, True) for src in (ev.metadata, ev.data) if isinstance(src, dict))
    return out


def _lookup(ev, keys, want):
    """The first scalar under ``keys`` (category_profile, metadata, data; nested usage,
    request, response in the last two); ``want`` is ``"str"`` or ``"int"``."""
    for src, nested in _sources(ev):
        for key in keys:
            candidates = [src.get(key)]
            if nested:
                for inner in ("usage", "request", "response"):
                    sub = src.get(inner)
                    if isinstance(sub, dict):
                        candidates.append(sub.get(key))
            for value in candidates:
                got = _scalar(value, want)
                if got is not None:
                    return got
    return None


def _scalar(value, want):
    if value is None:
        return None
    if want == "str":
        if isinstance(value, str):
            return value if value else None
        if isinstance(value, bool | int | float):
            return orjson.dumps(value).decode()
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if _I64_MIN <= value <= _I64_MAX else None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _llm_operation(name: str) -> str:
    low = name.lower()
    if "generate_content" in low or "generatecontent" in low:
        return "generate_content"
    if "completion" in low and "chat" not in low:
        return "text_completion"
    return "chat"


_GENAI_OPS = {"agent": "invoke_agent", "tool": "execute_tool", "embedder": "embeddings",
              "retriever": "retrieval"}


class GenAIProjection(_Projection):
    """OpenTelemetry GenAI semantic conventions: ``invoke_agent``, ``chat``, ``execute_tool``
    spans with ``gen_ai.*`` attributes only."""

    name = "gen_ai"
    marks = False
    session_identity = False
    mappings_apply = False

    def span_name(self, o) -> str:
        return o.gen_name

    def _provider(self, ev, request):
        found = _lookup(ev, ("gen_ai.provider.name", "provider_name", "provider"), "str")
        if found is not None:
            return found
        low = ev.name.lower()
        for needle, provider in _PROVIDERS:
            if needle in low:
                return provider
        if request is not None:
            return _API_PROVIDERS.get(request.api or "")
        return None

    def _request_model(self, ev, request):
        if request is not None and isinstance(request.model, str) and request.model:
            return request.model
        model = _profile(ev).get("model_name")
        if isinstance(model, str) and model:
            return model
        return _lookup(ev, ("gen_ai.request.model", "model", "model_name"), "str")

    def _provider_and_server(self, ev, request, attrs) -> None:
        provider = self._provider(ev, request)
        if provider is not None:
            attrs.append(("gen_ai.provider.name", provider))
        address = _lookup(ev, ("server.address", "server_address"), "str")
        if address is not None:
            attrs.append(("server.address", address))
        port = _lookup(ev, ("server.port", "server_port"), "int")
        if port is not None:
            attrs.append(("server.port", port))

    def start_attributes(self, ev, o, metadata) -> list:
        cat = o.category
        op = _GENAI_OPS.get(cat)
        if cat == "llm":
            op = _llm_operation(ev.name)
        o.gen_name = ev.name
        o.kind = KIND_CLIENT if cat in ("llm", "embedder", "retriever") else KIND_INTERNAL
        if op is None:
            return []
        attrs = [("gen_ai.operation.name", op)]
        qualifier = None
        if cat == "agent":
            conv = _lookup(ev, ("gen_ai.conversation.id", "conversation_id", "session_id",
                                "thread_id"), "str")
            if conv is not None:
                attrs.append(("gen_ai.conversation.id", conv))
            qualifier = _lookup(ev, ("gen_ai.agent.name",), "str") or ev.name
            attrs.append(("gen_ai.agent.name", qualifier))
            desc = _lookup(ev, ("gen_ai.agent.description", "agent_description"), "str")
            if desc is not None:
                attrs.append(("gen_ai.agent.description", desc))
            model = self._request_model(ev, None)
            if model is not None:
                attrs.append(("gen_ai.request.model", model))
        elif cat == "llm":
            request = _llm_request(ev)
            self._provider_and_server(ev, request, attrs)
            conv = _lookup(ev, ("gen_ai.conversation.id", "conversation_id", "session_id",
                                "thread_id"), "str")
            if conv is not None:
                attrs.append(("gen_ai.conversation.id", conv))
            qualifier = self._request_model(ev, request)
            if qualifier is not None:
                attrs.append(("gen_ai.request.model", qualifier))
            if request is not None:
                self._request_attributes(request, attrs)
            o.provider = self._provider(ev, request)
        elif cat == "tool":
            qualifier = _lookup(ev, ("gen_ai.tool.name",), "str") or ev.name
            attrs.append(("gen_ai.tool.name", qualifier))
            kind = _lookup(ev, ("gen_ai.tool.type", "tool_type"), "str")
            if kind is not None:
                attrs.append(("gen_ai.tool.type", kind))
            call_id = _profile(ev).get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                call_id = _lookup(ev, ("gen_ai.tool.call.id", "tool_call_id"), "str")
            if call_id is not None:
                attrs.append(("gen_ai.tool.call.id", call_id))
            desc = _lookup(ev, ("gen_ai.tool.description", "tool_description", "description"),
                           "str")
            if desc is not None:
                attrs.append(("gen_ai.tool.description", desc))
            if ev.data is not None:
                attrs.append(("gen_ai.tool.call.arguments", _json(ev.data)))
        elif cat == "embedder":
            self._provider_and_server(ev, None, attrs)
            qualifier = self._request_model(ev, None)
            if qualifier is not None:
                attrs.append(("gen_ai.request.model", qualifier))
        elif cat == "retriever":
            self._provider_and_server(ev, None, attrs)
            qualifier = _lookup(ev, ("gen_ai.data_source.id", "data_source_id", "index_name",
                                     "collection_name"), "str")
            if qualifier is not None:
                attrs.append(("gen_ai.data_source.id", qualifier))
            model = self._request_model(ev, None)
            if model is not None:
                attrs.append(("gen_ai.request.model", model))
            top_k = _lookup(ev, ("gen_ai.retrieval.top_k", "top_k"), "int")
            if top_k is not None:
                attrs.append(("gen_ai.retrieval.top_k", top_k))
        o.gen_name = f"{op} {qualifier}" if qualifier else op
        return attrs

    @staticmethod
    def _request_attributes(request, attrs) -> None:
        params = request.params or {}
        api = request.api
        specific = request.api_specific or {}
        temperature = params.get("temperature")
        if isinstance(temperature, int | float) and not isinstance(temperature, bool):
            attrs.append(("gen_ai.request.temperature", float(temperature)))
        max_tokens = request.max_output_tokens
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            max_tokens = params.get("max_tokens")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
            attrs.append(("gen_ai.request.max_tokens", max_tokens))
        top_p = params.get("top_p")
        if isinstance(top_p, int | float) and not isinstance(top_p, bool):
            attrs.append(("gen_ai.request.top_p", float(top_p)))
        stop = params.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(stop, list) and stop and all(isinstance(s, str) for s in stop):
            attrs.append(("gen_ai.request.stop_sequences", list(stop)))
        if request.stream is True:
            attrs.append(("gen_ai.request.stream", True))
        effort = _nz.reasoning_effort(request)
        if effort is not None:
            attrs.append(("gen_ai.request.reasoning.level", effort))
        if _nz.genai_output_type(request) == "json":  # the reference never writes "text"
            attrs.append(("gen_ai.output.type", "json"))
        system = _nz.genai_system_instructions(request)
        if system:
            attrs.append(("gen_ai.system_instructions", _json(system)))
        messages = _nz.genai_input_messages(request)
        if messages:
            attrs.append(("gen_ai.input.messages", _json(messages)))
        tools = _nz.genai_tool_definitions(request)
        if tools:
            attrs.append(("gen_ai.tool.definitions", _json(tools)))
        if api == "anthropic_messages":
            top_k = _scalar(specific.get("top_k"), "int")
            if top_k is not None:
                attrs.append(("gen_ai.request.top_k", top_k))
        if api == "openai_chat":
            for key, name in (("frequency_penalty", "gen_ai.request.frequency_penalty"),
                              ("n", "gen_ai.request.choice.count"),
                              ("presence_penalty", "gen_ai.request.presence_penalty"),
                              ("seed", "gen_ai.request.seed")):
                value = specific.get(key)
                if value is None or isinstance(value, bool):
                    continue
                if key == "n":
                    if isinstance(value, int) and value != 1:
                        attrs.append((name, value))
                elif key == "seed":
                    if isinstance(value, int):
                        attrs.append((name, value))
                elif isinstance(value, int | float):
                    attrs.append((name, float(value)))

    def end_attributes(self, ev, o, end_promoted, metadata) -> list:
        cat = o.category
        attrs: list = []
        if cat == "llm":
            response = _llm_response(ev)
            if response is None:
                return attrs
            if isinstance(response.id, str) and response.id:
                attrs.append(("gen_ai.response.id", response.id))
            if isinstance(response.model, str) and response.model:
                attrs.append(("gen_ai.response.model", response.model))
            reason = _nz.genai_finish_reason(response.finish_reason)
            if reason is not None:
                attrs.append(("gen_ai.response.finish_reasons", [reason]))
            messages = _nz.genai_output_messages(response)
            if messages:
                attrs.append(("gen_ai.output.messages", _json(messages)))
            usage = _nz.merged_usage(response, None, provider=getattr(o, "provider", None))
            for key, value in (("gen_ai.usage.input_tokens", usage.prompt_tokens),
                               ("gen_ai.usage.output_tokens", usage.completion_tokens),
                               ("gen_ai.usage.cache_read.input_tokens", usage.cache_read_tokens),
                               ("gen_ai.usage.cache_write.input_tokens",
                                usage.cache_write_tokens)):
                if value is not None:
                    attrs.append((key, value))
        elif cat == "embedder":
            model = _lookup(ev, ("gen_ai.response.model", "response_model", "model"), "str")
            if model is not None:
                attrs.append(("gen_ai.response.model", model))
            tokens = _lookup(ev, ("gen_ai.usage.input_tokens", "input_tokens", "prompt_tokens"),
                             "int")
            if tokens is not None:
                attrs.append(("gen_ai.usage.input_tokens", tokens))
        elif cat == "tool" and ev.data is not None:
            attrs.append(("gen_ai.tool.call.result", _json(ev.data)))
        return attrs


PROJECTIONS = {"full": FullProjection, "gen_ai": GenAIProjection,
               "openinference": OpenInferenceProjection}


class ProjectionDiagnostics:
    """The projection's diagnostics by code (``runtime_diagnostics``): each counted, the first
    of each code warned about; ``report`` is what a projection is given to call."""

    def __init__(self, owner):
        self._owner = owner  # the exporter, for its name in the warning
        self._lock = threading.Lock()
        self._entries: dict = {}  # code -> [message, count]

    def report(self, code: str, message: str) -> None:
        with self._lock:
            entry = self._entries.get(code)
            if entry is None:
                self._entries[code] = [message, 1]
            else:
                entry[1] += 1
        if entry is None:
            _core._warn_quietly(f"nemoflow: exporter {self._owner.name!r}: {message} ({code}); "
                                "further occurrences are counted in nemoflow.diagnostics()")

    def counts(self) -> dict:
        with self._lock:
            return {code: e[1] for code, e in self._entries.items()}

    def entries(self) -> list:
        """``[(code, message, count)]``."""
        with self._lock:
            return [(code, e[0], e[1]) for code, e in self._entries.items()]


def projection_for(config, report):
    """The projection an ``OpenTelemetryConfig`` names, reporting through ``report``."""
    return PROJECTIONS[config.type](
        mark_projection=config.mark_projection,
        mark_exclude_names=list(config.mark_exclude_names),
        attribute_mappings=config.attribute_mappings,
        promote_metadata_prefixes=config.promote_metadata_prefixes,
        report=report)
