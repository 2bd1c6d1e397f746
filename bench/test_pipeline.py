"""What tracing costs with a JSONL exporter attached, beside OpenTelemetry and NeMo Relay.

Three kinds of benchmark, all read by ``scripts/bench_compare.py``:

- traced-thread cost: ``N`` operations per round, as in ``test_core_ops.py``. Every round
  starts with the pipeline drained (``flush()`` in the untimed pedantic setup) and records at
  most 6,000 events, below the default ring of 8,192 records per thread: a round measures
  recording, never waiting for the delivery thread. Each benchmark checks that this thread's
  ring never filled (no producer wait) during it. The references get the same treatment: the
  OpenTelemetry SDK's BatchSpanProcessor (default settings, queue 2,048 spans) and NeMo Relay's
  ATOF exporter are flushed before each round.
- end to end (``kind="throughput"``): emit ``pairs`` scope pairs and wait until the exporter
  wrote them, with a fresh file per round; the lines written are counted after each round.
  Events are counted as two per scope pair (start and end) for every tracer, although an
  OpenTelemetry span is written as one line.
- asyncio: 1,000 tasks each doing a scope pair around ``await asyncio.sleep(0)``, beside the
  same tasks without the scope.

With ``--benchmark-disable`` (the CI smoke run) every body runs once at a reduced size.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time

import pytest

#: Operations per round of the traced-thread benchmarks (the test_core_ops.py convention).
N = 1000
R = range(N)
MAX_ROUNDS = 2000  # traced-thread rounds: as many as --benchmark-max-time allows, up to this
E2E_ROUNDS = 3     # end-to-end rounds
TASKS = 1000      # asyncio tasks per round

OTEL_MISSING = ("opentelemetry-sdk is not installed (pip install opentelemetry-sdk): "
                "OpenTelemetry reference skipped")
RELAY_MISSING = "nemo-relay is not installed (pip install nemo-relay): NeMo Relay reference skipped"


def _smoke(request) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


def _count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def _untimed(flush):
    """``flush`` as a pedantic setup (which would take a truthy return value for arguments)."""
    def setup():
        flush()
    return setup


@pytest.fixture
def timed(benchmark, pytestconfig):
    """``benchmark.pedantic`` with ``setup`` untimed before every round, over as many rounds as
    fit in ``--benchmark-max-time`` (at least ``--benchmark-min-rounds``), as ``benchmark()``
    calibrates itself: a short run would let one burst of machine noise move the median."""
    def run_rounds(run, setup=_untimed(lambda: None)):  # noqa: B008 - built once, on purpose
        if pytestconfig.getoption("benchmark_disable"):
            return benchmark.pedantic(run, setup=setup)
        setup()
        start = time.perf_counter()
        run()
        once = max(time.perf_counter() - start, 1e-6)
        budget = float(pytestconfig.getoption("benchmark_max_time"))
        rounds = max(int(pytestconfig.getoption("benchmark_min_rounds")),
                     min(MAX_ROUNDS, int(budget / once)))
        return benchmark.pedantic(run, setup=setup, rounds=rounds, warmup_rounds=1)
    return run_rounds


@pytest.fixture
def out_dir():
    with tempfile.TemporaryDirectory(prefix="nemoflow-bench-") as d:
        yield d


# -- nemoflow ---------------------------------------------------------------------------------

def _nemoflow_exporter(nf, directory: str, filename: str, name: str = "bench-jsonl"):
    exporter = nf.AtofExporter(nf.AtofExporterConfig(
        output_directory=directory, filename=filename, mode=nf.AtofExporterMode.Overwrite))
    exporter.register(name)
    return exporter


@pytest.fixture
def jsonl(nf, out_dir):
    exporter = _nemoflow_exporter(nf, out_dir, "bench.jsonl")
    yield exporter
    exporter.shutdown()


def _waits(nf) -> int:
    me = threading.get_ident()
    return sum(r["waits"] for r in nf.diagnostics()["pipeline"]["rings"] if r["thread"] == me)


def _traced(benchmark, timed, nf, exporter, op, run):
    def drained():
        nf.subscribers.flush()
        # The file is opened O_APPEND: truncating between rounds keeps it small.
        os.truncate(exporter.path, 0)

    benchmark.group = f"{op} [jsonl]"
    benchmark.extra_info.update(op=op, backend=nf.BACKEND, attached="jsonl")
    waits = _waits(nf)
    timed(run, drained)
    nf.subscribers.flush()
    assert _waits(nf) == waits, "the ring filled during a round: that measures waiting"
    assert nf.diagnostics()["pipeline"]["dropped"] == 0


def test_scope_pair_jsonl(benchmark, timed, nf, jsonl):
    scope, kind = nf.scope.scope, nf.ScopeType.Function

    def run():
        for _ in R:
            with scope("step", kind):
                pass
    _traced(benchmark, timed, nf, jsonl, "scope pair", run)


def test_trace_span_jsonl(benchmark, timed, nf, jsonl):
    trace = nf.trace

    def run():
        for _ in R:
            with trace("step"):
                pass
    _traced(benchmark, timed, nf, jsonl, "nf.trace span", run)


def test_push_pop_jsonl(benchmark, timed, nf, jsonl):
    push, pop, kind = nf.scope.push, nf.scope.pop, nf.ScopeType.Function

    def run():
        for _ in R:
            pop(push("step", kind))
    _traced(benchmark, timed, nf, jsonl, "push+pop", run)


def test_mark_jsonl(benchmark, timed, nf, jsonl):
    event = nf.scope.event

    def run():
        for _ in R:
            event("checkpoint")
    _traced(benchmark, timed, nf, jsonl, "mark", run)


def test_decorated_call_jsonl(benchmark, timed, nf, jsonl):
    @nf.trace
    def step(x):
        return x

    def run():
        for _ in R:
            step(1)
    _traced(benchmark, timed, nf, jsonl, "decorated call", run)


def test_traced_call_with_args_jsonl(benchmark, timed, nf, jsonl):
    @nf.trace
    def step(a, b):
        return {"sum": a + b, "ok": True}

    def run():
        for _ in R:
            step(1, 2)
    _traced(benchmark, timed, nf, jsonl, "traced call (args)", run)


def test_managed_tool_jsonl(benchmark, timed, nf, jsonl):
    @nf.trace.tool("search")
    def search(q):
        return q

    def run():
        for _ in R:
            search("x")
    _traced(benchmark, timed, nf, jsonl, "nf.trace.tool call", run)


def test_nested_depth_3_jsonl(benchmark, timed, nf, jsonl):
    scope, kind = nf.scope.scope, nf.ScopeType.Function

    def run():
        for _ in R:
            with scope("a", kind):
                with scope("b", kind):
                    with scope("c", kind):
                        pass
    _traced(benchmark, timed, nf, jsonl, "nested depth 3", run)


# -- OpenTelemetry SDK: BatchSpanProcessor + a JSON-lines file exporter ------------------------

@pytest.fixture
def otel():
    # Skipped here, before the benchmark starts: a skip inside a round would leave an empty
    # benchmark behind, which pytest-benchmark cannot save.
    return pytest.importorskip("opentelemetry.sdk.trace", reason=OTEL_MISSING)


def _otel_provider(sdk_trace, path: str, **batch_options):
    """A TracerProvider whose BatchSpanProcessor writes each span as one JSON line to ``path``."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        def __init__(self):
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)

        def export(self, spans):
            # One write per batch, as nemoflow's delivery thread does.
            view = memoryview("".join([s.to_json(indent=None) + "\n" for s in spans]).encode())
            while view:
                view = view[os.write(self._fd, view):]
            return SpanExportResult.SUCCESS

        def shutdown(self):
            os.close(self._fd)

    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(JsonLinesExporter(), **batch_options))
    return provider


