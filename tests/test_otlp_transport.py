"""OTLP output: the span model, the OTLP/JSON and protobuf encoders, the ``http_binary``
transport against a loopback collector (paths, headers, gzip, retries, timeouts), the
``otlp_json_file`` transport, and the exporter's queue (drop / block, bounds, flush, shutdown,
exit). Spans come from a minimal projection defined here (one span per scope)."""

from __future__ import annotations

import base64
import importlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pb_trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2")
json_format = pytest.importorskip("google.protobuf.json_format")
Request = pb_trace_service.ExportTraceServiceRequest

from otlp_collector import Collector  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def otlp(nf):
    """The OTLP package of the nemoflow loaded on this test's backend."""
    return importlib.import_module("nemoflow.exporters.otlp")


class ScopeProjection:
    """One INTERNAL span per scope: trace id = the outermost seen scope's uuid, span id = the
    low 8 bytes of the scope's uuid, parent when the parent scope was seen."""

    def __init__(self, otlp):
        self.otlp = otlp
        self.open: dict = {}
        self.trace_of: dict = {}

    def on_event(self, ev):
        if ev.kind != "scope":
            return None
        raw = uuid.UUID(ev.uuid).bytes
        if ev.scope_category == "start":
            parent = ev.parent_uuid
            if parent in self.trace_of:
                trace_id, parent_id = self.trace_of[parent], uuid.UUID(parent).bytes[8:]
            else:
                trace_id, parent_id = raw, None
            self.trace_of[ev.uuid] = trace_id
            self.open[ev.uuid] = (trace_id, parent_id, ev.name, ev.timestamp_ns)
            return None
        start = self.open.pop(ev.uuid, None)
        if start is None:
            return None
        trace_id, parent_id, name, t0 = start
        return [self.otlp.Span(trace_id, raw[8:], name, t0, ev.timestamp_ns,
                               parent_span_id=parent_id,
                               attributes=[("nemo_relay.uuid", ev.uuid)])]


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hanging:
    """A server that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


class GateTransport:
    """A transport whose sends wait until ``gate`` is set; records batches and threads."""

    wire = "json"

    def __init__(self, otlp, exporter_ref=None):
        self.otlp = otlp
        self.gate = threading.Event()
        self.batches: list = []
        self.threads: set = set()
        self.max_queue_seen = 0
        self.exporter = exporter_ref

    def make_encoder(self, resource, scope):
        return self.otlp.JsonEncoder(resource, scope)

    def send(self, body, deadline, cancel=None):
        self.threads.add(threading.current_thread().name)
        if self.exporter is not None:
            self.max_queue_seen = max(self.max_queue_seen,
                                      self.exporter.stats()["queue_size"])
        if not self.gate.wait(5):
            raise self.otlp.ExportFailure("gate not opened")
        self.batches.append(orjson.loads(body))

    def span_names(self):
        return [s["name"] for b in self.batches for s in
                b["resourceSpans"][0]["scopeSpans"][0]["spans"]]

    def close(self):
        pass

    def reset_after_fork(self):
        pass


def make_exporter(otlp, transport, **kw):
    kw.setdefault("scheduled_delay_millis", 60_000)  # batches go when full or flushed
    kw.setdefault("timeout_millis", 2000)
    return otlp.OtlpExporter(transport, ScopeProjection(otlp), **kw)


@pytest.fixture
def cleanup():
    """Exporters to shut down after the test, whatever happened."""
    made: list = []
    yield made
    for exporter in made:
        exporter.shutdown(timeout=1.0)


def run_scopes(nf, n, prefix="s"):
    for i in range(n):
        with nf.trace(f"{prefix}{i}"):
            pass


# --- encoders ---------------------------------------------------------------------------------

TRACE = bytes.fromhex("01a20a36598b78ca8c5bc7c6d175adb1")


def fixed_spans(otlp):
    root = otlp.Span(
        TRACE, TRACE[8:], "agent ünïcode ✓", 1700000000000000000, 1700000000500000123,
        kind=otlp.KIND_CLIENT,
        attributes=[("s", "x\"y\n"), ("b", True), ("i", -5), ("d", 1.5), ("a", ["p", "q"]),
                    ("e", []), ("empty", ""), ("zero", 0), ("no", False), ("big", 2**63 - 1),
                    ("ints", [1, 2]), ("dup", 1), ("dup", 2)],
        events=[otlp.SpanEvent("exception", 1700000000400000000,
                               [("exception.type", "ValueError")])],
        status_code=otlp.STATUS_ERROR, status_message="boom")
    child = otlp.Span(TRACE, bytes.fromhex("0102030405060708"), "child", 1700000000100000000,
                      1700000000200000000, parent_span_id=TRACE[8:], flags=otlp.FLAGS_REMOTE,
                      trace_state="vendor=1")
    ok = otlp.Span(bytes(range(1, 17)), bytes(range(1, 9)), "", 5, 6,
                   status_code=otlp.STATUS_OK)
    return [root, child, ok]


EXPECTED_LINE = (
    '{"resourceSpans":[{"resource":{"attributes":['
    '{"key":"service.name","value":{"stringValue":"svc"}},'
    '{"key":"service.namespace","value":{"stringValue":"ns"}},'
    '{"key":"service.version","value":{"stringValue":"1.2"}},'
    '{"key":"deployment.environment","value":{"stringValue":"dev"}}]},'
    '"scopeSpans":[{"scope":{"name":"nemoflow-test"},"spans":['
    '{"traceId":"01a20a36598b78ca8c5bc7c6d175adb1","spanId":"8c5bc7c6d175adb1",'
    '"name":"agent ünïcode ✓","kind":3,"startTimeUnixNano":"1700000000000000000",'
    '"endTimeUnixNano":"1700000000500000123","attributes":['
    '{"key":"s","value":{"stringValue":"x\\"y\\n"}},'
    '{"key":"b","value":{"boolValue":true}},'
    '{"key":"i","value":{"intValue":"-5"}},'
    '{"key":"d","value":{"doubleValue":1.5}},'
    '{"key":"a","value":{"arrayValue":{"values":[{"stringValue":"p"},{"stringValue":"q"}]}}},'
    '{"key":"e","value":{"arrayValue":{}}},'
    '{"key":"empty","value":{"stringValue":""}},'
    '{"key":"zero","value":{"intValue":"0"}},'
    '{"key":"no","value":{"boolValue":false}},'
    '{"key":"big","value":{"intValue":"9223372036854775807"}},'
    '{"key":"ints","value":{"arrayValue":{"values":[{"intValue":"1"},{"intValue":"2"}]}}},'
    '{"key":"dup","value":{"intValue":"1"}},{"key":"dup","value":{"intValue":"2"}}],'
    '"events":[{"timeUnixNano":"1700000000400000000","name":"exception","attributes":['
    '{"key":"exception.type","value":{"stringValue":"ValueError"}}]}],'
    '"status":{"message":"boom","code":2},"flags":257},'
    '{"traceId":"01a20a36598b78ca8c5bc7c6d175adb1","spanId":"0102030405060708",'
    '"traceState":"vendor=1","parentSpanId":"8c5bc7c6d175adb1","name":"child","kind":1,'
    '"startTimeUnixNano":"1700000000100000000","endTimeUnixNano":"1700000000200000000",'
    '"status":{},"flags":769},'
    '{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","kind":1,'
    '"startTimeUnixNano":"5","endTimeUnixNano":"6","status":{"code":1},"flags":257}'
    ']}]}]}')


def fixed_resource(otlp):
    return otlp.Resource.for_service("svc", service_namespace="ns", service_version="1.2",
                                     resource_attributes={"deployment.environment": "dev"})


def _ids(obj, convert):
    if isinstance(obj, dict):
        return {k: convert(v) if k in ("traceId", "spanId", "parentSpanId") else _ids(v, convert)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_ids(v, convert) for v in obj]
    return obj


def hex_to_b64(v):
    return base64.b64encode(bytes.fromhex(v)).decode()


def b64_to_hex(v):
    return base64.b64decode(v).hex()


def test_json_line_is_byte_exact(otlp):
    scope = otlp.InstrumentationScope("nemoflow-test")
    line = otlp.encode_json(fixed_resource(otlp), scope, fixed_spans(otlp))
    assert line.decode("utf-8") == EXPECTED_LINE
    assert "ü".encode() in line  # non-ASCII verbatim, not \u-escaped


def test_json_line_parses_to_the_protobuf_message(otlp):
    """OTLP/JSON writes ids as hex where proto3 JSON has base64: converted, the line parses
    strictly (json_format) to the very message the HTTP transport serializes, and protobuf's
    own JSON of that message, ids back to hex, is the same bytes."""
    resource, scope = fixed_resource(otlp), otlp.InstrumentationScope("nemoflow-test")
    spans = fixed_spans(otlp)
    line = otlp.encode_json(resource, scope, spans)
    message = otlp.to_proto(resource, scope, spans)
    wire = otlp.ProtoEncoder(resource, scope).encode(spans)
    assert Request.FromString(wire) == message
    parsed = json_format.Parse(orjson.dumps(_ids(orjson.loads(line), hex_to_b64)), Request())
    assert parsed == message
    canonical = json_format.MessageToDict(message, use_integers_for_enums=True)
    assert orjson.dumps(_ids(canonical, b64_to_hex)) == line


def test_json_line_round_trips_with_opentelemetry_proto_json(otlp):
    pj = pytest.importorskip("opentelemetry.proto_json.collector.trace.v1.trace_service")
    resource, scope = fixed_resource(otlp), otlp.InstrumentationScope("nemoflow-test")
    line = otlp.encode_json(resource, scope, fixed_spans(otlp))
    decoded = pj.ExportTraceServiceRequest.from_json(line)
    span = decoded.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == TRACE and span.span_id == TRACE[8:]
    assert orjson.loads(decoded.to_json()) == orjson.loads(line)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_primitive = st.one_of(_text, st.booleans(), st.integers(-(2**63), 2**63 - 1),
                       st.floats(allow_nan=False))
_attrs = st.lists(st.tuples(_text, st.one_of(_primitive, st.lists(_primitive, max_size=3))),
                  max_size=4)
_u64 = st.integers(0, 2**64 - 1)
_span_fields = st.fixed_dictionaries({
    "trace_id": st.binary(min_size=16, max_size=16), "span_id": st.binary(min_size=8, max_size=8),
    "name": _text, "start_ns": _u64, "end_ns": _u64,
    "parent_span_id": st.none() | st.binary(min_size=8, max_size=8),
    "flags": st.sampled_from([0, 257, 769]), "trace_state": _text,
    "kind": st.integers(0, 5), "attributes": _attrs,
    "events": st.lists(st.tuples(_text, _u64, _attrs), max_size=2),
    "status_code": st.integers(0, 2), "status_message": _text})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spans=st.lists(_span_fields, min_size=1, max_size=3), resource=_attrs, scope=_text)
def test_json_and_protobuf_agree_on_any_span(otlp, spans, resource, scope):
    made = []
    for f in spans:
        f = dict(f)
        events = [otlp.SpanEvent(n, t, a) for n, t, a in f.pop("events")]
        made.append(otlp.Span(f.pop("trace_id"), f.pop("span_id"), f.pop("name"),
                              f.pop("start_ns"), f.pop("end_ns"), events=events, **f))
    for span in made:
        otlp.check_span(span)
    res, sc = otlp.Resource(resource), otlp.InstrumentationScope(scope)
    line = otlp.encode_json(res, sc, made)
    message = Request.FromString(otlp.ProtoEncoder(res, sc).encode(made))
    assert json_format.Parse(orjson.dumps(_ids(orjson.loads(line), hex_to_b64)),
                             Request()) == message
    canonical = json_format.MessageToDict(message, use_integers_for_enums=True)
    assert orjson.dumps(_ids(canonical, b64_to_hex)) == line


_long_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=100, max_size=300)
_wire_value = st.one_of(_primitive, _long_text, st.floats(), st.just(float("nan")),
                        st.lists(st.one_of(_primitive, _long_text), max_size=3),
                        st.tuples(st.integers(-(2**63), 2**63 - 1)))
_wire_attrs = st.lists(st.tuples(st.one_of(_text, _long_text), _wire_value), max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(spans=st.lists(_span_fields, max_size=3), extra=st.lists(_wire_attrs, max_size=3),
       resource=_attrs, scope=_text, version=_text, long_name=_long_text)
def test_wire_encoder_writes_the_bytes_of_opentelemetry_proto(otlp, spans, extra, resource,
                                                               scope, version, long_name):
    """The protobuf the http_binary transport sends, written span by span without
    opentelemetry-proto, is byte for byte what opentelemetry-proto serializes for the same
    spans, and parses to the same message."""
    made = []
    for n, f in enumerate(spans):
        f = dict(f)
        events = [otlp.SpanEvent(name, t, a) for name, t, a in f.pop("events")]
        attrs = f.pop("attributes") + (extra[n] if n < len(extra) else [])
        name = f.pop("name")
        name = name if n else long_name
        made.append(otlp.Span(f.pop("trace_id"), f.pop("span_id"), name, f.pop("start_ns"),
                              f.pop("end_ns"), events=events, attributes=attrs, **f))
    res, sc = otlp.Resource(resource), otlp.InstrumentationScope(scope, version)
    wire = otlp.WireEncoder(res, sc)
    body = wire.encode(made)
    assert body == otlp.ProtoEncoder(res, sc).encode(made)
    assert body == wire.join([wire.encode_span(s) for s in made])
    assert Request.FromString(body) == otlp.to_proto(res, sc, made)


def test_wire_encoder_values_as_opentelemetry_proto_sets_them(otlp):
    """Subclasses of bool, int, str and float, tuples, empty arrays, non-finite doubles,
    negative ints and enums, empty names and keys: the same bytes; an int outside int64 or a
    value of another type is refused, as opentelemetry-proto refuses it."""
    import enum

    class Level(enum.IntEnum):
        HIGH = 3

    class Text(str):
        pass

    attrs = [("", ""), ("e", Level.HIGH), ("s", Text("x")), ("t", (1, "a", True)),
             ("a", []), ("nan", float("nan")), ("inf", float("-inf")), ("neg", -(2**63)),
             ("f", False), ("z", 0), ("d", 0.0), ("u", "ünï ✓" * 40)]
    spans = [otlp.Span(TRACE, TRACE[8:], "", 0, 0, flags=0, kind=0, attributes=attrs,
                       events=[otlp.SpanEvent("", 0), otlp.SpanEvent("e", 5, attrs)]),
             otlp.Span(TRACE, TRACE[8:], "n", 0, 7, kind=otlp.KIND_SERVER, flags=0x301,
                       trace_state="k=v", status_code=otlp.STATUS_ERROR, status_message="m"),
             otlp.Span(TRACE, TRACE[8:], "n", 9, 0, status_code=otlp.STATUS_OK)]
    res, sc = fixed_resource(otlp), otlp.InstrumentationScope()
    assert otlp.WireEncoder(res, sc).encode(spans) == otlp.ProtoEncoder(res, sc).encode(spans)
    empty = otlp.Resource(), otlp.InstrumentationScope("")
    assert otlp.WireEncoder(*empty).encode([]) == otlp.ProtoEncoder(*empty).encode([])
    for bad in (2**63, [2**64], {"a": 1}, None):
        span = otlp.Span(TRACE, TRACE[8:], "n", 1, 2, attributes=[("k", bad)])
        with pytest.raises((TypeError, ValueError)):
            otlp.ProtoEncoder(res, sc).encode([span])
        with pytest.raises((TypeError, ValueError)):
            otlp.WireEncoder(res, sc).encode([span])


def test_wire_encoder_is_the_http_transports(otlp):
    t = otlp.HttpBinaryTransport("http://127.0.0.1:1")
    encoder = t.make_encoder(otlp.Resource.for_service(), otlp.InstrumentationScope())
    assert isinstance(encoder, otlp.WireEncoder)
    assert encoder.content_type == "application/x-protobuf"


def test_a_span_the_encoder_refuses_is_counted_and_the_rest_exported(nf, otlp, collector,
                                                                     cleanup):
    """Spans are encoded as they are queued: one the encoder cannot write fails alone."""

    class Odd(ScopeProjection):
        def on_event(self, ev):
            spans = super().on_event(ev)
            if spans and ev.name == "bad":
                spans[0].attributes.append(("big", 2**63))
            return spans

    exporter = otlp.OtlpExporter(otlp.HttpBinaryTransport(collector.url), Odd(otlp),
                                 scheduled_delay_millis=0)
    exporter._check = False  # as for a built-in projection: only the encoder sees the span
    cleanup.append(exporter)
    exporter.register("otlp-odd")
    with pytest.warns(RuntimeWarning, match="invalid span"):
        for name in ("ok1", "bad", "ok2"):
            with nf.trace(name):
                pass
        exporter.force_flush(timeout=5)
    assert sorted(s.name for s in collector.spans()) == ["ok1", "ok2"]
    stats = exporter.stats()
    assert stats["spans_failed"] == 1 and stats["spans_exported"] == 2
    assert "int64" in stats["last_error"] or "range" in stats["last_error"]


def test_queued_spans_are_encoded_bytes(nf, otlp, cleanup):
    """With an encoder that writes span by span, the queue holds bytes (which the garbage
    collector does not track), not span objects."""
    gate = threading.Event()

    class Held:
        wire = "protobuf"

        def __init__(self):
            self.sent: list = []

        def make_encoder(self, resource, scope):
            return otlp.WireEncoder(resource, scope)

        def send(self, body, deadline, cancel=None):
            gate.wait(5)
            self.sent.append(body)

        def close(self):
            pass

    transport = Held()
    exporter = make_exporter(otlp, transport, max_export_batch_size=1)
    cleanup.append(exporter)
    exporter.register("otlp-held")
    run_scopes(nf, 3)
    assert nf._core.flush(5)
    with exporter._lock:
        queued = list(exporter._queue)
    assert queued and all(type(item) is bytes for item in queued)
    gate.set()
    exporter.force_flush(timeout=5)
    names = [s.name for body in transport.sent for rs in Request.FromString(body).resource_spans
             for ss in rs.scope_spans for s in ss.spans]
    assert names == ["s0", "s1", "s2"]


def test_non_finite_doubles_are_proto3_json_strings(otlp):
    span = otlp.Span(TRACE, TRACE[8:], "n", 1, 2, attributes=[
        ("nan", float("nan")), ("inf", float("inf")), ("ninf", float("-inf"))])
    resource, scope = otlp.Resource.for_service(), otlp.InstrumentationScope()
    line = otlp.encode_json(resource, scope, [span])
    assert b'{"doubleValue":"NaN"}' in line and b'{"doubleValue":"-Infinity"}' in line
    parsed = json_format.Parse(orjson.dumps(_ids(orjson.loads(line), hex_to_b64)), Request())
    values = parsed.resource_spans[0].scope_spans[0].spans[0].attributes
    assert [v.value.double_value for v in values][1:] == [float("inf"), float("-inf")]


def test_default_resource_and_scope(otlp):
    line = orjson.loads(otlp.encode_json(otlp.Resource.for_service(),
                                         otlp.InstrumentationScope(), fixed_spans(otlp)[2:]))
    rs = line["resourceSpans"][0]
    assert rs["resource"] == {"attributes": [
        {"key": "service.name", "value": {"stringValue": "unknown_service"}}]}
    assert rs["scopeSpans"][0]["scope"] == {"name": "opentelemetry"}


@pytest.mark.parametrize("bad, message", [
    (dict(trace_id=b"short"), "trace_id must be 16 bytes"),
    (dict(span_id=b"x" * 16), "span_id must be 8 bytes"),
    (dict(parent_span_id=b""), "parent_span_id must be 8 bytes"),
    (dict(attributes=[("k", {"a": 1})]), "value must be str, bool, int, float"),
    (dict(attributes=[("k", 2**63)]), "does not fit in int64"),
    (dict(attributes=[("k", [[1]])]), "array items must be"),
    (dict(attributes=[("k",)]), "must be a \\(str, value\\) pair"),
    (dict(kind=-1), "kind must be an int in \\[0, 2147483648\\)"),
    (dict(flags=1 << 32), "flags must be an int in"),
    (dict(events=["x"]), "events must be SpanEvent objects"),
])
def test_check_span_rejects(otlp, bad, message):
    fields = dict(trace_id=TRACE, span_id=TRACE[8:])
    fields.update(bad)
    span = otlp.Span(fields.pop("trace_id"), fields.pop("span_id"), "x", 1, 2, **fields)
    with pytest.raises((TypeError, ValueError), match=message):
        otlp.check_span(span)


# --- endpoint and configuration -----------------------------------------------------------

@pytest.mark.parametrize("given, used", [
    ("http://collector:4318", "http://collector:4318/v1/traces"),
    ("https://collector", "https://collector/v1/traces"),
    ("http://collector:4318/", "http://collector:4318/"),
    ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
    ("http://collector:4318/custom/path", "http://collector:4318/custom/path"),
    ("http://collector:4318/otlp/", "http://collector:4318/otlp/"),
    ("http://collector:4318?token=1", "http://collector:4318/v1/traces?token=1"),
    ("http://collector:4318/?token=1", "http://collector:4318/?token=1"),
    ("http://collector:4318#frag", "http://collector:4318/v1/traces#frag"),
    ("HTTP://Collector:4318", "HTTP://Collector:4318/v1/traces"),
    ("grpc://collector:4317", "grpc://collector:4317"),
    ("collector:4318", "collector:4318"),
    ("not a url", "not a url"),
])
def test_endpoint_rules(otlp, given, used):
    assert otlp.resolve_endpoint(given) == used


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(endpoint=""), ValueError, "endpoint is required and must be nonblank"),
    (dict(endpoint="  "), ValueError, "endpoint is required and must be nonblank"),
    (dict(endpoint=None), ValueError, "endpoint is required and must be nonblank"),
    (dict(endpoint="collector:4318"), ValueError, "must be an http:// or https:// URL"),
    (dict(endpoint="http://h:99999"), ValueError, "invalid port"),
    (dict(headers={"x": 1}), TypeError, "dict\\[str, str\\]"),
    (dict(headers=[("x", "y")]), TypeError, "dict\\[str, str\\]"),
    (dict(headers={"X-A": "1", "x-a": "2"}), ValueError, "given twice"),
    (dict(headers={"bad name": "1"}), ValueError, "invalid header name"),
    (dict(headers={"x": "a\r\nb"}), ValueError, "line break"),
    (dict(headers={"Content-Type": "text/plain"}), ValueError, "set by the transport"),
    (dict(compression="brotli"), ValueError, "compression must be"),
])
def test_http_transport_config_errors(otlp, kwargs, error, message):
    kwargs = dict(kwargs)  # shared by both backends' runs
    endpoint = kwargs.pop("endpoint", "http://127.0.0.1:4318")
    with pytest.raises(error, match=message):
        otlp.HttpBinaryTransport(endpoint, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_queue_size=0), "max_queue_size must be an int >= 1"),
    (dict(max_export_batch_size=0), "max_export_batch_size must be an int >= 1"),
    (dict(max_queue_size=4, max_export_batch_size=8), "must be <= max_queue_size"),
    (dict(scheduled_delay_millis=-1), "scheduled_delay_millis must be an int >= 0"),
    (dict(timeout_millis=0), "timeout_millis must be an int > 0"),
    (dict(overflow="lossy"), "overflow must be"),
])
def test_exporter_config_errors(otlp, tmp_path, kwargs, message):
    transport = otlp.OtlpJsonFileTransport(str(tmp_path))
    with pytest.raises(ValueError, match=message):
        otlp.OtlpExporter(transport, ScopeProjection(otlp), **kwargs)
    with pytest.raises(TypeError, match="on_event"):
        otlp.OtlpExporter(transport, object())
    with pytest.raises(TypeError, match="resource must be a Resource"):
        otlp.OtlpExporter(transport, ScopeProjection(otlp), resource={"service.name": "x"})


def test_queue_defaults_from_otel_bsp_env(otlp, tmp_path, monkeypatch):
    transport = otlp.OtlpJsonFileTransport(str(tmp_path))
    for var in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                "OTEL_BSP_SCHEDULE_DELAY"):
        monkeypatch.delenv(var, raising=False)
    e = otlp.OtlpExporter(transport, ScopeProjection(otlp))
    assert (e.max_queue_size, e.max_export_batch_size, e.scheduled_delay_millis) == (
        2048, 512, 5000)
    assert e.stats()["queue_capacity"] == 2048
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "100")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "250")
    e = otlp.OtlpExporter(transport, ScopeProjection(otlp))
    assert (e.max_queue_size, e.max_export_batch_size, e.scheduled_delay_millis) == (
        100, 10, 250)
    e = otlp.OtlpExporter(transport, ScopeProjection(otlp), max_queue_size=7,
                          max_export_batch_size=3)
    assert (e.max_queue_size, e.max_export_batch_size) == (7, 3)
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
    with pytest.warns(RuntimeWarning, match="ignoring OTEL_BSP_MAX_QUEUE_SIZE='lots'"):
        e = otlp.OtlpExporter(transport, ScopeProjection(otlp))
    assert e.max_queue_size == 2048
    transport.close()


# --- http_binary against a loopback collector ---------------------------------------------

def test_http_export_end_to_end(nf, otlp, collector, cleanup):
    transport = otlp.HttpBinaryTransport(collector.url, headers={"Authorization": "Bearer t",
                                                                 "X-Tenant": "a"})
    exporter = make_exporter(otlp, transport, resource=fixed_resource(otlp),
                             scope=otlp.InstrumentationScope("nemoflow-test"),
                             max_export_batch_size=2)
    cleanup.append(exporter)
    exporter.register("otlp-test")
    with nf.trace("parent") as parent:
        run_scopes(nf, 3, "child")
    exporter.force_flush(timeout=5)
    assert collector.requests
    for path, headers, req, _ in collector.requests:
        assert path == "/v1/traces"
        assert headers["Content-Type"] == "application/x-protobuf"
        assert headers["Authorization"] == "Bearer t" and headers["X-Tenant"] == "a"
        assert "Content-Encoding" not in headers
        assert headers["User-Agent"] == f"nemoflow/{nf.__version__}"
        rs = req.resource_spans[0]
        assert [(kv.key, kv.value.string_value) for kv in rs.resource.attributes] == [
            ("service.name", "svc"), ("service.namespace", "ns"), ("service.version", "1.2"),
            ("deployment.environment", "dev")]
        assert rs.scope_spans[0].scope.name == "nemoflow-test"
        assert rs.scope_spans[0].scope.version == ""
    spans = {s.name: s for s in collector.spans()}
    assert sorted(spans) == ["child0", "child1", "child2", "parent"]
    root = uuid.UUID(parent.handle.uuid).bytes
    assert spans["parent"].trace_id == root and spans["parent"].span_id == root[8:]
    assert spans["parent"].parent_span_id == b""
    for i in range(3):
        child = spans[f"child{i}"]
        assert child.trace_id == root and child.parent_span_id == root[8:]
        assert child.flags == 257 and child.kind == 1
        assert child.status.code == 0
        assert child.end_time_unix_nano > child.start_time_unix_nano > 0
    assert collector.connections == 1  # one kept-alive connection for every batch
    stats = nf.diagnostics()["exporters"]["otlp-test"]
    assert stats["spans_exported"] == 4 and stats["spans_failed"] == 0
    assert stats["spans_dropped"] == 0 and stats["queue_size"] == 0
    assert stats["last_error"] is None and stats["errors"] == 0


def test_connection_closed_by_the_collector_is_reopened(nf, otlp, collector, cleanup):
    collector.script = [(200, {"Connection": "close"})]
    transport = otlp.HttpBinaryTransport(collector.url)
    exporter = make_exporter(otlp, transport)
    cleanup.append(exporter)
    exporter.register("otlp-reconnect")
    for batch in range(4):
        if batch == 2:
            collector.silent_close = True  # keep-alive announced, socket closed after it
        run_scopes(nf, 1, f"b{batch}-")
        exporter.force_flush(timeout=5)
    assert [s.name for s in collector.spans()] == ["b0-0", "b1-0", "b2-0", "b3-0"]
    assert transport.retries == 0  # a stale connection is not a failure to back off from
    # "Connection: close", then one kept-alive connection that the collector dropped after
    # b2; b3 found it closed and was sent again at once on a new one.
    assert collector.connections == 3 and transport.requests == 5
    assert exporter.stats()["spans_failed"] == 0


def test_http_gzip(nf, otlp, collector, cleanup):
    exporter = make_exporter(otlp, otlp.HttpBinaryTransport(collector.url, compression="gzip"))
    cleanup.append(exporter)
    exporter.register("otlp-gzip")
    run_scopes(nf, 3)
    exporter.force_flush(timeout=5)
    assert all(h["Content-Encoding"] == "gzip" for _, h, _, _ in collector.requests)
    assert sorted(s.name for s in collector.spans()) == ["s0", "s1", "s2"]


def test_retries_503_then_succeeds(nf, otlp, collector, cleanup):
    collector.script = [(503, {}), (502, {}), (504, {})]
    transport = otlp.HttpBinaryTransport(collector.url, retry_initial_millis=20)
    exporter = make_exporter(otlp, transport)
    cleanup.append(exporter)
    exporter.register("otlp-retry")
    run_scopes(nf, 1)
    exporter.force_flush(timeout=5)  # no failure left
    assert len(collector.requests) == 4 and transport.retries == 3
    assert [s.name for s in collector.spans()] == ["s0"] * 4  # the same batch each time
    stats = exporter.stats()
    assert stats["spans_exported"] == 1 and stats["spans_failed"] == 0
    assert stats["last_error"] is None


def test_429_honours_retry_after(nf, otlp, collector, cleanup):
    collector.script = [(429, {"Retry-After": "1"})]
    transport = otlp.HttpBinaryTransport(collector.url, retry_initial_millis=10)
    exporter = make_exporter(otlp, transport, timeout_millis=5000)
    cleanup.append(exporter)
    exporter.register("otlp-429")
    run_scopes(nf, 1)
    exporter.force_flush(timeout=5)
    (_, _, _, t1), (_, _, _, t2) = collector.requests
    assert 0.9 <= t2 - t1 < 3.0  # waited as told, not the 10 ms backoff
    assert exporter.stats()["spans_exported"] == 1


def test_retry_after_beyond_the_timeout_fails_at_once(nf, otlp, collector, cleanup):
    collector.script = [(429, {"Retry-After": "30"})]
    exporter = make_exporter(otlp, otlp.HttpBinaryTransport(collector.url), timeout_millis=2000)
    cleanup.append(exporter)
    exporter.register("otlp-429-long")
    run_scopes(nf, 1)
    t0 = time.monotonic()
    with pytest.warns(RuntimeWarning, match="could not export 1 spans: HTTP 429"):
        with pytest.raises(otlp.ExportError, match="HTTP 429"):
            exporter.force_flush(timeout=5)
    assert time.monotonic() - t0 < 1.5
    assert len(collector.requests) == 1
    assert exporter.stats()["spans_failed"] == 1


def test_non_retryable_status_fails_then_a_success_resolves_it(nf, otlp, collector, cleanup):
    collector.script = [(400, {})]
    exporter = make_exporter(otlp, otlp.HttpBinaryTransport(collector.url))
    cleanup.append(exporter)
    exporter.register("otlp-400")
    run_scopes(nf, 2)
    with pytest.warns(RuntimeWarning, match="HTTP 400"):
        with pytest.raises(otlp.ExportError, match="HTTP 400 Bad Request"):
            exporter.force_flush(timeout=5)
    assert len(collector.requests) == 1  # not retried
    stats = nf.diagnostics()["exporters"]["otlp-400"]
    assert stats["spans_failed"] == 2 and stats["errors"] == 1
    assert "HTTP 400" in stats["last_error"]
    with pytest.raises(otlp.ExportError):  # still unresolved
        exporter.force_flush(timeout=5)
    run_scopes(nf, 1, "later")
    exporter.force_flush(timeout=5)  # a batch went through: resolved
    stats = exporter.stats()
    assert stats["spans_exported"] == 1 and stats["spans_failed"] == 2
    assert "HTTP 400" in stats["last_error"]  # kept for diagnostics


def test_collector_down_is_bounded_counted_and_raised(nf, otlp, cleanup):
    transport = otlp.HttpBinaryTransport(f"http://127.0.0.1:{free_port()}",
                                         retry_initial_millis=20)
    exporter = make_exporter(otlp, transport, timeout_millis=300)
    cleanup.append(exporter)
    exporter.register("otlp-down")
    t0 = time.monotonic()
    run_scopes(nf, 3)
    assert time.monotonic() - t0 < 0.3  # the traced thread never waits for the collector
    with pytest.warns(RuntimeWarning, match="could not export 3 spans: ConnectionRefusedError"):
        with pytest.raises(otlp.ExportError, match="ConnectionRefused"):
            exporter.force_flush(timeout=5)
    assert time.monotonic() - t0 < 2.0
    assert transport.retries >= 2  # connection errors are retried until the timeout
    stats = nf.diagnostics()["exporters"]["otlp-down"]
    assert stats["spans_failed"] == 3 and stats["spans_exported"] == 0
    assert "gave up: timeout reached" in stats["last_error"]


def test_hanging_collector_times_out_and_shutdown_is_bounded(nf, otlp, cleanup):
    hanging = Hanging()
    try:
        exporter = make_exporter(otlp, otlp.HttpBinaryTransport(hanging.url),
                                 timeout_millis=400, max_export_batch_size=2)
        exporter.register("otlp-hang")
        run_scopes(nf, 6)
        nf._core.flush(5)
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exporter.shutdown(timeout=0.6)
        assert time.monotonic() - t0 < 1.2
        stats = exporter.stats()
        # A batch in flight fails at the request timeout; what is left is abandoned, counted.
        assert stats["spans_failed"] >= 2
        assert stats["spans_failed"] + stats["spans_abandoned"] == 6
        assert stats["spans_abandoned"] >= 2 and stats["queue_size"] == 0
    finally:
        hanging.close()


# --- otlp_json_file -----------------------------------------------------------------------

def test_json_file_one_line_per_batch(nf, otlp, tmp_path, cleanup):
    transport = otlp.OtlpJsonFileTransport(str(tmp_path))
    assert os.path.basename(transport.path).startswith("otlp-")
    assert transport.path.endswith(f"-{os.getpid()}.jsonl")
    exporter = make_exporter(otlp, transport, max_export_batch_size=2, max_queue_size=2,
                             resource=fixed_resource(otlp))
    cleanup.append(exporter)
    exporter.register("otlp-file")
    run_scopes(nf, 5)
    exporter.force_flush(timeout=5)
    with open(transport.path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert 3 <= len(lines) <= 5
    names = []
    http_message = otlp.ProtoEncoder(fixed_resource(otlp), otlp.InstrumentationScope())
    for line in lines:
        parsed = json_format.Parse(orjson.dumps(_ids(orjson.loads(line), hex_to_b64)),
                                   Request())
        spans = parsed.resource_spans[0].scope_spans[0].spans
        assert 1 <= len(spans) <= 2
        names += [s.name for s in spans]
        assert Request.FromString(http_message.encode([
            otlp.Span(s.trace_id, s.span_id, s.name, s.start_time_unix_nano,
                      s.end_time_unix_nano, parent_span_id=s.parent_span_id or None,
                      attributes=[(a.key, a.value.string_value) for a in s.attributes])
            for s in spans])) == parsed
    assert names == ["s0", "s1", "s2", "s3", "s4"]
    assert exporter.stats()["spans_exported"] == 5


def test_json_file_line_is_byte_exact(nf, otlp, tmp_path, cleanup):
    """The spans of one batch, through the exporter and the file transport, give exactly the
    expected line."""

    class Fixed:
        def on_event(self, ev):
            return fixed_spans(otlp) if ev.kind == "mark" else None

    transport = otlp.OtlpJsonFileTransport(str(tmp_path), "fixed.jsonl")
    exporter = otlp.OtlpExporter(transport, Fixed(), resource=fixed_resource(otlp),
                                 scope=otlp.InstrumentationScope("nemoflow-test"),
                                 scheduled_delay_millis=60_000)
    cleanup.append(exporter)
    exporter.register("otlp-fixed")
    nf.mark("emit")
    exporter.force_flush(timeout=5)
    with open(tmp_path / "fixed.jsonl", "rb") as f:
        assert f.read() == EXPECTED_LINE.encode() + b"\n"


def test_json_file_modes(otlp, tmp_path):
    resource, scope = otlp.Resource.for_service(), otlp.InstrumentationScope()
    spans = fixed_spans(otlp)[2:]
    for mode, lines in (("append", 1), (otlp._transport.AtofExporterMode.Append, 2),
                        ("overwrite", 1)):
        t = otlp.OtlpJsonFileTransport(str(tmp_path / "out"), "trace-{pid}.jsonl", mode)
        assert t.path == str(tmp_path / "out" / f"trace-{os.getpid()}.jsonl")
        t.send(t.make_encoder(resource, scope).encode(spans), time.monotonic() + 1)
        t.close()
        with open(t.path, "rb") as f:
            assert f.read().count(b"\n") == lines
    with pytest.raises(ValueError, match='mode must be "append" or "overwrite"'):
        otlp.OtlpJsonFileTransport(str(tmp_path), mode="truncate")


def test_json_file_is_private_and_never_a_link(otlp, tmp_path):
    t = otlp.OtlpJsonFileTransport(str(tmp_path / "new" / "dir"), "t.jsonl")
    t.close()
    assert os.stat(t.path).st_mode & 0o777 == 0o600 & ~_umask()
    assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o700 & ~_umask()
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(b"")
    os.symlink(target, tmp_path / "link.jsonl")
    with pytest.raises(OSError, match="refusing to write"):
        otlp.OtlpJsonFileTransport(str(tmp_path), "link.jsonl")
    with pytest.raises(OSError):
        otlp.OtlpJsonFileTransport(str(tmp_path), "new")  # a directory
    with pytest.raises(ValueError, match="file_mode must be permission bits"):
        otlp.OtlpJsonFileTransport(str(tmp_path), file_mode=0o1777)
    assert target.read_bytes() == b""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the queue ----------------------------------------------------------------------------

def test_exports_run_on_the_export_thread(nf, otlp, cleanup):
    transport = GateTransport(otlp)
    transport.gate.set()
    exporter = make_exporter(otlp, transport)
    cleanup.append(exporter)
    exporter.register("otlp-thread")
    run_scopes(nf, 2)
    exporter.force_flush(timeout=5)
    assert transport.threads == {"nemoflow-otlp-otlp-thread"}
    assert transport.span_names() == ["s0", "s1"]


def test_scheduled_delay_batches_until_due_or_full(nf, otlp, cleanup):
    transport = GateTransport(otlp)
    transport.gate.set()
    exporter = make_exporter(otlp, transport, scheduled_delay_millis=60_000,
                             max_export_batch_size=3)
    cleanup.append(exporter)
    exporter.register("otlp-delay")
    run_scopes(nf, 4)
    nf._core.flush(5)
    deadline = time.monotonic() + 5
    while not transport.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert transport.span_names() == ["s0", "s1", "s2"]  # a full batch goes at once
    assert exporter.stats()["queue_size"] == 1  # the rest waits for the delay or a flush
    exporter.force_flush(timeout=5)
    assert transport.span_names() == ["s0", "s1", "s2", "s3"]


def test_drop_mode_counts_and_never_blocks(nf, otlp, cleanup):
    transport = GateTransport(otlp)
    exporter = make_exporter(otlp, transport, max_queue_size=4, max_export_batch_size=2,
                             overflow="drop")
    transport.exporter = exporter
    cleanup.append(exporter)
    exporter.register("otlp-drop")
    with pytest.warns(RuntimeWarning, match="span queue was full and spans were dropped"):
        run_scopes(nf, 20)
        assert nf._core.flush(2)  # the delivery thread did not wait for the blocked export
    stats = exporter.stats()
    assert 0 < stats["queue_size"] <= 4 and stats["waits"] == 0
    dropped = stats["spans_dropped"]
    assert dropped >= 20 - 4 - 2  # at most a full queue and one batch in flight were kept
    transport.gate.set()
    exporter.force_flush(timeout=5)
    stats = nf.diagnostics()["exporters"]["otlp-drop"]
    assert stats["spans_exported"] == 20 - dropped and stats["spans_dropped"] == dropped
    names = transport.span_names()  # the spans that found room, in order
    assert len(names) == 20 - dropped and names[:2] == ["s0", "s1"]
    assert names == sorted(names, key=lambda n: int(n[1:]))
    assert transport.max_queue_seen <= 4


def test_block_mode_is_lossless_and_waits_on_the_delivery_thread(nf, otlp, cleanup):
    transport = GateTransport(otlp)
    exporter = make_exporter(otlp, transport, max_queue_size=4, max_export_batch_size=2,
                             overflow="block")
    transport.exporter = exporter
    cleanup.append(exporter)
    exporter.register("otlp-block")
    t0 = time.monotonic()
    run_scopes(nf, 20)  # the traced thread only fills its ring
    assert time.monotonic() - t0 < 0.5
    assert not nf._core.flush(0.3)  # the delivery thread waits for room in the span queue
    assert exporter.stats()["waits"] >= 1
    transport.gate.set()
    exporter.force_flush(timeout=5)
    stats = exporter.stats()
    assert stats["spans_exported"] == 20 and stats["spans_dropped"] == 0
    assert transport.span_names() == [f"s{i}" for i in range(20)]
    assert transport.max_queue_seen <= 4


def test_default_overflow_follows_the_pipeline(nf, otlp, cleanup):
    transport = GateTransport(otlp)
    exporter = make_exporter(otlp, transport, max_queue_size=2, max_export_batch_size=1)
    assert exporter.overflow is None
    cleanup.append(exporter)
    exporter.register("otlp-inherit")
    nf.configure(overflow="drop")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_scopes(nf, 10)
            assert nf._core.flush(2)
        assert exporter.stats()["spans_dropped"] >= 10 - 1 - 2
    finally:
        nf.configure(overflow="block")
        transport.gate.set()
    exporter.force_flush(timeout=5)


def test_projection_errors_and_invalid_spans_are_counted(nf, otlp, cleanup):
    class Flaky(ScopeProjection):
        def on_event(self, ev):
            if ev.name == "boom" and ev.scope_category == "start":
                raise KeyError("boom")
            spans = super().on_event(ev)
            if ev.name == "bad" and spans:
                spans[0].span_id = b"short"
            return spans

    transport = GateTransport(otlp)
    transport.gate.set()
    exporter = otlp.OtlpExporter(transport, Flaky(otlp), scheduled_delay_millis=0)
    cleanup.append(exporter)
    exporter.register("otlp-flaky")
    with pytest.warns(RuntimeWarning) as caught:
        for name in ("ok1", "boom", "bad", "ok2"):
            with nf.trace(name):
                pass
        exporter.force_flush(timeout=5)
    messages = " ".join(str(w.message) for w in caught)
    assert "KeyError" in messages and "invalid span" in messages
    assert transport.span_names() == ["ok1", "ok2"]
    stats = nf.diagnostics()["exporters"]["otlp-flaky"]
    assert stats["errors"] >= 2 and stats["spans_failed"] == 1
    assert "span_id must be 8 bytes" in stats["last_error"]


def test_projection_stats_and_shutdown_hooks(nf, otlp):
    class WithHooks(ScopeProjection):
        def stats(self):
            return {"spans_unfinished": len(self.open), "ends_without_start": 0}

        def shutdown(self):
            return [self.otlp.Span(TRACE, TRACE[8:], "flushed-at-shutdown", 1, 2)]

    transport = GateTransport(otlp)
    transport.gate.set()
    exporter = otlp.OtlpExporter(transport, WithHooks(otlp), scheduled_delay_millis=0)
    exporter.register("otlp-hooks")
    h = nf.scope.push("left-open", nf.ScopeType.Function)
    try:
        nf._core.flush(5)
        assert nf.diagnostics()["exporters"]["otlp-hooks"]["spans_unfinished"] == 1
        exporter.shutdown(timeout=2)
    finally:
        nf.scope.pop(h)
    assert transport.span_names() == ["flushed-at-shutdown"]
    assert exporter.stats()["spans_exported"] == 1


# --- the exporter base --------------------------------------------------------------------

def test_registration_shares_the_exporter_namespace(nf, otlp, tmp_path, cleanup):
    transport = GateTransport(otlp)
    transport.gate.set()
    exporter = make_exporter(otlp, transport)
    cleanup.append(exporter)
    assert exporter.name == "otlp"
    atof = nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), "t.jsonl"))
    atof.register("taken")
    try:
        with pytest.raises(nf.AlreadyExistsError, match="taken already exists"):
            exporter.register("taken")
    finally:
        atof.shutdown()
    exporter.register("a")
    exporter.register("b")
    assert exporter.name == "a"
    assert exporter.deregister("a") and not exporter.deregister("a")
    run_scopes(nf, 1)  # still attached under "b"
    exporter.force_flush(timeout=5)
    assert transport.span_names() == ["s0"]
    exporter.shutdown()
    exporter.shutdown()  # twice is fine
    assert "b" not in nf.diagnostics()["exporters"]
    with pytest.raises(RuntimeError, match="was shut down"):
        exporter.register("c")


# --- exit ---------------------------------------------------------------------------------

EXIT_SCRIPT = textwrap.dedent("""
    import sys, time, uuid
    import nemoflow as nf
    from nemoflow.exporters import otlp

    class Projection:
        def __init__(self):
            self.open = {}
        def on_event(self, ev):
            if ev.kind != "scope":
                return None
            if ev.scope_category == "start":
                self.open[ev.uuid] = (ev.name, ev.timestamp_ns)
                return None
            name, t0 = self.open.pop(ev.uuid)
            raw = uuid.UUID(ev.uuid).bytes
            return [otlp.Span(raw, raw[8:], name, t0, ev.timestamp_ns)]

    exporter = otlp.OtlpExporter(otlp.HttpBinaryTransport(sys.argv[1]), Projection(),
                                 timeout_millis=int(sys.argv[2]), scheduled_delay_millis=60000,
                                 max_queue_size=int(sys.argv[4]), max_export_batch_size=4,
                                 overflow="block")
    exporter.register("otlp")
    for i in range(int(sys.argv[3])):
        with nf.trace(f"exit{i}"):
            pass
    print("done", flush=True)
