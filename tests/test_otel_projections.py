"""The ``full``, ``gen_ai`` and ``openinference`` projections and the public OpenTelemetry API.

Three layers of checks:
- replay: ATOF events recorded from NeMo Relay 0.10.4 (``otel_reference_fixtures.json``, with
  the spans it exported for them) go through our projections, which must give the same spans
  byte for byte (ids, parents, flags, names, kinds, times, attributes in order, events, status);
- rules: small event streams for each span rule, on both cores, through the real pipeline into
  a loopback collector;
- side by side: the same program run on nemoflow and on ``nemo_relay`` (when installed), each
  exporting to a loopback collector, compared span by span.
"""

from __future__ import annotations

import importlib
import json
import os
import uuid
import warnings

import pytest

pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
import otel_program
import otel_replay
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from otlp_collector import Collector

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "otel_reference_fixtures.json")) as _f:
    FIXTURES = json.load(_f)["cases"]


@pytest.fixture
def otlp(nf):
    return importlib.import_module("nemoflow.exporters.otlp")


@pytest.fixture
def projections(nf):
    return importlib.import_module("nemoflow.exporters.otlp.projections")


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def _case_id(case):
    return f"{case['program']}-{case['otel_type']}"


# --- replay of the reference's own spans ---------------------------------------------------

@pytest.mark.parametrize("case", FIXTURES, ids=_case_id)
@pytest.mark.parametrize("derive_root", [False, True], ids=["given-root", "derived-root"])
def test_replay_matches_reference(nf, otlp, projections, case, derive_root):
    """Same events → same spans as nemo-relay 0.10.4, attribute for attribute, in order.
    ``derived-root`` drops the events' ``propagation_root_uuid`` (nemoflow's events lack it)
    and derives the root from the stream."""
    events = case["events"]
    if derive_root:
        events = [{k: v for k, v in e.items() if k != "propagation_root_uuid"} for e in events]
    reported = []
    proj = projections.PROJECTIONS[case["otel_type"]](
        report=lambda code, msg: reported.append((code, msg)), **case["options"])
    mine = [otel_replay.span_dict(s) for s in otel_replay.project(proj, events, otlp)]
    ref = [otel_replay.span_dict(PbSpan.FromString(bytes.fromhex(s))) for s in case["spans"]]
    key = lambda s: s["span_id"]  # noqa: E731 (the reference's batches are unordered)
    assert sorted(mine, key=key) == sorted(ref, key=key)
    assert case["path"] == "/v1/traces"
    assert case["content_type"] == "application/x-protobuf"
    codes = {}
    for code, msg in reported:
        codes.setdefault(code, [msg, 0])[1] += 1
    assert sorted((c, m, n) for c, (m, n) in codes.items()) == sorted(
        tuple(d) for d in case["diagnostics"])


# --- helpers for rule tests ----------------------------------------------------------------

def _attrs(span) -> list:
    from google.protobuf import json_format
    out = []
    for a in span.attributes:
        v = json_format.MessageToDict(a.value)
        (kind, value), = v.items()
        if kind == "intValue":
            value = int(value)
        elif kind == "arrayValue":
            value = [next(iter(x.values())) for x in value.get("values", [])]
        out.append((a.key, value))
    return out


def _amap(span) -> dict:
    return dict(_attrs(span))


def _subscriber(nf, collector, otel_type="full", **options):
    options.setdefault("scheduled_delay_millis", 10)
    sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(otel_type, collector.url,
                                                            **options))
    sub.register("otel")
    return sub


def _spans(sub, collector):
    sub.force_flush(5)
    sub.shutdown(2)
    return {s.name: s for s in collector.spans()}


# --- ids, parents, trace membership ---------------------------------------------------------

def test_ids_parents_and_trace_membership(nf, collector):
    sub = _subscriber(nf, collector)
    with nf.scope.scope("top", nf.ScopeType.Function) as top:
        with nf.scope.scope("child", nf.ScopeType.Tool) as child:
            pass
    with nf.scope.scope("second", nf.ScopeType.Function) as second:
        pass
    spans = _spans(sub, collector)
    top_id = uuid.UUID(top.uuid).bytes
    assert spans["top"].trace_id == top_id  # a trace root: trace id = its own uuid
    assert spans["top"].span_id == top_id[8:]
    assert spans["top"].parent_span_id == b""
    assert spans["child"].trace_id == top_id
    assert spans["child"].parent_span_id == top_id[8:]
    assert spans["child"].span_id == uuid.UUID(child.uuid).bytes[8:]
    assert spans["child"].kind == 3 and spans["top"].kind == 1  # CLIENT for tools
    assert spans["second"].trace_id == uuid.UUID(second.uuid).bytes  # a second trace
    assert {s.flags for s in spans.values()} == {257}
    a = _amap(spans["top"])
    assert a["nemo_relay.parent_uuid"] == top.parent_uuid
    assert a["nemo_relay.session.instance_id"] == top.parent_uuid  # the stack root
    assert "nemo_relay.session.instance_id" not in _amap(spans["child"])
    assert collector.requests[0][0] == "/v1/traces"
    assert collector.requests[0][1]["Content-Type"] == "application/x-protobuf"