def test_otel_span_pair(otel, benchmark, timed, out_dir):
    provider = _otel_provider(otel, os.path.join(out_dir, "otel.jsonl"))
    span = provider.get_tracer("bench").start_as_current_span

    def run():
        for _ in R:
            with span("step"):
                pass
    benchmark.group = "scope pair [jsonl]"
    benchmark.extra_info.update(op="scope pair", backend="otel", attached="jsonl")
    try:
        timed(run, _untimed(provider.force_flush))
    finally:
        provider.shutdown()


# -- NeMo Relay: its ATOF exporter; push+pop with nothing attached ----------------------------

@pytest.fixture
def relay():
    return pytest.importorskip("nemo_relay", reason=RELAY_MISSING)


def _relay_exporter(relay, directory: str, filename: str):
    config = relay.AtofExporterConfig()
    config.output_directory = directory
    config.filename = filename
    config.mode = relay.AtofExporterMode.Overwrite
    exporter = relay.AtofExporter(config)
    exporter.register("bench-relay")
    return exporter


def _relay_close(exporter) -> str:
    exporter.force_flush()
    exporter.deregister("bench-relay")
    exporter.shutdown()
    return exporter.path


def test_relay_scope_pair(relay, benchmark, timed, out_dir):
    exporter = _relay_exporter(relay, out_dir, "relay.jsonl")
    scope, kind = relay.scope.scope, relay.ScopeType.Function

    def run():
        for _ in R:
            with scope("step", kind):
                pass
    benchmark.group = "scope pair [jsonl]"
    benchmark.extra_info.update(op="scope pair", backend="nemo-relay", attached="jsonl")
    try:
        # force_flush waits for NeMo Relay's queued delivery, then flushes the file.
        timed(run, _untimed(exporter.force_flush))
    finally:
        _relay_close(exporter)


