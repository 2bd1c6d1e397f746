"""NeMo Flow programs using the current reference's event API, run through nemoflow.

Each test binds the backend under test to the name ``nemo_flow`` and writes what the
reference's documentation writes: ``severity=`` on marks, ``scope.metric``, tools returning
``ToolExecutionResult``, mark and scope event sanitizers, event metadata injectors, timestamp
errors. The expected lines are those the reference writes for the same program.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import warnings

import pytest


def run(coro):
    return asyncio.run(coro)


def lines(nf, exporter):
    nf.subscribers.flush(5)
    exporter.force_flush()
    with open(exporter.path, encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().split("\n")[:-1]]


def fields(line):
    return {k: line[k] for k in ("name", "data", "metadata", "category_profile")}


# --------------------------------------------------------------------------------------------
# severity= on marks.

def test_severity_goes_into_the_mark_metadata(nf, events, jsonl):
    nemo_flow = nf
    nemo_flow.scope.event("retry", data={"n": 1}, metadata={"k": 1},
                          severity=nemo_flow.LogSeverity.Warn)
    nemo_flow.scope.event("plain")
    nemo_flow.mark("done", severity=nemo_flow.LogSeverity.Error)
    assert [e.metadata for e in events] == [
        {"k": 1, "nemo_relay.log.severity": "warn"}, None,
        {"nemo_relay.log.severity": "error"}]
    assert [e.severity for e in events] == [nemo_flow.LogSeverity.Warn, None,
                                           nemo_flow.LogSeverity.Error]
    assert [line["metadata"] for line in lines(nf, jsonl)] == [e.metadata for e in events]


def test_severity_needs_a_log_severity_and_object_metadata(nf, events):
    nemo_flow = nf
    with pytest.raises(TypeError, match="LogSeverity"):
        nemo_flow.scope.event("m", severity="warn")
    with pytest.raises(nemo_flow.InvalidArgumentError,
                       match="mark metadata must be a JSON object when severity is provided"):
        nemo_flow.scope.event("m", metadata=[1, 2], severity=nemo_flow.LogSeverity.Info)
    assert events == []


# --------------------------------------------------------------------------------------------
# scope.metric.

def test_metric_writes_one_mark_with_the_measurements(nf, events, jsonl):
    nemo_flow = nf
    M, K, V = nemo_flow.MetricMeasurement, nemo_flow.MetricKind, nemo_flow.MetricValueType
    with nemo_flow.scope.scope("agent", nemo_flow.ScopeType.Agent) as h:
        nemo_flow.scope.metric("usage", [
            M("requests", K.Counter, V.U64, 3, unit="1", description="d", attributes={"k": "v"}),
            M("latency", K.Histogram, V.F64, 1.5, boundaries=[1.0, 2.0]),
        ], metadata={"x": 1})
    line = next(x for x in lines(nf, jsonl) if x["kind"] == "mark")
    assert line == {**line, "name": "usage", "parent_uuid": h.uuid, "metadata": {"x": 1},
                    "data_schema": {"name": "nemo.relay.metric_measurements", "version": "1"},
                    "data": {"measurements": [
                        {"attributes": {"k": "v"}, "boundaries": None, "description": "d",
                         "kind": "counter", "name": "requests", "unit": "1", "value": 3,
                         "value_type": "u64"},
                        {"attributes": None, "boundaries": [1.0, 2.0], "description": None,
                         "kind": "histogram", "name": "latency", "unit": None, "value": 1.5,
                         "value_type": "f64"}]}}
    assert [e.name for e in events if e.kind == "mark"] == ["usage"]


@pytest.mark.parametrize("bad, message", [
    (("c", "Counter", "I64", 1), "kind counter does not support value_type i64"),
    (("c", "Counter", "U64", -1), "value must be an unsigned integer no greater than i64::MAX"),
    (("c", "Counter", "F64", -1.0), "counter values must be non-negative"),
    (("c", "Gauge", "F64", float("nan")), "value must be a number"),
    (("c", "Gauge", "I64", True), "value must be a signed integer"),
    (("1c", "Gauge", "F64", 1.0), "name must be 1-255 ASCII bytes, start with a letter, and "
                                  "contain only letters, digits, '_', '.', '-', or '/'"),
])
def test_an_invalid_measurement_rejects_the_whole_group(nf, events, bad, message):
    nemo_flow = nf
    name, kind, value_type, value = bad
    M = nemo_flow.MetricMeasurement
    good = M("ok", nemo_flow.MetricKind.Gauge, nemo_flow.MetricValueType.F64, 1.0)
    invalid = M(name, getattr(nemo_flow.MetricKind, kind),
                getattr(nemo_flow.MetricValueType, value_type), value)
    with pytest.raises(ValueError) as info:
        nemo_flow.scope.metric("m", [good, invalid])
    assert str(info.value) == f"invalid argument: measurements[1] {message}"
    assert events == []


def test_metric_group_checks(nf, events):
    nemo_flow = nf
    M, K, V = nemo_flow.MetricMeasurement, nemo_flow.MetricKind, nemo_flow.MetricValueType
    with pytest.raises(ValueError, match="measurements must contain at least one entry"):
        nemo_flow.scope.metric("m", [])
    with pytest.raises(ValueError,
                       match=r"measurements\[1\] conflicts with the descriptor for "
                             r"measurements\[0\]"):
        nemo_flow.scope.metric("m", [M("a", K.Counter, V.U64, 1), M("a", K.Gauge, V.F64, 1.0)])
    with pytest.raises(TypeError, match="'int' object is not an instance of 'MetricMeasurement'"):
        nemo_flow.scope.metric("m", [M("a", K.Counter, V.U64, 1), 5])
    with pytest.raises(ValueError, match="attribute values must not be null"):
        nemo_flow.scope.metric("m", [M("a", K.Gauge, V.F64, 1.0, attributes={"k": None})])
    with pytest.raises(ValueError, match="boundaries must be strictly increasing"):
        nemo_flow.scope.metric("m", [M("a", K.Histogram, V.F64, 1.0, boundaries=[2.0, 1.0])])
    assert events == []
    assert repr(M("c", K.Counter, V.U64, 1)) == \
        '<MetricMeasurement name="c" kind=counter value_type=u64>'


# --------------------------------------------------------------------------------------------
# ToolExecutionResult.

def test_tool_execution_result_is_returned_and_its_annotation_recorded(nf, events):
    nemo_flow = nf

    async def main():
        return await nemo_flow.tools.execute(
            "search", {"q": 1},
            lambda args: nemo_flow.ToolExecutionResult({"hits": 2}, annotation={"src": "x"}),
            tool_call_id="call-1")

    out = run(main())
    assert isinstance(out, nemo_flow.ToolExecutionResult)
    assert (out.result, out.annotation) == ({"hits": 2}, {"src": "x"})
    end = events[-1]
    assert (end.data, end.category_profile) == (
        {"hits": 2}, {"tool_call_id": "call-1", "tool_result_annotation": {"src": "x"}})
    assert events[0].category_profile == {"tool_call_id": "call-1"}


def test_plain_tool_results_keep_working(nf, events):
    nemo_flow = nf
    assert run(nemo_flow.tools.execute("t", {}, lambda a: {"plain": 1})) == {"plain": 1}
    assert (events[-1].data, events[-1].category_profile) == ({"plain": 1}, {})


@pytest.mark.parametrize("with_middleware", [False, True])
def test_decorated_tool_returning_a_tool_execution_result(nf, events, with_middleware):
    nemo_flow = nf
    if with_middleware:
        nemo_flow.guardrails.register_tool_sanitize_response("tag", 0,
                                                             lambda name, r: {**r, "s": 1})

    @nemo_flow.trace.tool
    def lookup(q):
        return nemo_flow.ToolExecutionResult({"q": q}, {"a": 1})

    assert lookup("x").result == {"q": "x"}
    end = events[-1]
    assert end.data == ({"q": "x", "s": 1} if with_middleware else {"q": "x"})
    assert end.category_profile == {"tool_result_annotation": {"a": 1}}


def test_call_end_takes_a_tool_execution_result(nf, events):
    nemo_flow = nf
    h = nemo_flow.tools.call("t", {"a": 1}, tool_call_id="c9")
    nemo_flow.tools.call_end(h, nemo_flow.ToolExecutionResult([1, 2], annotation="note"))
    assert (events[-1].data, events[-1].category_profile) == (
        [1, 2], {"tool_call_id": "c9", "tool_result_annotation": "note"})


# --------------------------------------------------------------------------------------------
# Mark and scope event sanitizers, event metadata injectors.

def test_event_sanitizers_change_the_written_copy_only(nf, events, jsonl):
    nemo_flow = nf
    seen = []

    def redact(event, f):
        seen.append((event.name, f))
        return {**f, "metadata": {k: v for k, v in (f["metadata"] or {}).items()
                                  if k != "secret"}}

    nemo_flow.guardrails.register_mark_sanitize("m", 1, redact)
    nemo_flow.guardrails.register_scope_sanitize_start("s", 1, lambda e, f: {**f, "data": "S"})
    nemo_flow.guardrails.register_scope_sanitize_end("e", 1,
                                                     lambda e, f: {**f, "data": "E",
                                                                   "metadata": {}})
    payload = {"secret": "x", "keep": 1}
    with nemo_flow.scope.scope("agent", nemo_flow.ScopeType.Agent, input={"in": 1}):
        nemo_flow.scope.event("note", data={"a": 1}, metadata=payload)
    assert payload == {"secret": "x", "keep": 1}  # the program's own value is untouched
    assert seen == [("note", {"data": {"a": 1}, "category_profile": None,
                              "metadata": {"secret": "x", "keep": 1}})]
    expected = [
        {"name": "agent", "data": "S", "metadata": None, "category_profile": None},
        {"name": "note", "data": {"a": 1}, "metadata": {"keep": 1}, "category_profile": None},
        # the sanitized metadata is written as it is: the status keys do not come back
        {"name": "agent", "data": "E", "metadata": {}, "category_profile": None},
    ]
    assert [fields(line) for line in lines(nf, jsonl)] == expected
    assert [fields(e.to_dict()) for e in events] == expected


def test_event_sanitizers_apply_to_tool_and_llm_calls(nf, events):
    nemo_flow = nf
    nemo_flow.guardrails.register_scope_sanitize_start("s", 1, lambda e, f: {**f, "data": None})

    async def main():
        await nemo_flow.tools.execute("t", {"password": "p"}, lambda a: 1)
        await nemo_flow.llm.execute("m", nemo_flow.LLMRequest({}, {"x": 1}), lambda r: {})

    run(main())
    starts = [e for e in events if e.kind == "scope" and e.scope_category == "start"]
    assert [(e.name, e.data) for e in starts] == [("t", None), ("m", None)]


def test_a_failing_sanitizer_fails_closed_and_is_counted(nf, events, jsonl):
    nemo_flow = nf

    def boom(event, f):
        raise ValueError("boom")

    nemo_flow.guardrails.register_mark_sanitize("bad", 1, boom)
    nemo_flow.guardrails.register_mark_sanitize("later", 2,
                                                lambda e, f: {**f, "data": "never"})
    nemo_flow.guardrails.register_scope_sanitize_end("not-a-dict", 1, lambda e, f: 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with nemo_flow.scope.scope("s", nemo_flow.ScopeType.Function):
            nemo_flow.scope.event("x", data={"a": 1}, metadata={"m": 1},
                                  category_profile={"c": 1})
    written = [fields(line) for line in lines(nf, jsonl)]
    assert written[1:] == [
        {"name": "x", "data": None, "metadata": None, "category_profile": None},
        {"name": "s", "data": None, "metadata": None, "category_profile": None}]
    assert nemo_flow.diagnostics()["event_middleware"]["event_sanitizer_failures"] == 2
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "event sanitizer 'bad' failed" in texts[0]


def test_scope_local_event_middleware_lives_with_its_scope(nf, events):
    nemo_flow = nf

    def tag(label):
        return lambda e, f: {**f, "metadata": {**(f["metadata"] or {}), label: True}}

    h = nemo_flow.scope.push("outer", nemo_flow.ScopeType.Agent)
    nemo_flow.scope_local.register_scope_sanitize_end(h, "e", 1, tag("local_end"))
    nemo_flow.scope_local.register_scope_sanitize_start(h, "s", 1, tag("local_start"))
    nemo_flow.scope_local.register_mark_sanitize(h, "m", 1, tag("local_mark"))
    nemo_flow.scope_local.register_event_metadata_injector(h, "i", 1, lambda e: {"li": 1})
    c = nemo_flow.scope.push("child", nemo_flow.ScopeType.Function)
    nemo_flow.scope.event("inner")
    nemo_flow.scope.pop(c)
    nemo_flow.scope.pop(h)
    nemo_flow.scope.event("after")
    with pytest.raises(nemo_flow.NotFoundError, match="not found: scope .* not found"):
        nemo_flow.scope_local.register_mark_sanitize(h, "x", 1, tag("x"))
    assert [(e.name, e.metadata) for e in events] == [
        ("outer", None),
        ("child", {"li": 1, "local_start": True}),
        ("inner", {"li": 1, "local_mark": True}),
        ("child", {"li": 1, "local_end": True}),
        ("outer", {"li": 1, "local_end": True}),  # its own end event too
        ("after", None),
    ]


def test_metadata_injectors_only_add(nf, events):
    nemo_flow = nf
    nemo_flow.event_metadata.register_injector("first", 1, lambda e: {"m": "no", "x": 1})
    nemo_flow.event_metadata.register_injector("second", 2, lambda e: {"x": 2, "n": [1, 2]})
    nemo_flow.event_metadata.register_injector("bad", 3, lambda e: 1 / 0)
    nemo_flow.event_metadata.register_injector("nested", 4, lambda e: {"y": {"z": 1}})
    seen = []
    nemo_flow.guardrails.register_mark_sanitize("s", 1,
                                                lambda e, f: seen.append(e.metadata) or f)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        nemo_flow.scope.event("a", metadata={"m": 1})
        nemo_flow.scope.event("b")
        nemo_flow.scope.event("c", metadata=[1])
    assert [e.metadata for e in events] == [
        {"m": 1, "n": [1, 2], "x": 1}, {"m": "no", "n": [1, 2], "x": 1}, [1]]
    assert seen[0] == {"m": 1, "n": [1, 2], "x": 1}  # sanitizers see the injected keys
    assert nemo_flow.diagnostics()["event_middleware"][
        "event_metadata_injector_failures"] == 7  # 2 failing per event, and c's list metadata
    assert nemo_flow.event_metadata.deregister_injector("first") is True
    assert nemo_flow.event_metadata.deregister_injector("first") is False


def test_async_sanitizers_and_events_emitted_by_middleware(nf, events):
    nemo_flow = nf

    async def sanitize(event, f):
        nemo_flow.scope.event("from-sanitizer")  # passes as it is, no recursion
        return {**f, "data": "async"}

    nemo_flow.guardrails.register_mark_sanitize("a", 1, sanitize)
    nemo_flow.scope.event("m", data=1)

    async def inside_a_loop():
        nemo_flow.scope.event("n", data=2)

    run(inside_a_loop())
    assert [(e.name, e.data) for e in events] == [
        ("from-sanitizer", None), ("m", "async"), ("from-sanitizer", None), ("n", "async")]


def test_event_middleware_registration_and_removal(nf, events):
    nemo_flow = nf
    nemo_flow.guardrails.register_mark_sanitize("dup", 1, lambda e, f: {**f, "data": 0})
    with pytest.raises(nemo_flow.AlreadyExistsError, match="already exists: dup already exists"):
        nemo_flow.guardrails.register_mark_sanitize("dup", 1, lambda e, f: f)
    nemo_flow.scope.event("on", data=1)
    assert nemo_flow.guardrails.deregister_mark_sanitize("dup") is True
    assert nemo_flow.guardrails.deregister_mark_sanitize("dup") is False
    nemo_flow.scope.event("off", data=1)
    assert [(e.name, e.data) for e in events] == [("on", 0), ("off", 1)]


# --------------------------------------------------------------------------------------------
# Timestamps.

@pytest.mark.parametrize("call", ["mark", "push", "tools.call"])
def test_timestamp_errors_name_datetime_and_timezone_aware(nf, events, call):
    nemo_flow = nf
    fn = {
        "mark": lambda ts: nemo_flow.scope.event("m", timestamp=ts),
        "push": lambda ts: nemo_flow.scope.push("p", nemo_flow.ScopeType.Agent, timestamp=ts),
        "tools.call": lambda ts: nemo_flow.tools.call("t", {}, timestamp=ts),
    }[call]
    for wrong in ("2024-01-01T00:00:00Z", 1704067200):
        with pytest.raises(TypeError, match=r"datetime\.datetime"):
            fn(wrong)
    with pytest.raises(ValueError, match="timezone-aware"):
        fn(datetime.datetime(2024, 1, 1))
    assert events == []


# --------------------------------------------------------------------------------------------
# The names these programs import.

REFERENCE_NAMES = {
    "": ("LogSeverity", "MetricKind", "MetricMeasurement", "MetricValueType",
         "ToolExecutionResult", "event_metadata"),
    "scope": ("metric",),
    "tools": ("ToolExecutionResult",),
    "guardrails": ("register_mark_sanitize", "deregister_mark_sanitize",
                   "register_scope_sanitize_start", "deregister_scope_sanitize_start",
                   "register_scope_sanitize_end", "deregister_scope_sanitize_end",
                   "EventSanitizeGuardrail"),
    "scope_local": ("register_mark_sanitize", "deregister_mark_sanitize",
                    "register_scope_sanitize_start", "deregister_scope_sanitize_start",
                    "register_scope_sanitize_end", "deregister_scope_sanitize_end",
                    "register_event_metadata_injector", "deregister_event_metadata_injector"),
    "event_metadata": ("register_injector", "deregister_injector"),
    "types": ("EventSanitizeFields", "EventSanitizeGuardrail", "EventMetadata",
              "EventMetadataInjectorCallback"),
}


@pytest.mark.parametrize("module", sorted(REFERENCE_NAMES))
def test_reference_names_import(nf, module):
    names = REFERENCE_NAMES[module]
    namespace: dict = {}
    exec(f"from nemoflow{'.' + module if module else ''} import {', '.join(names)}", namespace)
    assert all(namespace[n] is not None for n in names)
    if module == "":
        assert set(names) <= set(nf.__all__)
    else:
        assert set(names) - {"EventSanitizeGuardrail"} <= set(getattr(nf, module).__all__)


def test_an_interrupted_sanitizer_still_writes_the_event_cleared(nf, events, jsonl):
    nemo_flow = nf

    def interrupt(event, f):
        raise KeyboardInterrupt

    nemo_flow.guardrails.register_mark_sanitize("ctrl-c", 1, interrupt)
    with pytest.raises(KeyboardInterrupt):
        nemo_flow.scope.event("m", data={"secret": 1})
    nemo_flow.guardrails.deregister_mark_sanitize("ctrl-c")
    nemo_flow.guardrails.register_mark_sanitize("pass", 1, lambda e, f: f)
    assert nemo_flow.scope.event("returns-none") is None
    assert fields(lines(nf, jsonl)[0]) == {
        "name": "m", "data": None, "metadata": None, "category_profile": None}
    assert events[0].data is None
