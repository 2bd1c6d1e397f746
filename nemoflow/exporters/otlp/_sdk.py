"""The bridge to the OpenTelemetry Python SDK (INTEROP §12.3), both directions.

*Joining an existing trace*: while an OpenTelemetry exporter is attached and
``nf.configure(otel_parent="auto")``, the core calls ``capture()`` at the start of every
top-level scope or mark; the span context it returns travels with the event
(``event.otel_parent``) and the projections make the nemoflow span its child.

*The user's SDK pipeline*: ``OpenTelemetrySdkSubscriber`` runs a projection on the delivery
thread and hands each nemoflow span to an SDK ``SpanProcessor`` as a real
``opentelemetry.sdk.trace.Span``, started at the scope's start and ended at its end.
"""

from __future__ import annotations

import contextvars
import threading

from ..._backend import core as _core
from .._base import Exporter
from ._model import STATUS_ERROR, STATUS_OK, InstrumentationScope, Resource

__all__ = ["OpenTelemetrySdkSubscriber", "attached", "capture", "capture_failures",
           "detached"]

# --- joining the current OpenTelemetry span ---------------------------------------------------

_lock = threading.Lock()
_attached: set = set()  # ids of the OpenTelemetry exporters registered now
_get_current_span = None
_capture_failures = 0


def capture():
    """The valid ``SpanContext`` of the current OpenTelemetry span, or None (traced thread)."""
    global _capture_failures
    try:
        span = _get_current_span()
        if span is None:
            return None
        ctx = span.get_span_context()
        return ctx if ctx.is_valid else None
    except Exception as exc:  # a broken OpenTelemetry setup must not break the traced program
        _capture_failures += 1
        if _capture_failures == 1:
            _core._warn_quietly(f"nemoflow: reading the current OpenTelemetry span raised "
                                f"{type(exc).__name__}: {exc}; such scopes start traces of "
                                "their own (counted as otel_parent_failures in "
                                "nemoflow.diagnostics())")
        return None


def capture_failures() -> int:
    """How often reading the current OpenTelemetry span raised (the span then starts a
    trace of its own)."""
    return _capture_failures


def attached(exporter) -> None:
    """An OpenTelemetry exporter was registered: capture parents while any is."""
    global _get_current_span
    with _lock:
        _attached.add(id(exporter))
        if _get_current_span is None:
            getter = _span_getter()
            if getter is None:
                return  # without the OpenTelemetry API there is no span to join
            _get_current_span = getter
        _core.set_otel_capture(capture, _context_var())


def _span_getter():
    """A function returning the current OpenTelemetry span or None; None without the API."""
    try:
        from opentelemetry.trace import get_current_span
    except ImportError:
        return None
    try:
        # The context's span entry read directly: a third of get_current_span()'s cost on
        # the traced thread, which pays it at every top-level scope.
        from opentelemetry.context import get_current
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:
        return get_current_span
    return lambda: get_current().get(_SPAN_KEY)


def _context_var():
    """OpenTelemetry's context ContextVar when it keeps its context in one (the default
    runtime context), else None; the core skips the hook while that context is empty."""
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
    except ImportError:
        return None
    var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
    return var if isinstance(var, contextvars.ContextVar) else None


def detached(exporter) -> None:
    """An OpenTelemetry exporter was deregistered."""
    with _lock:
        _attached.discard(id(exporter))
        if not _attached:
            _core.set_otel_capture(None)


# --- nemoflow spans into the SDK --------------------------------------------------------------

_PROJECTION_OPTIONS = ("mark_projection", "mark_exclude_names", "attribute_mappings",
                       "promote_metadata_prefixes", "instrumentation_scope", "service_name",
                       "service_namespace", "service_version", "resource_attributes")


def _sdk():
    try:
        from opentelemetry import trace as api
        from opentelemetry.sdk import trace as sdk
        from opentelemetry.sdk.resources import Resource as SdkResource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
    except ImportError as exc:
        raise ImportError("the OpenTelemetry SDK bridge needs opentelemetry-sdk "
                          "(pip install 'nemoflow[otel]')") from exc
    return api, sdk, SdkResource, SdkScope