""")


def _backend_env(nf):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    else:
        env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    return env


def test_spans_are_exported_at_exit(nf, collector):
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, collector.url, "3000", "5", "64"],
                          env=_backend_env(nf), capture_output=True, text=True, timeout=30,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert sorted(s.name for s in collector.spans()) == [f"exit{i}" for i in range(5)]


@pytest.mark.parametrize("n, queue", [(5, 64), (3000, 8)])
def test_a_hanging_collector_does_not_hang_exit(nf, n, queue):
    """Also with thousands of events still in the rings and a full queue in block mode: at
    shutdown nothing waits past the exporter's timeout, and what is left is counted."""
    hanging = Hanging()
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, hanging.url, "500", str(n),
                               str(queue)],
                              env=_backend_env(nf), capture_output=True, text=True, timeout=30,
                              cwd=REPO)
        elapsed = time.monotonic() - t0
    finally:
        hanging.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["done"]
    assert f"could not export {min(n, 4)} spans" in proc.stderr
    if n > queue:
        assert "spans were abandoned: shutdown's timeout ran out" in proc.stderr
    assert elapsed < 0.5 + 2.5  # the exporter's timeout, plus interpreter start-up


FORK_SCRIPT = textwrap.dedent("""
    import os, sys, uuid
    import nemoflow as nf
    from nemoflow.exporters import otlp

    class Projection:
        def __init__(self):
            self.open = {}
        def on_event(self, ev):
            if ev.kind != "scope":
                return None
            if ev.scope_category == "start":
                self.open[ev.uuid] = (ev.name, ev.timestamp_ns)
                return None
            name, t0 = self.open.pop(ev.uuid)
            raw = uuid.UUID(ev.uuid).bytes
            return [otlp.Span(raw, raw[8:], name, t0, ev.timestamp_ns)]

    exporter = otlp.OtlpExporter(otlp.HttpBinaryTransport(sys.argv[1]), Projection(),
                                 scheduled_delay_millis=60000)
    exporter.register("otlp")
    with nf.trace("before-fork"):
        pass
    exporter.force_flush(5)
    with nf.trace("queued-at-fork"):
        pass
    nf._core.flush(5)
    pid = os.fork()
    if pid == 0:
        with nf.trace("in-child"):
            pass
        exporter.force_flush(5)
        print("child", exporter.stats()["spans_exported"], flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    exporter.force_flush(5)
    print("parent", exporter.stats()["spans_exported"], flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_exports_its_own_spans_only(nf, collector):
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT, collector.url],
                          env=_backend_env(nf), capture_output=True, text=True, timeout=30,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["child", "1", "parent", "2"]
    assert sorted(s.name for s in collector.spans()) == ["before-fork", "in-child",
                                                        "queued-at-fork"]


def test_a_header_value_http_cannot_carry_is_refused_at_configuration(nf):
    # "Bearer …" (an ellipsis) used to pass, then fail every export with UnicodeEncodeError.
    config = nf.OpenTelemetryConfig()
    with pytest.raises(ValueError, match="'Authorization'.*Latin-1"):
        config.set_header("Authorization", "Bearer \u2026")
    with pytest.raises(ValueError, match="'X-Key'.*Latin-1"):
        config.headers = {"X-Key": "\u201ckey\u201d"}
    assert config.headers == {}
    config.set_header("Authorization", "Bearer caf\u00e9")  # Latin-1 is what HTTP carries
    assert config.headers == {"Authorization": "Bearer caf\u00e9"}
