"""A worker process for tests/test_otel_processes.py: an HTTP server on 127.0.0.1 that serves
POST /work inside the caller's trace and exports its spans to a collector.

Usage: python otel_worker.py NAME COLLECTOR_URL MODE. It prints its port on the first line of
stdout, serves until stdin closes (or 60 s pass), then flushes and exits.

Per request: the W3C ``traceparent`` is read with ``opentelemetry.propagate.extract``, an
OpenTelemetry SDK span (``NAME.handle``, SERVER) is started from it, and nemoflow's scopes
inside it join that trace through the SDK bridge. ``MODE`` says where nemoflow's spans go:
``otlp`` — nemoflow's own OTLP exporter (the SDK span goes through the SDK's OTLP exporter);
``sdk`` — ``OpenTelemetrySubscriber.from_tracer_provider``, so both leave through the SDK.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import nemoflow as nf


def main() -> None:
    name, collector, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    provider = TracerProvider(resource=Resource({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=f"{collector}/v1/traces", timeout=5)))
    tracer = provider.get_tracer("worker")
    if mode == "sdk":
        sub = nf.OpenTelemetrySubscriber.from_tracer_provider(provider, "full")
    else:
        sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
            "full", collector, service_name=name, scheduled_delay_millis=10))
    sub.register("otel")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            # W3C header names are case-insensitive; the default getter is not.
            incoming = propagate.extract({k.lower(): v for k, v in self.headers.items()})
            with tracer.start_as_current_span(f"{name}.handle", context=incoming,
                                              kind=trace.SpanKind.SERVER):
                with nf.scope.scope(name, nf.ScopeType.Function, input=body):
                    t = nf.tools.call("lookup", {"q": body["q"]})
                    nf.tools.call_end(t, {"answer": body["q"].upper()})
            sub.force_flush(5)  # the caller checks the collector once we have answered
            out = json.dumps({"answer": body["q"].upper(), "backend": nf.BACKEND}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    print(server.server_address[1], flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait(60)
    server.shutdown()
    sub.shutdown(5)
    provider.shutdown()


if __name__ == "__main__":
    main()