class OpenTelemetrySdkSubscriber(Exporter):
    """Delivers nemoflow's spans to an OpenTelemetry SDK ``SpanProcessor`` (made by
    ``OpenTelemetrySubscriber.from_tracer_provider`` / ``.from_span_processor``)."""

    default_name = "opentelemetry-sdk"

    def __init__(self, processor, config, resource=None):
        super().__init__()
        api, sdk, SdkResource, SdkScope = _sdk()
        if not callable(getattr(processor, "on_start", None)) or not callable(
                getattr(processor, "on_end", None)):
            raise TypeError("processor must be an OpenTelemetry SpanProcessor")
        from .projections import ProjectionDiagnostics, projection_for

        self.config = config
        self._processor = processor
        self._diagnostics = ProjectionDiagnostics(self)
        self._projection = projection_for(config, self._diagnostics.report)
        if resource is None:
            ours = Resource.for_service(config.service_name,
                                        service_namespace=config.service_namespace,
                                        service_version=config.service_version,
                                        resource_attributes=config.resource_attributes)
            resource = SdkResource(dict(ours.attributes))
        self.resource = resource
        self.scope = SdkScope(InstrumentationScope(config.instrumentation_scope).name)
        self._api = api
        self._span_class = type("NemoflowSpan", (sdk.Span,), {"__module__": __name__})
        # Unset limits: the SDK's default of 128 attributes would cut the full projection.
        u = sdk.SpanLimits.UNSET
        self._limits = sdk.SpanLimits(
            max_attributes=u, max_events=u, max_links=u, max_span_attributes=u,
            max_event_attributes=u, max_link_attributes=u, max_attribute_length=u,
            max_span_attribute_length=u)
        self._kinds = {1: api.SpanKind.INTERNAL, 2: api.SpanKind.SERVER,
                       3: api.SpanKind.CLIENT, 4: api.SpanKind.PRODUCER,
                       5: api.SpanKind.CONSUMER}
        self._sampled = api.TraceFlags(api.TraceFlags.SAMPLED)
        self._states: dict = {"": api.TraceState()}
        self._started: dict = {}  # scope uuid -> SDK span, from start to end
        self._exported = 0
        self._stats_lock = threading.Lock()

    # --- registration: an attached bridge also joins the current OpenTelemetry span -------

    def register(self, name: str) -> None:
        """Start receiving events, under ``name`` (``AlreadyExistsError`` if it is taken)."""
        super().register(name)
        attached(self)

    def deregister(self, name: str) -> bool:
        """Stop receiving under ``name``; what was emitted before is still delivered first."""
        found = super().deregister(name)
        if not self._names:
            detached(self)
        return found

    # --- the delivery thread -------------------------------------------------------------

    def export(self, events) -> None:
        """Project a batch of events; start and end the matching SDK spans."""
        if self._closed:
            return
        failure = None
        for ev in events:
            try:
                self._one(ev)
            except Exception as exc:  # one bad event must not cost the rest of the batch
                if failure is None:
                    failure = exc
        if failure is not None:
            raise failure  # the core counts it and reports it once

    def _one(self, ev) -> None:
        proj = self._projection
        spans = proj.on_event(ev)
        if ev.kind == "scope" and ev.scope_category == "start":
            o = proj._open.get(ev.uuid)
            if o is not None:
                span = self._new(o.name, o.trace_id, o.span_id, o.parent_span_id, o.flags,
                                 o.trace_state, o.kind, o.attrs)
                span.start(start_time=o.start_ns)
                self._started[ev.uuid] = span
            return
        for nf_span in spans or ():
            span = self._started.pop(ev.uuid, None) if ev.kind == "scope" else None
            if span is None:  # a mark span: no start event of its own
                span = self._new(nf_span.name, nf_span.trace_id, nf_span.span_id,
                                 nf_span.parent_span_id, nf_span.flags, nf_span.trace_state,
                                 nf_span.kind, ())
                span.start(start_time=nf_span.start_ns)
            self._finish(span, nf_span)

    def _state(self, header: str):
        state = self._states.get(header)
        if state is None:
            state = self._api.TraceState.from_header([header])
            if len(self._states) < 1024:
                self._states[header] = state
        return state

    def _new(self, name, trace_id, span_id, parent_span_id, flags, trace_state, kind, attrs):
        api = self._api
        state = self._state(trace_state)
        context = api.SpanContext(int.from_bytes(trace_id, "big"), int.from_bytes(span_id, "big"),
                                  is_remote=False, trace_flags=self._sampled,
                                  trace_state=state)
        parent = None
        if parent_span_id is not None:
            parent = api.SpanContext(int.from_bytes(trace_id, "big"),
                                     int.from_bytes(parent_span_id, "big"),
                                     is_remote=bool(flags & 0x200), trace_flags=self._sampled,
                                     trace_state=state)
        return self._span_class(
            name, context, parent=parent, resource=self.resource,
            attributes=dict(attrs) if attrs else None,
            kind=self._kinds.get(kind, api.SpanKind.INTERNAL),
            span_processor=self._processor, limits=self._limits,
            instrumentation_scope=self.scope)

    def _finish(self, span, nf_span) -> None:
        api = self._api
        if span.name != nf_span.name:
            span.update_name(nf_span.name)
        if nf_span.attributes:
            span.set_attributes(dict(nf_span.attributes))
        for event in nf_span.events:
            span.add_event(event.name, dict(event.attributes), timestamp=event.time_ns)
        if nf_span.status_code == STATUS_OK:
            span.set_status(api.Status(api.StatusCode.OK))
        elif nf_span.status_code == STATUS_ERROR:
            span.set_status(api.Status(api.StatusCode.ERROR, nf_span.status_message or None))
        span.end(end_time=nf_span.end_ns)
        with self._stats_lock:
            self._exported += 1

    # --- user threads --------------------------------------------------------------------

    def _flush(self, timeout: float | None) -> None:
        millis = 30000 if timeout is None else max(0, int(timeout * 1000))
        self._processor.force_flush(millis)

    def _close(self, timeout: float | None) -> None:
        # The processor (and provider) belong to the application: flushed, never shut down.
        finish = getattr(self._projection, "shutdown", None)
        if callable(finish):
            finish()
        self._started.clear()
        try:
            self._flush(timeout)
        except Exception as exc:
            self._report("flush", f"the span processor's force_flush failed: {exc}")

    def stats(self) -> dict:
        """Spans handed to the processor, the projection's counters and diagnostics."""
        out = super().stats()
        with self._stats_lock:
            out["spans_exported"] = self._exported
        out["otel_parent_failures"] = _capture_failures
        out.update(self._projection.stats())
        out["diagnostics"] = self._diagnostics.counts()
        return out

    def __repr__(self):
        return f"<OpenTelemetrySdkSubscriber {self.name!r} into {self._processor!r}>"