def test_relay_push_pop_no_subscriber(relay, benchmark):
    push, pop, kind = relay.scope.push, relay.scope.pop, relay.ScopeType.Function

    def run():
        for _ in R:
            pop(push("step", kind))
    benchmark.group = "push+pop [none]"
    benchmark.extra_info.update(op="push+pop", backend="nemo-relay", attached="none")
    benchmark(run)


# -- end to end: emit, then wait until every line is written ----------------------------------

def _end_to_end(benchmark, *, op, backend, pairs, lines_per_pair, open_sink, close_sink, emit,
                exact):
    """Round: a fresh file (untimed setup), ``emit(sink)`` until flushed (timed), then the
    lines written are counted (untimed, in the next setup or after the last round)."""
    written = []
    state = {"sink": None, "round": 0}

    def collect():
        if state["sink"] is not None:
            path = close_sink(state["sink"])
            state["sink"] = None
            written.append(_count_lines(path))
            os.remove(path)

    def setup():
        collect()
        state["round"] += 1
        state["sink"] = open_sink(f"e2e-{state['round']}.jsonl")
        return (state["sink"],), {}

    benchmark.group = f"{op} [jsonl]"
    try:
        benchmark.pedantic(emit, setup=setup, rounds=E2E_ROUNDS)
    finally:
        collect()
    expected = pairs * lines_per_pair
    benchmark.extra_info.update(op=op, backend=backend, attached="jsonl", kind="throughput",
                                pairs=pairs, events=2 * pairs, lines_expected=expected,
                                lines_written=min(written), rounds=len(written))
    if exact:
        assert written == [expected] * len(written), f"lines written {written}, expected {expected}"


def _nemoflow_sinks(nf, out_dir):
    def open_sink(filename):
        return _nemoflow_exporter(nf, out_dir, filename, "bench-e2e")

    def close_sink(exporter):
        exporter.shutdown()
        return exporter.path
    return open_sink, close_sink


def test_jsonl_end_to_end(benchmark, nf, out_dir, request):
    pairs = (200_000 if nf.BACKEND == "cython" else 20_000) // (100 if _smoke(request) else 1)
    scope, kind, flush = nf.scope.scope, nf.ScopeType.Function, nf.subscribers.flush

    def emit(_exporter):
        for _ in range(pairs):
            with scope("step", kind):
                pass
        flush()
    open_sink, close_sink = _nemoflow_sinks(nf, out_dir)
    _end_to_end(benchmark, op="JSONL end to end", backend=nf.BACKEND, pairs=pairs,
                lines_per_pair=2, open_sink=open_sink, close_sink=close_sink, emit=emit,
                exact=True)
    assert nf.diagnostics()["pipeline"]["dropped"] == 0


def test_payload_end_to_end(benchmark, nf, out_dir, request):
    # Scope pairs carrying an input and an output payload, encoded on the traced thread.
    pairs = (200_000 if nf.BACKEND == "cython" else 20_000) // (100 if _smoke(request) else 1)
    push, pop, kind, flush = nf.scope.push, nf.scope.pop, nf.ScopeType.Tool, nf.subscribers.flush
    question, answer = {"query": "weather in Paris", "k": 3}, {"hits": 3, "ok": True}

    def emit(_exporter):
        for _ in range(pairs):
            pop(push("search", kind, input=question), output=answer)
        flush()
    open_sink, close_sink = _nemoflow_sinks(nf, out_dir)
    _end_to_end(benchmark, op="payload end to end", backend=nf.BACKEND, pairs=pairs,
                lines_per_pair=2, open_sink=open_sink, close_sink=close_sink, emit=emit,
                exact=True)
    assert nf.diagnostics()["pipeline"]["dropped"] == 0


