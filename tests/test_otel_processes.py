"""Past one process: an agent calls two worker processes over HTTP on 127.0.0.1, all three
export to one loopback collector, and the collector holds one trace with every parent link
right — the shape of a fleet reporting to an OpenTelemetry Collector.

The agent (this process) injects a W3C ``traceparent`` naming its nemoflow call span; each
worker (tests/otel_worker.py) extracts it, starts an OpenTelemetry SDK span from it, and its
nemoflow scopes join that span through the SDK bridge. One worker exports nemoflow's spans
with nemoflow's OTLP exporter, the other hands them to its TracerProvider.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid

import pytest

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from otlp_collector import Collector

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = (("worker-1", "otlp"), ("worker-2", "sdk"))


def _traceparent_headers(trace_id: bytes, span_id: bytes) -> dict:
    """W3C headers naming a nemoflow span, written by the OpenTelemetry propagator."""
    ctx = SpanContext(int.from_bytes(trace_id, "big"), int.from_bytes(span_id, "big"),
                      is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    headers: dict = {}
    propagate.inject(headers, context=trace.set_span_in_context(NonRecordingSpan(ctx)))
    return headers


def _start_worker(nf, name, mode, collector):
    env = dict(os.environ)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    for var in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "OTEL_PROPAGATORS", "OTEL_SDK_DISABLED"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "otel_worker.py"), name,
                             collector.url, mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc


def _port(proc) -> int:
    line = proc.stdout.readline()  # the worker prints its port once it listens
    if not line.strip():
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"worker failed to start: {err[-2000:]}")
    return int(line)


@pytest.mark.slow
def test_one_trace_across_three_processes(nf):
    collector = Collector()
    procs = [_start_worker(nf, name, mode, collector) for name, mode in WORKERS]
    try:
        ports = [_port(p) for p in procs]
        sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
            "full", collector.url, service_name="agent", scheduled_delay_millis=10))
        sub.register("otel")
        calls = {}
        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            trace_id = uuid.UUID(agent.uuid).bytes  # the agent is its trace's root
            for (name, _), port in zip(WORKERS, ports):
                with nf.scope.scope(f"call {name}", nf.ScopeType.Tool) as call:
                    headers = _traceparent_headers(trace_id, uuid.UUID(call.uuid).bytes[8:])
                    headers["Content-Type"] = "application/json"
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/work",
                                                 data=json.dumps({"q": name}).encode(),
                                                 headers=headers, method="POST")
                    with urllib.request.urlopen(req, timeout=15) as resp:
                        reply = json.loads(resp.read())
                    assert reply == {"answer": name.upper(), "backend": nf.BACKEND}
                calls[name] = call
        sub.force_flush(5)
        sub.shutdown(2)
    finally:
        for p in procs:
            try:
                p.communicate(input="", timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate(timeout=5)
        collector.close()
    for p in procs:
        assert p.returncode == 0, p.stderr

    spans = collector.spans()
    assert len(spans) == 9, sorted(s.name for s in spans)
    assert {s.trace_id for s in spans} == {trace_id}  # one trace
    assert len({s.span_id for s in spans}) == 9
    by_name = {s.name: s for s in spans if s.name != "lookup"}
    root = by_name["agent"]
    assert root.parent_span_id == b"" and root.span_id == trace_id[8:]
    lookups = {s.parent_span_id: s for s in spans if s.name == "lookup"}
    for name, _ in WORKERS:
        call, handle, work = by_name[f"call {name}"], by_name[f"{name}.handle"], by_name[name]
        assert call.parent_span_id == root.span_id
        assert call.span_id == uuid.UUID(calls[name].uuid).bytes[8:]
        assert handle.parent_span_id == call.span_id  # the SDK span, from the traceparent
        assert handle.kind == 2  # SERVER
        assert work.parent_span_id == handle.span_id  # nemoflow's scope joined the SDK span
        # a local parent (the worker's own SDK span); the SDK's encoder leaves out bit 0x01
        assert work.flags in (256, 257)
        assert lookups[work.span_id].kind == 3  # the tool call under it (CLIENT)
    services = {}
    for rs in collector.resource_spans():
        svc = next(a.value.string_value for a in rs.resource.attributes
                   if a.key == "service.name")
        for ss in rs.scope_spans:
            for s in ss.spans:
                services.setdefault(svc, set()).add(s.name)
    assert services["agent"] == {"agent", "call worker-1", "call worker-2"}
    assert services["worker-1"] == {"worker-1.handle", "worker-1", "lookup"}
    assert services["worker-2"] == {"worker-2.handle", "worker-2", "lookup"}