def test_a_continued_trace_keeps_the_callers_ids_flags_and_tracestate(nf, collector):
    # §3 step 3 with §12.2: spans under an incoming traceparent join the caller's trace as
    # children of its span (remote: flags 769), and the tracestate travels with the trace.
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    carrier = {"TraceParent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=abc"}
    sub = _subscriber(nf, collector)
    with nf.continue_trace(carrier):
        with nf.scope.scope("handler", nf.ScopeType.Agent):
            nf.scope.event("orphan-free")
            with nf.scope.scope("step", nf.ScopeType.Tool):
                pass
    spans = _spans(sub, collector)
    handler, step = spans["handler"], spans["step"]
    assert handler.trace_id.hex() == step.trace_id.hex() == trace_id
    assert handler.parent_span_id.hex() == parent_id
    assert handler.flags == 769 and step.flags == 257  # remote parent, then a local one
    assert step.parent_span_id == handler.span_id
    assert handler.trace_state == step.trace_state == "vendor=abc"
    assert "nemo_relay.session.instance_id" not in _amap(handler)  # not a trace root


def test_agent_is_the_propagation_root(nf, collector):
    sub = _subscriber(nf, collector)
    with nf.scope.scope("agent", nf.ScopeType.Agent, metadata={"session_id": "s",
                                                                "user_id": "u",
                                                                "agent_kind": "k"}) as ag:
        pass
    spans = _spans(sub, collector)
    a = _attrs(spans["agent"])
    keys = [k for k, _ in a]
    i = keys.index("session.id")
    assert a[i:i + 4] == [("session.id", "s"), ("user.id", "u"), ("nemo_relay.agent.kind", "k"),
                          ("nemo_relay.session.instance_id", ag.uuid)]


def test_completed_span_cache_keeps_4096(nf, projections):
    """A mark whose parent ended is parented through the cache of 4096 completed spans;
    beyond that, it starts its own trace."""
    proj = projections.FullProjection()
    root = str(uuid.uuid4())

    def scope(u, cat, parent=root):
        d = {"kind": "scope", "uuid": u, "parent_uuid": parent, "name": "s", "category": cat,
             "timestamp": "2026-01-01T00:00:00.000000001+00:00", "attributes": []}
        return d

    first = str(uuid.uuid4())
    for d in (dict(scope(first, "function"), scope_category="start"),
              dict(scope(first, "function"), scope_category="end")):
        proj.on_event(otel_replay.DictEvent(d))

    def mark(parent):
        return otel_replay.DictEvent({
            "kind": "mark", "uuid": str(uuid.uuid4()), "parent_uuid": parent, "name": "m",
            "timestamp": "2026-01-01T00:00:00.000000002+00:00"})

    [span] = proj.on_event(mark(first))
    assert span.parent_span_id == uuid.UUID(first).bytes[8:]
    assert ("nemo_relay.mark.orphan", True) in span.attributes
    for _ in range(4095):
        u = str(uuid.uuid4())
        proj.on_event(otel_replay.DictEvent(dict(scope(u, "function"), scope_category="start")))
        proj.on_event(otel_replay.DictEvent(dict(scope(u, "function"), scope_category="end")))
    [span] = proj.on_event(mark(first))
    assert span.parent_span_id is not None  # 4096 completed: still cached
    u = str(uuid.uuid4())
    proj.on_event(otel_replay.DictEvent(dict(scope(u, "function"), scope_category="start")))
    proj.on_event(otel_replay.DictEvent(dict(scope(u, "function"), scope_category="end")))
    m = mark(first)
    [span] = proj.on_event(m)
    assert span.parent_span_id is None  # evicted: a trace root of its own
    assert span.trace_id == uuid.UUID(m.uuid).bytes


# --- status, error.type, exception ---------------------------------------------------------

