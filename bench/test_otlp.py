"""OTLP export: what it costs the traced thread, and how many spans/s reach a collector.

- traced-thread cost (``attached="otlp"``): a scope pair with the ``full`` OpenTelemetry
  subscriber attached, exporting over ``http_binary`` to a loopback collector, beside the same
  loop with the JSONL exporter attached (``test_pipeline.py``), in the same run. Each round
  starts with the pipeline drained and every span exported (untimed ``force_flush``).
- end to end (``kind="throughput"``, op ``OTLP end to end``): emit ``pairs`` scope pairs, then
  wait until the collector has received every span; beside the OpenTelemetry SDK's
  ``BatchSpanProcessor`` + ``OTLPSpanExporter`` (HTTP protobuf) sending the same number of
  spans to the same collector. The collector runs in its own process and decodes every
  request, so it takes no CPU from the process measured; spans received are counted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

N = 1000
R = range(N)
E2E_PAIRS = 20_000
E2E_ROUNDS = 3

pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2",
                    reason="opentelemetry-proto is not installed (the nemoflow[otel] extra)")

_SINK = textwrap.dedent("""
    import http.server, sys, threading
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest)
    count = [0]
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = ExportTraceServiceRequest.FromString(body)
            n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
            with lock:
                count[0] += n
            self._reply(b"")

        def do_GET(self):
            with lock:
                n = count[0]
                if self.path == "/reset":
                    count[0] = 0
            self._reply(str(n).encode())

        def _reply(self, out):
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever(0.05)
""")


class Sink:
    """A loopback OTLP/HTTP collector in a child process that counts the spans it decodes."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE,
                                     text=True)
        port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}"

    def _get(self, path: str) -> int:
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return int(resp.read())

    def count(self) -> int:
        return self._get("/count")

    def reset(self) -> int:
        return self._get("/reset")

    def wait_for(self, n: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        got = self.count()
        while got < n and time.monotonic() < deadline:
            time.sleep(0.002)
            got = self.count()
        return got

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def timed(benchmark, pytestconfig):
    """``benchmark.pedantic`` with an untimed ``setup`` before every round, over as many
    rounds as fit in ``--benchmark-max-time`` (as in ``test_pipeline.py``)."""
    def run_rounds(run, setup):
        if pytestconfig.getoption("benchmark_disable"):
            return benchmark.pedantic(run, setup=setup)
        setup()
        start = time.perf_counter()
        run()
        once = max(time.perf_counter() - start, 1e-6)
        budget = float(pytestconfig.getoption("benchmark_max_time"))
        rounds = max(int(pytestconfig.getoption("benchmark_min_rounds")),
                     min(2000, int(budget / once)))
        return benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1)
    return run_rounds


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    s.close()


def _subscriber(nf, sink, name="bench-otlp", **options):
    sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig("full", sink.url, **options))
    sub.register(name)
    return sub


def _waits(nf) -> int:
    import threading
    me = threading.get_ident()
    return sum(r["waits"] for r in nf.diagnostics()["pipeline"]["rings"] if r["thread"] == me)


def _run_traced(benchmark, timed, nf, attached, drain):
    scope, kind = nf.scope.scope, nf.ScopeType.Function

    def run():
        for _ in R:
            with scope("step", kind):
                pass

    def setup():
        drain()

    benchmark.group = f"scope pair [{attached}]"
    benchmark.extra_info.update(op="scope pair", backend=nf.BACKEND, attached=attached)
    waits = _waits(nf)
    timed(run, setup)
    nf.subscribers.flush()
    assert _waits(nf) == waits, "the ring filled during a round: that measures waiting"
    assert nf.diagnostics()["pipeline"]["dropped"] == 0


