"""Past one process: an agent calls two worker processes over HTTP on 127.0.0.1, all three
export to one loopback OTLP collector, and the collector holds one trace with every parent
link right: the shape of a fleet reporting to an OpenTelemetry Collector.

The `traceparent` header is the one nemoflow's managed LLM call puts on the request it hands
the provider callback; the workers read it with `nf.continue_trace`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

pytest.importorskip("opentelemetry.proto")

from otlp_collector import Collector

WORKER = r"""
import http.server, json, sys
import nemoflow as nf

name, collector_url = sys.argv[1], sys.argv[2]
otel = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
    "full", collector_url, service_name=name, scheduled_delay_millis=10))
otel.register("otel")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with nf.continue_trace(self.headers):
            with nf.scope.scope(name, nf.ScopeType.Agent):
                with nf.scope.scope(f"{name}.lookup", nf.ScopeType.Tool):
                    pass
        body = json.dumps({"worker": name, "traceparent": self.headers["traceparent"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.timeout = 20
server.handle_request()          # one call, then report and leave
otel.force_flush(5)
otel.shutdown(5)
"""


def _env(nf):
    env = dict(os.environ)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    return env


def test_agent_and_two_workers_report_one_trace(nf):
    import json
    import urllib.request

    collector = Collector()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, f"worker-{i}", collector.url],
                                env=_env(nf), stdout=subprocess.PIPE, text=True)
               for i in (1, 2)]
    try:
        ports = [int(w.stdout.readline()) for w in workers]
        otel = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
            "full", collector.url, service_name="agent", scheduled_delay_millis=10))
        otel.register("otel")

        def call(port):
            def provider(request):
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat", data=b"{}",
                                             headers=request.headers, method="POST")
                with urllib.request.urlopen(req, timeout=20) as resp:
                    return json.loads(resp.read())
            return provider

        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            replies = [nf.llm.execute_sync(f"ask-{i}", nf.LLMRequest({}, {"q": i}), call(port))
                       for i, port in zip((1, 2), ports)]
        otel.force_flush(5)
        otel.shutdown(5)
        for w in workers:
            assert w.wait(timeout=30) == 0
        spans = {s.name: s for s in collector.spans()}
        services = {rs.resource.attributes[0].value.string_value
                    for rs in collector.resource_spans()}
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(5)
            w.stdout.close()
        collector.close()

    assert services == {"agent", "worker-1", "worker-2"}
    assert set(spans) == {"agent", "ask-1", "ask-2", "worker-1", "worker-1.lookup",
                          "worker-2", "worker-2.lookup"}
    trace_id = uuid.UUID(agent.uuid).bytes  # the outermost agent scope roots the trace
    assert {s.trace_id for s in spans.values()} == {trace_id}
    for i in (1, 2):
        ask, worker, lookup = spans[f"ask-{i}"], spans[f"worker-{i}"], spans[f"worker-{i}.lookup"]
        assert ask.parent_span_id == spans["agent"].span_id
        assert worker.parent_span_id == ask.span_id  # across the process boundary
        assert worker.flags == 769  # its parent is remote
        assert lookup.parent_span_id == worker.span_id and lookup.flags == 257
        assert replies[i - 1]["traceparent"] == (
            f"00-{trace_id.hex()}-{ask.span_id.hex()}-01")
    assert spans["agent"].parent_span_id == b""