@pytest.mark.parametrize("code,expected", [("OK", (1, "")), ("ERROR", (2, "bad")),
                                           ("UNSET", (0, "")), ("weird", (0, "")),
                                           (7, (0, "")), (None, (0, ""))])
def test_status_from_end_metadata(nf, collector, code, expected, caplog):
    sub = _subscriber(nf, collector)
    h = nf.scope.push("s", nf.ScopeType.Function)
    meta = {"otel.status_description": "bad"}
    if code is not None:
        meta["otel.status_code"] = code
    nf.scope.pop(h, metadata=meta)
    span = _spans(sub, collector)["s"]
    assert (span.status.code, span.status.message) == expected
    logged = [r for r in caplog.records if "unknown otel.status_code" in r.getMessage()]
    assert len(logged) == (1 if code in ("weird", 7) else 0)


@pytest.mark.parametrize("otel_type", ["full", "gen_ai", "openinference"])
def test_error_type_and_exception_event(nf, collector, otel_type):
    sub = _subscriber(nf, collector, otel_type)
    outer = nf.scope.push("outer", nf.ScopeType.Function)
    a = nf.scope.push("a", nf.ScopeType.Function)
    nf.scope.pop(a, metadata={"otel.status_code": "ERROR", "error.type": "timeout",
                              "exception.type": "TimeoutError"})
    b = nf.scope.push("b", nf.ScopeType.Function)
    nf.scope.pop(b, metadata={"otel.status_code": "ERROR", "error.type": "later",
                              "exception.type": "KeyError"})
    nf.scope.pop(outer, metadata={"otel.status_code": "ERROR"})
    lone = nf.scope.push("lone", nf.ScopeType.Function)
    nf.scope.pop(lone, metadata={"otel.status_code": "ERROR"})
    spans = _spans(sub, collector)
    for name, err, exc in (("a", "timeout", "TimeoutError"), ("outer", "timeout", "TimeoutError"),
                           ("lone", "_OTHER", None)):
        span = spans[name]
        attrs = _attrs(span)
        if otel_type == "openinference":
            assert "error.type" not in dict(attrs)
        else:
            assert attrs[-1] == ("error.type", err)  # first failed child wins
        events = [(e.name, e.time_unix_nano, [(x.key, x.value.string_value)
                                              for x in e.attributes]) for e in span.events]
        if exc is None:
            assert events == []
        else:
            assert events == [("exception", span.end_time_unix_nano, [("exception.type", exc)])]


# --- flattening and attribute order --------------------------------------------------------

def test_full_attributes_flattening_and_order(nf, collector):
    sub = _subscriber(nf, collector)
    data = {"s": "x", "b": True, "f": 1.5, "i": 3, "big": 2 ** 64 - 1, "neg": -2,
            "none": None, "obj": {"z": 1, "a": [1, None]}, "arr": [3, "x"]}
    h = nf.tools.call("t", data, tool_call_id="c1", metadata={"m": 1})
    nf.tools.call_end(h, "done", metadata={"otel.status_code": "OK"})
    span = _spans(sub, collector)["t"]
    attrs = _attrs(span)
    assert attrs[:5] == [("nemo_relay.uuid", h.uuid), ("nemo_relay.parent_uuid", h.parent_uuid),
                         ("nemo_relay.scope_type", "tool"), ("nemo_relay.tool_call_id", "c1"),
                         ("nemo_relay.handle_attributes", "[]")]
    start_data = [(k, v) for k, v in attrs if k.startswith("nemo_relay.start.data.")]
    assert start_data == [
        ("nemo_relay.start.data.arr", '[3,"x"]'), ("nemo_relay.start.data.b", True),
        ("nemo_relay.start.data.big", "18446744073709551615"),
        ("nemo_relay.start.data.f", 1.5), ("nemo_relay.start.data.i", 3),
        ("nemo_relay.start.data.neg", -2), ("nemo_relay.start.data.obj", '{"a":[1,null],"z":1}'),
        ("nemo_relay.start.data.s", "x")]
    keys = [k for k, _ in attrs]
    assert keys[5 + len(start_data)] == "nemo_relay.start.metadata.m"
    assert keys.index("nemo_relay.start.input.s") < keys.index("nemo_relay.end.data")
    assert attrs[keys.index("nemo_relay.end.data")] == ("nemo_relay.end.data", "done")
    assert keys[-2:] == ["nemo_relay.end.metadata.otel.status_code", "nemo_relay.end.output"]
    assert span.status.code == 1