def test_large_payload_end_to_end(benchmark, nf, out_dir, request):
    # 1 MB payloads: each is larger than a quarter of the default arena.
    marks = (200 if nf.BACKEND == "cython" else 50) // (10 if _smoke(request) else 1)
    mark, flush = nf.mark, nf.subscribers.flush
    blob = {"document": "d" * 1_000_000}

    def emit(_exporter):
        for _ in range(marks):
            mark("document", data=blob)
        flush()
    open_sink, close_sink = _nemoflow_sinks(nf, out_dir)
    # a mark is one event: "pairs" here are marks, one line each
    _end_to_end(benchmark, op="1 MB payloads end to end", backend=nf.BACKEND, pairs=marks,
                lines_per_pair=1, open_sink=open_sink, close_sink=close_sink, emit=emit,
                exact=True)
    benchmark.extra_info["events"] = marks
    benchmark.extra_info["bytes"] = marks * 1_000_020
    assert nf.diagnostics()["pipeline"]["dropped"] == 0


def test_otel_end_to_end(otel, benchmark, out_dir, request):
    pairs = 20_000 // (100 if _smoke(request) else 1)

    def open_sink(filename):
        # A queue that holds the whole burst: with the default (2,048) the processor drops
        # most spans, and the rate would count work that was never done.
        provider = _otel_provider(otel, os.path.join(out_dir, filename),
                                  max_queue_size=max(pairs, 2048))
        provider.path = os.path.join(out_dir, filename)
        return provider

    def close_sink(provider):
        provider.shutdown()
        return provider.path

    def emit(provider):
        span = provider.get_tracer("bench").start_as_current_span
        for _ in range(pairs):
            with span("step"):
                pass
        provider.force_flush()
    _end_to_end(benchmark, op="JSONL end to end", backend="otel", pairs=pairs, lines_per_pair=1,
                open_sink=open_sink, close_sink=close_sink, emit=emit, exact=False)


def test_relay_end_to_end(relay, benchmark, out_dir, request):
    pairs = 20_000 // (100 if _smoke(request) else 1)
    scope, kind = relay.scope.scope, relay.ScopeType.Function

    def emit(exporter):
        for _ in range(pairs):
            with scope("step", kind):
                pass
        exporter.force_flush()
    _end_to_end(benchmark, op="JSONL end to end", backend="nemo-relay", pairs=pairs,
                lines_per_pair=2, open_sink=lambda f: _relay_exporter(relay, out_dir, f),
                close_sink=_relay_close, emit=emit, exact=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_end_to_end(benchmark, nf, out_dir, request, threads):
    per_thread = (100_000 if nf.BACKEND == "cython" else 10_000) // (100 if _smoke(request) else 1)
    scope, kind, flush = nf.scope.scope, nf.ScopeType.Function, nf.subscribers.flush

    def work():
        for _ in range(per_thread):
            with scope("step", kind):
                pass

    def emit(_exporter):
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        flush()
    open_sink, close_sink = _nemoflow_sinks(nf, out_dir)
    _end_to_end(benchmark, op=f"{threads} thread{'s' if threads > 1 else ''}",
                backend=nf.BACKEND, pairs=threads * per_thread, lines_per_pair=2,
                open_sink=open_sink, close_sink=close_sink, emit=emit, exact=True)
    benchmark.extra_info["threads"] = threads
    assert nf.diagnostics()["pipeline"]["dropped"] == 0


# -- asyncio: 1,000 tasks, each a scope pair around a yield -----------------------------------

@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _tasks(loop, step):
    async def main():
        await asyncio.gather(*[step() for _ in range(TASKS)])
    return lambda: loop.run_until_complete(main())


def test_ref_asyncio_tasks(benchmark, timed, loop):
    async def step():
        await asyncio.sleep(0)
    benchmark.group = "asyncio tasks [jsonl]"
    benchmark.extra_info.update(op="asyncio tasks", backend="-", attached="-", tasks=TASKS)
    timed(_tasks(loop, step))


def test_asyncio_scope_pair_jsonl(benchmark, timed, nf, jsonl, loop):
    scope, kind = nf.scope.scope, nf.ScopeType.Function

    async def step():
        with scope("step", kind):
            await asyncio.sleep(0)
    benchmark.extra_info["tasks"] = TASKS
    _traced(benchmark, timed, nf, jsonl, "asyncio tasks", _tasks(loop, step))