def test_scope_pair_otlp(benchmark, timed, nf, sink):
    """Traced-thread cost of a scope pair with the OTLP subscriber attached."""
    sub = _subscriber(nf, sink)
    try:
        _run_traced(benchmark, timed, nf, "otlp", lambda: sub.force_flush(30))
        stats = sub.stats()
        assert stats["spans_dropped"] == 0 and stats["spans_failed"] == 0
    finally:
        sub.shutdown(10)


def test_scope_pair_jsonl_beside_otlp(benchmark, timed, nf, out_dir):
    """The same loop with the JSONL exporter attached, for the comparison in this run."""
    exporter = nf.AtofExporter(nf.AtofExporterConfig(
        output_directory=out_dir, filename="beside-otlp.jsonl",
        mode=nf.AtofExporterMode.Overwrite))
    exporter.register("bench-jsonl-beside")

    def drain():
        nf.subscribers.flush()
        os.truncate(exporter.path, 0)
    try:
        _run_traced(benchmark, timed, nf, "jsonl (otlp run)", drain)
    finally:
        exporter.shutdown()


@pytest.fixture
def out_dir():
    import tempfile
    with tempfile.TemporaryDirectory(prefix="nemoflow-bench-") as d:
        yield d


def _smoke(request) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


def _throughput(benchmark, *, backend, pairs, emit, op="OTLP end to end"):
    counts = []

    def setup():
        return (), {}

    def round_():
        counts.append(emit())

    benchmark.group = op
    benchmark.pedantic(round_, setup=setup, rounds=E2E_ROUNDS)
    benchmark.extra_info.update(op=op, backend=backend, attached="otlp",
                                kind="throughput", pairs=pairs, events=pairs,
                                lines_expected=pairs, lines_written=min(counts),
                                rounds=len(counts), unit="spans")
    return counts


@pytest.mark.parametrize("otel_type", ["gen_ai", "full"])
def test_otlp_end_to_end(benchmark, nf, sink, request, otel_type):
    """Emit scope pairs, wait until the collector has every span (lossless: none lost).
    ``gen_ai`` spans of plain scopes carry no attributes, as the SDK's spans here; ``full``
    spans carry six."""
    pairs = 200 if _smoke(request) else E2E_PAIRS
    sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(otel_type, sink.url,
                                                            scheduled_delay_millis=50))
    sub.register("bench-otlp-e2e")
    scope, kind = nf.scope.scope, nf.ScopeType.Function

    def emit():
        sink.reset()
        for _ in range(pairs):
            with scope("step", kind):
                pass
        sub.force_flush(60)
        return sink.wait_for(pairs)

    try:
        counts = _throughput(benchmark, backend=nf.BACKEND, pairs=pairs, emit=emit,
                             op=f"OTLP end to end ({otel_type})")
    finally:
        sub.shutdown(10)
    assert counts == [pairs] * len(counts), f"spans received {counts}, expected {pairs}"


def test_otel_sdk_otlp_end_to_end(benchmark, sink, request):
    """The OpenTelemetry SDK: BatchSpanProcessor + OTLPSpanExporter (HTTP protobuf)."""
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    exporter_mod = pytest.importorskip(
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        reason="opentelemetry-exporter-otlp-proto-http is not installed")
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    pairs = 200 if _smoke(request) else E2E_PAIRS
    provider = sdk_trace.TracerProvider()
    # A queue as large as a round, so that the SDK's rate is not cut by dropped spans.
    provider.add_span_processor(BatchSpanProcessor(
        exporter_mod.OTLPSpanExporter(endpoint=sink.url + "/v1/traces"),
        max_queue_size=pairs, max_export_batch_size=min(512, pairs),
        schedule_delay_millis=50))
    span = provider.get_tracer("bench").start_as_current_span

    def emit():
        sink.reset()
        for _ in range(pairs):
            with span("step"):
                pass
        provider.force_flush(60_000)
        return sink.wait_for(pairs, timeout=5)

    try:
        _throughput(benchmark, backend="otel", pairs=pairs, emit=emit)
    finally:
        provider.shutdown()