def test_flatten_rules(projections):
    out = []
    projections.flatten("p", {"b": None, "a": 1}, out)
    projections.flatten("q", None, out)
    projections.flatten("r", [1], out)
    projections.flatten("s", "text", out)
    projections.flatten("t", -(2 ** 70), out)
    assert out == [("p.a", 1), ("r", "[1]"), ("s", "text"), ("t", str(-(2 ** 70)))]


# --- metadata promotion, attribute mappings ------------------------------------------------

def test_metadata_promotion_and_diagnostics(nf, collector):
    sub = _subscriber(nf, collector, promote_metadata_prefixes=["app."],
                      attribute_mappings=[{"key": "nemo_relay.scope_type", "alias": "kind"}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = nf.scope.push("s", nf.ScopeType.Function,
                          metadata={"app.a": [1, 2], "app.obj": {"x": 1}, "app.keep": "start",
                                    "app.n": None, "other": 1})
        nf.scope.pop(h, metadata={"app.a": "end", "otel.status_code": "OK"})
        nf.scope.event("m", metadata={"app.mark": True})
        spans = _spans(sub, collector)
    attrs = _attrs(spans["s"])
    keys = [k for k, _ in attrs]
    assert "nemo_relay.start.metadata.app.a" not in keys  # promoted keys leave the flattening
    assert "nemo_relay.start.metadata.app.obj" in keys  # refused ones stay
    # the end metadata holds the start's keys too (merged), in their first order
    assert attrs[-3:] == [("kind", "function"), ("app.a", "end"), ("app.keep", "start")]
    assert ("app.mark", True) in _attrs(spans["mark:m"])
    stats = nf.diagnostics()["exporters"].get("otel") or sub.stats()
    diag = sub.runtime_diagnostics()
    assert diag.get("otel.metadata_promotion_value_unsupported.app.obj").count == 2
    assert diag.get("otel.metadata_promotion_value_unsupported.app.n").count == 2
    assert 'was not promoted: object values are not supported' in diag.get(
        "otel.metadata_promotion_value_unsupported.app.obj").message
    assert stats["diagnostics"]["otel.metadata_promotion_value_unsupported.app.obj"] == 2
    assert sum("app.obj" in str(w.message) for w in caught) == 1  # warned once


@pytest.mark.parametrize("prefixes,message", [
    (["a*"], "literal prefix, not a glob"), ([" a"], "surrounding whitespace"),
    (["a", "a"], "is duplicated"), (["a..b"], "separated by single dots"),
    ([""], "must not be blank")])
def test_promotion_prefix_validation(nf, prefixes, message):
    with pytest.raises(ValueError, match=message):
        nf.OpenTelemetryConfig("full", "http://127.0.0.1:1", promote_metadata_prefixes=prefixes)


@pytest.mark.parametrize("mappings,message", [
    ([{"key": " ", "alias": "x"}], "attribute mapping key must not be blank"),
    ([{"key": "k", "alias": ""}], "attribute mapping alias must not be blank"),
    ([{"key": "a", "alias": "x"}, {"key": "b", "alias": "x"}],
     'attribute mapping alias "x" is duplicated')])
def test_attribute_mapping_validation(nf, mappings, message):
    with pytest.raises(ValueError, match=message):
        nf.OpenTelemetryConfig("full", "http://127.0.0.1:1", attribute_mappings=mappings)


# --- marks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["inherit", "event", "tool"])
@pytest.mark.parametrize("otel_type", ["full", "gen_ai", "openinference"])
def test_marks(nf, collector, mode, otel_type):
    sub = _subscriber(nf, collector, otel_type, mark_projection=mode,
                      mark_exclude_names=["llm.chunk", "hooked"])
    with nf.scope.scope("parent", nf.ScopeType.Function) as parent:
        nf.scope.event("note", data={"x": 1}, metadata={"k": "v"})
        nf.scope.event("llm.chunk", data={"d": 1})
        nf.scope.event("h", metadata={"hook_event_name": "hooked"})
    nf.scope.event("late", handle=parent)
    nf.scope.event("top")
    by_name = _spans(sub, collector)
    if otel_type == "gen_ai":
        assert not [n for n in by_name if n.startswith("mark:")]
        assert not by_name["parent"].events
        return
    events = [e.name for e in by_name["parent"].events]
    if mode == "tool":
        assert events == ["llm.chunk", "h"]  # excluded by name or hook_event_name
        note = by_name["mark:note"]
        a = _attrs(note)
        assert note.parent_span_id == by_name["parent"].span_id
        assert note.start_time_unix_nano == note.end_time_unix_nano
        assert ("nemo_relay.mark.projection", "tool") in a
        assert "nemo_relay.mark.orphan" not in dict(a)
        if otel_type == "full":
            assert a[-2:] == [("nemo_relay.mark.projection", "tool"),
                              ("nemo_relay.scope_type", "tool")]
        else:
            assert a[-7:] == [("nemo_relay.mark.projection", "tool"),
                              ("openinference.span.kind", "TOOL"), ("tool.name", "note"),
                              ("tool_call.function.name", "note"), ("output.value", '{"x":1}'),
                              ("output.mime_type", "application/json"),
                              ("metadata", '{"k":"v"}')]
    else:
        assert events == ["note", "llm.chunk", "h"]
        ev = by_name["parent"].events[0]
        assert [(x.key) for x in ev.attributes] == [
            "nemo_relay.mark.uuid", "nemo_relay.mark.parent_uuid", "nemo_relay.mark.data.x",
            "nemo_relay.mark.metadata.k"]
    late = by_name["mark:late"]  # the parent has ended: an orphan span, still parented
    assert late.parent_span_id == by_name["parent"].span_id
    assert dict(_attrs(late))["nemo_relay.mark.orphan"] is True
    top = by_name["mark:top"]
    assert top.parent_span_id == b"" and top.kind == 1
    if otel_type == "openinference" and mode != "tool":
        assert ("openinference.span.kind", "CHAIN") in _attrs(top)


def test_metric_marks_are_skipped_and_counted(nf, collector):
    sub = _subscriber(nf, collector)
    schema = {"name": "nemo.relay.metric_measurements", "version": "1"}
    with nf.scope.scope("s", nf.ScopeType.Function):
        nf.scope.event("metric", data={"measurements": []}, data_schema=schema)
        nf.scope.event("bad", data={"nope": 1}, data_schema=schema)
    with pytest.warns(RuntimeWarning, match="metric mark"):
        spans = _spans(sub, collector)
    assert not spans["s"].events
    stats = sub.stats()
    assert stats["metric_marks_skipped"] == 2 and stats["metric_marks_invalid"] == 1
    assert sub.runtime_diagnostics().get("otel.metric_mark_invalid").count == 1


# --- unfinished spans, ends without start --------------------------------------------------

def test_unfinished_and_ends_without_start(nf, collector, projections):
    sub = _subscriber(nf, collector)
    h = nf.scope.push("open", nf.ScopeType.Function)
    sub.force_flush(5)
    stats = nf.diagnostics()["exporters"]["otel"]
    assert stats["spans_open"] == 1 and stats["spans_unfinished"] == 0
    sub.shutdown(2)
    assert sub.stats()["spans_unfinished"] == 1
    nf.scope.pop(h)
    proj = projections.FullProjection()
    assert proj.on_event(otel_replay.DictEvent({
        "kind": "scope", "scope_category": "end", "uuid": str(uuid.uuid4()),
        "parent_uuid": None, "name": "x", "category": "function",
        "timestamp": "2026-01-01T00:00:00.000000000+00:00"})) is None
    assert proj.stats()["ends_without_start"] == 1


# --- gen_ai and openinference on an LLM program --------------------------------------------

def test_gen_ai_output(nf, collector):
    sub = _subscriber(nf, collector, "gen_ai")
    otel_program.run(nf)
    spans = _spans(sub, collector)
    assert set(spans) == {"invoke_agent planner", "chat gpt-4o-mini", "execute_tool get_weather",
                          "validate", "inner", "retrieval docs"}
    for span in collector.spans():
        assert not [k for k, _ in _attrs(span) if k.startswith("nemo_relay.")]
    chat = _amap(spans["chat gpt-4o-mini"])
    assert chat["gen_ai.usage.input_tokens"] == 30
    assert chat["gen_ai.usage.output_tokens"] == 12
    assert chat["gen_ai.usage.cache_read.input_tokens"] == 8
    assert chat["gen_ai.response.finish_reasons"] == ["tool_call"]
    assert spans["chat gpt-4o-mini"].kind == 3
    assert spans["execute_tool get_weather"].kind == 1
    assert _attrs(spans["invoke_agent planner"]) == [
        ("gen_ai.operation.name", "invoke_agent"), ("gen_ai.conversation.id", "sess-1"),
        ("gen_ai.agent.name", "planner")]


def test_openinference_output(nf, collector):
    sub = nf.OpenInferenceSubscriber(nf.OpenInferenceConfig(collector.url,
                                                            scheduled_delay_millis=10))
    sub.register("oi")
    otel_program.run(nf)
    spans = _spans(sub, collector)
    llm = _amap(spans["openai.chat"])
    assert llm["openinference.span.kind"] == "LLM"
    assert llm["llm.token_count.prompt"] == 30 and llm["llm.token_count.total"] == 42
    assert llm["llm.model_name"] == "gpt-4o-mini-2024"
    assert llm["input.value"] == "system: Be terse.\n\nuser: Weather in Paris?"
    assert llm["output.value"] == "Checking.\nRequested tools: get_weather"
    assert _amap(spans["get_weather"])["tool.parameters"] == '{"city":"Paris"}'
    assert _amap(spans["planner"])["session.id"] == "sess-1"


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("args,options,message", [
    (("chat", "http://a"), {}, "type must be"),
    (("full", "http://a"), {"transport": "grpc"}, "transport must be"),
    (("full", "http://a"), {"transport": "udp"}, "transport must be"),
    (("full", " "), {}, "endpoint is required and must be nonblank"),
    (("full", None), {}, "endpoint is required and must be nonblank"),
    (("full", "http://a"), {"headers": {"a": 1}}, r"dict\[str, str\]"),
    (("full", "http://a"), {"resource_attributes": {"a": None}}, r"dict\[str, str\]"),
    (("full", "http://a"), {"headers": {"X-K": "1", "x-k": "2"}}, "unique ignoring ASCII case"),
    (("full", "http://a"), {"header_env": {"x-k": "NEMOFLOW_TEST_UNSET_VAR"}}, "is not set"),
    (("full", "http://a"), {"mark_projection": "span"}, "mark_projection must be"),
    (("full", "http://a"), {"timeout_millis": 0}, "timeout_millis"),
    (("full", "http://a"), {"overflow": "spill"}, "overflow"),
])
def test_config_errors(nf, args, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        nf.OpenTelemetryConfig(*args, **options)


def test_config_unknown_option(nf):
    with pytest.raises(TypeError, match="unknown OpenTelemetryConfig option"):
        nf.OpenTelemetryConfig("full", "http://a", colour="red")


@pytest.mark.parametrize("var", ["OTEL_EXPORTER_OTLP_HEADERS",
                                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS"])
def test_global_header_env_vars_refused(nf, monkeypatch, var):
    monkeypatch.setenv(var, "authorization=secret")
    with pytest.raises(ValueError, match=f"{var} is not supported"):
        nf.OpenTelemetryConfig("full", "http://127.0.0.1:1")
    cfg = nf.OpenTelemetryConfig()
    cfg.endpoint = "http://127.0.0.1:1"
    with pytest.raises(ValueError, match=var):
        nf.OpenTelemetrySubscriber(cfg)


def test_mutable_config_style(nf, collector, monkeypatch):
    monkeypatch.setenv("NEMOFLOW_TEST_TOKEN", "tok")
    cfg = nf.OpenTelemetryConfig()
    assert cfg.type == "full" and cfg.transport == "http_binary"
    assert cfg.service_name == "unknown_service" and cfg.instrumentation_scope == "opentelemetry"
    assert cfg.timeout_millis == 3000 and cfg.mark_exclude_names == ["llm.chunk"]
    cfg.endpoint = collector.url
    cfg.service_name = "svc"
    cfg.service_namespace = "ns"
    cfg.service_version = "1.2"
    cfg.instrumentation_scope = "my.scope"
    cfg.headers = {"x-a": "1"}
    cfg.set_header("x-b", "2")
    cfg.header_env = {"x-token": "NEMOFLOW_TEST_TOKEN"}
    cfg.resource_attributes = {"deployment.environment": "test"}
    cfg.set_resource_attribute("host.name", "h")
    cfg.scheduled_delay_millis = 10
    with pytest.raises(ValueError, match="type must be"):
        cfg.type = "logs"
    with pytest.raises(ValueError, match="transport must be"):
        cfg.transport = "grpc"
    with pytest.raises(ValueError, match=r"dict\[str, str\]"):
        cfg.headers = {"x": 1}
    sub = nf.OpenTelemetrySubscriber(cfg)
    sub.register("otel")
    with nf.scope.scope("s", nf.ScopeType.Function):
        pass
    _spans(sub, collector)
    path, headers, req, _ = collector.requests[0]
    assert path == "/v1/traces"
    assert headers["x-a"] == "1" and headers["x-b"] == "2" and headers["x-token"] == "tok"
    rs = req.resource_spans[0]
    assert [(a.key, a.value.string_value) for a in rs.resource.attributes] == [
        ("service.name", "svc"), ("service.namespace", "ns"), ("service.version", "1.2"),
        ("deployment.environment", "test"), ("host.name", "h")]
    assert rs.scope_spans[0].scope.name == "my.scope"
    assert rs.scope_spans[0].scope.version == ""


def test_default_resource_and_scope(nf, collector):
    sub = _subscriber(nf, collector)
    with nf.scope.scope("s", nf.ScopeType.Function):
        pass
    _spans(sub, collector)
    rs = collector.resource_spans()[0]
    assert [(a.key, a.value.string_value) for a in rs.resource.attributes] == [
        ("service.name", "unknown_service")]
    assert rs.scope_spans[0].scope.name == "opentelemetry"


def test_openinference_names(nf):
    cfg = nf.OpenInferenceConfig()
    assert cfg.type == "openinference" and cfg.endpoint is None
    with pytest.raises(ValueError, match="endpoint is required"):
        nf.OpenInferenceSubscriber(cfg)
    with pytest.raises(ValueError, match="openinference"):
        nf.OpenInferenceSubscriber(nf.OpenTelemetryConfig("full", "http://127.0.0.1:1"))


def test_register_deregister_and_export_failure(nf):
    sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
        "full", "http://127.0.0.1:9", timeout_millis=200, scheduled_delay_millis=10))
    sub.register("otel")
    assert "otel" in nf.diagnostics()["exporters"]
    with nf.scope.scope("s", nf.ScopeType.Function):
        pass
    with pytest.warns(RuntimeWarning, match="could not export"):
        with pytest.raises(nf.exporters.otlp.ExportError, match="OTLP export failed"):
            sub.force_flush(5)
    diag = sub.runtime_diagnostics()
    assert diag.get("otel.traces_export_failed").count == 1
    assert nf.diagnostics()["exporters"]["otel"]["spans_failed"] == 1
    assert sub.deregister("otel") is True
    assert sub.deregister("otel") is False
    sub.shutdown(1)


def test_otlp_json_file_transport(nf, tmp_path):
    json_format = pytest.importorskip("google.protobuf.json_format")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
        "gen_ai", transport="otlp_json_file", output_directory=str(tmp_path),
        filename="t.jsonl", mode="overwrite"))
    sub.register("file")
    otel_program.run(nf)
    sub.force_flush(5)
    sub.shutdown(2)
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    spans = [s for line in lines for rs in json_format.Parse(
        line, ExportTraceServiceRequest()).resource_spans for ss in rs.scope_spans
        for s in ss.spans]
    assert "invoke_agent planner" in {s.name for s in spans}


# --- side by side with the reference -------------------------------------------------------

def _normalized(spans) -> list:
    """Spans in start order, with uuids and ids replaced by their order of appearance."""
    spans = sorted(spans, key=lambda s: (s["start"], s["name"]))
    names: dict = {}

    def canon(text):
        if not isinstance(text, str):
            return text
        return names.setdefault(text, f"id{len(names)}") if _is_id(text) else text

    out = []
    for s in spans:
        attrs = []
        for k, v in s["attributes"]:
            if "stringValue" in v:
                v = {"stringValue": canon(v["stringValue"])}
            attrs.append((k, v))
        out.append({"name": s["name"], "kind": s["kind"], "flags": s["flags"],
                    "trace": canon(s["trace_id"]), "span": canon(s["span_id"]),
                    "parent": canon(s["parent_span_id"]) if s["parent_span_id"] else "",
                    "status": s["status"], "attributes": attrs,
                    "events": [(n, [(k, {"stringValue": canon(v["stringValue"])}
                                     if "stringValue" in v else v) for k, v in a])
                               for n, _, a in s["events"]],
                    "zero": s["start"] == s["end"]})
    return out


def _is_id(text: str) -> bool:
    if len(text) in (16, 32):
        try:
            int(text, 16)
            return True
        except ValueError:
            return False
    try:
        uuid.UUID(text)
        return len(text) == 36
    except ValueError:
        return False


@pytest.mark.parametrize("otel_type", ["full", "gen_ai", "openinference"])
def test_side_by_side_with_nemo_relay(nf, collector, otel_type):
    """The same program on nemo_relay and on nemoflow, each exporting to a loopback
    collector: the same spans, ids aside."""
    nr = pytest.importorskip("nemo_relay")
    ref_sub = nr.OpenTelemetrySubscriber(nr.OpenTelemetryConfig(otel_type, collector.url))
    ref_sub.register("nemoflow-side-by-side")
    try:
        otel_program.run(nr)
        ref_sub.force_flush()
    finally:
        ref_sub.deregister("nemoflow-side-by-side")
        ref_sub.shutdown()
    ref = [otel_replay.span_dict(s) for s in collector.spans()]
    ref_paths = {r[0] for r in collector.requests}
    collector.requests.clear()
    sub = _subscriber(nf, collector, otel_type)
    otel_program.run(nf)
    _spans(sub, collector)
    mine = [otel_replay.span_dict(s) for s in collector.spans()]
    assert ref_paths == {r[0] for r in collector.requests} == {"/v1/traces"}
    assert len(mine) == len(ref) > 0
    assert _normalized(mine) == _normalized(ref)


def test_runtime_diagnostics_report_dropped_spans(nf, collector):
    """``otel.spans_dropped`` mirrors the exporter's dropped count (drop mode, queue of 1,
    a collector that is slow to answer)."""
    import threading
    gate = threading.Event()
    handler = collector.server.RequestHandlerClass
    original = handler.do_POST

    def slow(self):
        gate.wait(5)
        original(self)

    handler.do_POST = slow
    try:
        sub = _subscriber(nf, collector, overflow="drop", max_queue_size=1,
                          max_export_batch_size=1, scheduled_delay_millis=0)
        with pytest.warns(RuntimeWarning, match="dropped"):
            for _ in range(50):
                with nf.scope.scope("s", nf.ScopeType.Function):
                    pass
            nf.subscribers.flush()
            dropped = sub.stats()["spans_dropped"]
            assert dropped > 0
            assert sub.runtime_diagnostics().get("otel.spans_dropped").count == dropped
    finally:
        gate.set()
        handler.do_POST = original
        sub.shutdown(5)


# --- any payload gives valid spans ---------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["a", "p.x", "p.y", "model", "usage", "content", "messages",
                         "choices", "session_id", "otel.status_code", "error.type",
                         "exception.type", "tool_call_id", "hook_event_name", "gen_ai.x"]),
        inner, max_size=4),
    max_leaves=12)
