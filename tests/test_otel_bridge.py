"""The bridge to the OpenTelemetry Python SDK (INTEROP §12.3), with the real SDK, both ways.

- Joining: a top-level nemoflow scope (or mark) started while an OpenTelemetry span is current
  becomes that span's child in the exported spans (ids, flags, trace state); the ATOF lines
  do not change.
- Delivering: ``OpenTelemetrySubscriber.from_tracer_provider`` / ``.from_span_processor``
  hand nemoflow's spans to the SDK as real ``opentelemetry.sdk.trace.Span`` objects.
"""

from __future__ import annotations

import uuid

import pytest

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
import otel_program
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_collector import Collector

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


@pytest.fixture
def sdk():
    """A TracerProvider exporting to memory, and its tracer."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "app"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, provider.get_tracer("app"), memory
    provider.shutdown()


def _subscriber(nf, collector, otel_type="full"):
    sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(otel_type, collector.url,
                                                            scheduled_delay_millis=10))
    sub.register("otel")
    return sub


def _spans(sub, collector) -> dict:
    sub.force_flush(5)
    sub.shutdown(2)
    return {s.name: s for s in collector.spans()}


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


# --- joining the current OpenTelemetry span --------------------------------------------------

def test_top_level_scope_joins_the_current_otel_span(nf, collector, sdk, events):
    _, tracer, _ = sdk
    sub = _subscriber(nf, collector)
    with tracer.start_as_current_span("request") as request:
        with nf.scope.scope("agent", nf.ScopeType.Agent, metadata={"session_id": "s"}) as ag:
            with nf.scope.scope("tool", nf.ScopeType.Tool) as tool:
                pass
        nf.scope.event("top-mark")
    with nf.scope.scope("after", nf.ScopeType.Function) as after:
        pass
    spans = _spans(sub, collector)
    ctx = request.get_span_context()
    agent = spans["agent"]
    assert agent.trace_id.hex() == _hex(ctx.trace_id, 32)
    assert agent.parent_span_id.hex() == _hex(ctx.span_id, 16)
    assert agent.span_id == uuid.UUID(ag.uuid).bytes[8:]  # nemoflow's own id, as always
    assert agent.flags == 257  # a local parent: sampled, has-is-remote, not remote
    assert spans["tool"].trace_id == agent.trace_id
    assert spans["tool"].parent_span_id == agent.span_id
    assert spans["tool"].span_id == uuid.UUID(tool.uuid).bytes[8:]
    mark = spans["mark:top-mark"]  # a top-level mark joins the same way
    assert mark.trace_id == agent.trace_id
    assert mark.parent_span_id.hex() == _hex(ctx.span_id, 16)
    # not a trace root: no session identity
    keys = {a.key for a in agent.attributes}
    assert "nemo_relay.session.instance_id" not in keys and "session.id" not in keys
    # outside the OpenTelemetry span, a top-level scope is a trace root again
    assert spans["after"].trace_id == uuid.UUID(after.uuid).bytes
    assert spans["after"].parent_span_id == b""
    # the ATOF lines are unchanged: parent_uuid is still the implicit root, no new field
    starts = [e for e in events if e.kind == "scope" and e.scope_category == "start"]
    line = starts[0].to_dict()
    assert line["parent_uuid"] == ag.parent_uuid
    assert set(line) == set(starts[-1].to_dict())
    assert "otel" not in starts[0].to_json()


def test_remote_parent_sets_flags_and_trace_state(nf, collector):
    sub = _subscriber(nf, collector)
    carrier = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=abc,x=1"}
    token = otel_context.attach(propagate.extract(carrier))
    try:
        with nf.scope.scope("handler", nf.ScopeType.Function):
            with nf.scope.scope("step", nf.ScopeType.Function):
                pass
    finally:
        otel_context.detach(token)
    spans = _spans(sub, collector)
    handler, step = spans["handler"], spans["step"]
    assert handler.trace_id.hex() == TRACE
    assert handler.parent_span_id.hex() == PARENT
    assert handler.flags == 769  # under a remote parent
    assert handler.trace_state == "vendor=abc,x=1"
    assert step.trace_id.hex() == TRACE and step.parent_span_id == handler.span_id
    assert step.flags == 257 and step.trace_state == "vendor=abc,x=1"


def test_nested_scopes_never_read_the_otel_span(nf, collector, sdk):
    _, tracer, _ = sdk
    sub = _subscriber(nf, collector)
    with nf.scope.scope("outer", nf.ScopeType.Function) as outer:
        with tracer.start_as_current_span("inside"):
            with nf.scope.scope("inner", nf.ScopeType.Function):
                pass
    spans = _spans(sub, collector)
    assert spans["outer"].trace_id == uuid.UUID(outer.uuid).bytes
    assert spans["inner"].parent_span_id == spans["outer"].span_id


def test_otel_parent_off(nf, collector, sdk):
    _, tracer, _ = sdk
    nf.configure(otel_parent="off")
    try:
        sub = _subscriber(nf, collector)
        with tracer.start_as_current_span("request"):
            with nf.scope.scope("alone", nf.ScopeType.Function) as alone:
                pass
        spans = _spans(sub, collector)
    finally:
        nf.configure(otel_parent="auto")
    assert spans["alone"].trace_id == uuid.UUID(alone.uuid).bytes
    assert spans["alone"].parent_span_id == b""
    with pytest.raises(ValueError, match="otel_parent"):
        nf.configure(otel_parent="on")


def test_context_is_read_only_while_an_otel_exporter_is_attached(nf, collector, sdk, events):
    _, tracer, _ = sdk
    with tracer.start_as_current_span("request"):
        with nf.scope.scope("unattached", nf.ScopeType.Function):
            pass
    sub = _subscriber(nf, collector)
    with tracer.start_as_current_span("request") as request:
        with nf.scope.scope("attached", nf.ScopeType.Function):
            nf.scope.event("nested-mark")
    sub.shutdown(2)
    with tracer.start_as_current_span("request"):
        with nf.scope.scope("detached", nf.ScopeType.Function):
            pass
    by = {(e.name, e.scope_category if e.kind == "scope" else "mark"): e for e in events}
    assert by[("unattached", "start")].otel_parent is None
    assert by[("detached", "start")].otel_parent is None
    got = by[("attached", "start")].otel_parent
    assert got == request.get_span_context()
    assert by[("attached", "end")].otel_parent is None
    assert by[("nested-mark", "mark")].otel_parent is None  # its parent is a scope


def test_broken_otel_api_does_not_break_the_program(nf, collector, monkeypatch):
    from nemoflow.exporters.otlp import _sdk

    sub = _subscriber(nf, collector)

    def broken():
        raise RuntimeError("no context")

    monkeypatch.setattr(_sdk, "_get_current_span", broken)
    monkeypatch.setattr(_sdk, "_capture_failures", 0)
    token = otel_context.attach(otel_context.set_value("k", "v"))  # a context to read
    try:
        with pytest.warns(RuntimeWarning, match="current OpenTelemetry span raised"):
            with nf.scope.scope("survives", nf.ScopeType.Function) as s:
                pass
    finally:
        otel_context.detach(token)
    spans = _spans(sub, collector)
    assert spans["survives"].trace_id == uuid.UUID(s.uuid).bytes
    assert sub.stats()["otel_parent_failures"] == 1


# --- delivering nemoflow spans into the SDK --------------------------------------------------

class Recorder(SpanProcessor):
    """Records on_start / on_end calls in order."""

    def __init__(self):
        self.calls = []
        self.spans = []

    def on_start(self, span, parent_context=None):
        self.calls.append(("start", span.name))
        self.spans.append(span)

    def on_end(self, span):
        self.calls.append(("end", span.name))


def test_from_tracer_provider_delivers_sdk_spans(nf, sdk):
    provider, _, memory = sdk
    recorder = Recorder()
    provider.add_span_processor(recorder)
    sub = nf.OpenTelemetrySubscriber.from_tracer_provider(provider, "full",
                                                         instrumentation_scope="agents")
    sub.register("sdk")
    wide = {f"k{i:03d}": i for i in range(200)}  # beyond the SDK's default 128 attributes
    with nf.scope.scope("agent", nf.ScopeType.Agent, input=wide) as ag:
        with nf.scope.scope("tool", nf.ScopeType.Tool) as tool:
            pass
    sub.force_flush(5)
    sub.shutdown(2)
    spans = {s.name: s for s in memory.get_finished_spans()}
    agent, tl = spans["agent"], spans["tool"]
    assert all(isinstance(s, SdkSpan) for s in recorder.spans)
    assert _hex(agent.context.trace_id, 32) == uuid.UUID(ag.uuid).hex
    assert _hex(agent.context.span_id, 16) == uuid.UUID(ag.uuid).hex[16:]
    assert agent.parent is None
    assert _hex(tl.context.span_id, 16) == uuid.UUID(tool.uuid).hex[16:]
    assert tl.parent.span_id == agent.context.span_id and not tl.parent.is_remote
    assert tl.context.trace_id == agent.context.trace_id
    assert tl.kind == trace.SpanKind.CLIENT and agent.kind == trace.SpanKind.INTERNAL
    assert agent.resource.attributes["service.name"] == "app"  # the provider's resource
    assert agent.instrumentation_scope.name == "agents"
    assert sum(k.startswith("nemo_relay.start.data.") for k in agent.attributes) == 200
    assert agent.dropped_attributes == 0
    assert agent.start_time < tl.start_time < tl.end_time < agent.end_time
    assert recorder.calls == [("start", "agent"), ("start", "tool"), ("end", "tool"),
                              ("end", "agent")]
    assert sub.stats()["spans_exported"] == 2


@pytest.mark.parametrize("otel_type", ["full", "gen_ai", "openinference"])
def test_sdk_spans_equal_the_otlp_spans(nf, collector, otel_type):
    """The same program gives the same spans through the SDK as through nemoflow's own OTLP
    exporter: names, ids, parents, kinds, times, attributes, events, status."""
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    sub = nf.OpenTelemetrySubscriber.from_span_processor(processor, otel_type,
                                                        service_name="svc")
    sub.register("sdk")
    ours = _subscriber(nf, collector, otel_type)
    otel_program.run(nf)
    sub.force_flush(5)
    sub.shutdown(2)
    pb = _spans(ours, collector)
    got = {s.name: s for s in memory.get_finished_spans()}
    assert set(got) == set(pb)
    for name, p in pb.items():
        s = got[name]
        assert s.context.trace_id.to_bytes(16, "big") == p.trace_id, name
        assert s.context.span_id.to_bytes(8, "big") == p.span_id, name
        parent = s.parent.span_id.to_bytes(8, "big") if s.parent is not None else b""
        assert parent == p.parent_span_id, name
        assert s.kind.value + 1 == p.kind, name
        assert (s.start_time, s.end_time) == (p.start_time_unix_nano, p.end_time_unix_nano)
        assert s.status.status_code.value == p.status.code, name
        assert set(s.attributes) == {a.key for a in p.attributes}, name
        assert [e.name for e in s.events] == [e.name for e in p.events], name
        assert s.resource.attributes["service.name"] == "svc"


def test_both_directions_make_one_trace(nf, sdk):
    provider, tracer, memory = sdk
    sub = nf.OpenTelemetrySubscriber.from_tracer_provider(provider, "openinference")
    sub.register("sdk")
    with tracer.start_as_current_span("http.request") as request:
        with nf.scope.scope("agent", nf.ScopeType.Agent):
            h = nf.llm.call("openai.chat", nf.LLMRequest({}, otel_program.REQUEST))
            nf.llm.call_end(h, otel_program.RESPONSE)
    sub.force_flush(5)
    sub.shutdown(2)
    spans = {s.name: s for s in memory.get_finished_spans()}
    root = request.get_span_context()
    assert {s.context.trace_id for s in spans.values()} == {root.trace_id}
    assert spans["agent"].parent.span_id == root.span_id
    assert spans["openai.chat"].parent.span_id == spans["agent"].context.span_id
    assert spans["openai.chat"].attributes["llm.token_count.total"] == 42


def test_sdk_subscriber_options_are_checked(nf, sdk):
    provider, _, _ = sdk
    with pytest.raises(ValueError, match="type must be"):
        nf.OpenTelemetrySubscriber.from_tracer_provider(provider, "chat")
    with pytest.raises(TypeError, match="not used with an OpenTelemetry SDK pipeline"):
        nf.OpenTelemetrySubscriber.from_tracer_provider(provider, endpoint="http://x")
    with pytest.raises(TypeError, match="TracerProvider"):
        nf.OpenTelemetrySubscriber.from_tracer_provider(object())
    with pytest.raises(TypeError, match="SpanProcessor"):
        nf.OpenTelemetrySubscriber.from_span_processor(object())


def test_openinference_subscriber_from_span_processor(nf):
    memory = InMemorySpanExporter()
    sub = nf.OpenInferenceSubscriber.from_span_processor(SimpleSpanProcessor(memory))
    sub.register("oi-sdk")
    with nf.scope.scope("agent", nf.ScopeType.Agent):
        pass
    sub.shutdown(2)
    (span,) = memory.get_finished_spans()
    assert span.attributes["openinference.span.kind"] == "AGENT"
    assert span.resource.attributes["service.name"] == "unknown_service"