_CATS = ["agent", "function", "tool", "llm", "retriever", "embedder", "reranker", "guardrail",
         "evaluator", "custom", "unknown", "Weird"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(st.sampled_from(["open", "close", "mark"]),
                                st.sampled_from(_CATS), _JSON, _JSON, _JSON),
                      min_size=1, max_size=12),
       otel_type=st.sampled_from(["full", "gen_ai", "openinference"]),
       mode=st.sampled_from(["inherit", "tool"]))
def test_any_events_give_valid_spans(steps, otel_type, mode):
    from nemoflow.exporters.otlp import check_span
    from nemoflow.exporters.otlp.projections import PROJECTIONS
    proj = PROJECTIONS[otel_type](mark_projection=mode, promote_metadata_prefixes=["p."],
                                  attribute_mappings=[{"key": "nemo_relay.uuid", "alias": "id"}],
                                  report=lambda code, msg: None)
    root = str(uuid.uuid4())
    stack = []
    spans = []
    for n, (action, cat, data, metadata, profile) in enumerate(steps, 1):
        ts = f"2026-01-01T00:00:00.{n:09d}+00:00"
        parent = stack[-1][0] if stack else root
        if action == "open":
            u = str(uuid.uuid4())
            stack.append((u, cat))
            ev = {"kind": "scope", "scope_category": "start", "uuid": u, "parent_uuid": parent,
                  "name": f"{cat} openai", "category": cat, "data": data, "metadata": metadata,
                  "category_profile": profile, "timestamp": ts}
        elif action == "close" and stack:
            u, cat = stack.pop()
            ev = {"kind": "scope", "scope_category": "end", "uuid": u,
                  "parent_uuid": stack[-1][0] if stack else root, "name": f"{cat} openai",
                  "category": cat, "data": data, "metadata": metadata,
                  "category_profile": profile, "timestamp": ts}
        else:
            ev = {"kind": "mark", "uuid": str(uuid.uuid4()), "parent_uuid": parent,
                  "name": "m", "data": data, "metadata": metadata,
                  "category_profile": profile, "timestamp": ts}
        spans.extend(proj.on_event(otel_replay.DictEvent(ev)) or ())
    spans.extend(proj.shutdown())
    for span in spans:
        check_span(span)
