"""Added cost of drop-in tracing: ``chat.completions.create`` of the real ``openai`` client
against the local fake server (``tests/fake_llm_server.py``), uninstrumented, instrumented by
``nemoflow.instrument("openai")``, and instrumented by OpenInference's OpenAI instrumentor
(OpenTelemetry SDK, batch span processor, in-memory exporter), in the same run.

``test_overhead_report`` alternates blocks of uninstrumented and instrumented calls (so machine
noise hits both alike) and prints the added time per call as a share of the call's own time.
"""

from __future__ import annotations

import statistics
import time

import pytest

openai = pytest.importorskip("openai")

from fake_llm_server import FakeLLMServer  # noqa: E402

N = 20  # calls per round
MESSAGES = [{"role": "user", "content": "hi"}]
OPENINFERENCE_MISSING = ("openinference-instrumentation-openai / opentelemetry-sdk are not "
                         "installed: OpenInference reference skipped")


@pytest.fixture(scope="module")
def client():
    with FakeLLMServer() as server:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-bench",
                           max_retries=0) as c:
            c.chat.completions.create(model="m", messages=MESSAGES)  # connection warm
            yield c


def _calls(client, stream=False):
    create = client.chat.completions.create

    def run():
        for _ in range(N):
            if stream:
                for _chunk in create(model="m", messages=MESSAGES, stream=True):
                    pass
            else:
                create(model="m", messages=MESSAGES)
    return run


def test_ref_uninstrumented(benchmark, client):
    benchmark.group = "chat.completions.create"
    benchmark.extra_info.update(op="uninstrumented", backend="-")
    benchmark(_calls(client))


def test_ref_uninstrumented_stream(benchmark, client):
    benchmark.group = "chat.completions.create stream"
    benchmark.extra_info.update(op="uninstrumented", backend="-")
    benchmark(_calls(client, True))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_nemoflow_instrumented(benchmark, nf, attached, client, stream):
    nf.instrument("openai")
    try:
        benchmark.group = "chat.completions.create" + (" stream" if stream else "")
        benchmark.extra_info.update(op=f"nemoflow [{attached}]", backend=nf.BACKEND)
        benchmark(_calls(client, stream))
    finally:
        nf.uninstrument("openai")


def _openinference():
    try:
        from openinference.instrumentation.openai import OpenAIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
    except ImportError:
        pytest.skip(OPENINFERENCE_MISSING)
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return OpenAIInstrumentor(), provider, exporter


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openinference_instrumented(benchmark, client, stream):
    instrumentor, provider, exporter = _openinference()
    instrumentor.instrument(tracer_provider=provider)
    try:
        benchmark.group = "chat.completions.create" + (" stream" if stream else "")
        benchmark.extra_info.update(op="openinference + otel sdk", backend="-")
        benchmark(_calls(client, stream))
        provider.force_flush()
        assert exporter.get_finished_spans()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def _compare(on, off, call, pairs=300):
    """The median call time uninstrumented, and the median of paired differences (one call
    off, one call on, alternating which goes first): a shared machine's drift hits both."""
    pc = time.perf_counter
    for _ in range(10):
        call()
    base, added = [], []
    for i in range(pairs):
        off()
        t0 = pc()
        call()
        t_off = pc() - t0
        on()
        t0 = pc()
        call()
        t_on = pc() - t0
        if i % 2:  # the other order: the first call of a pair pays any warm-up
            off()
            t0 = pc()
            call()
            t_off = pc() - t0
        base.append(t_off)
        added.append(t_on - t_off)
    off()
    return statistics.median(base), statistics.median(added)


def _one(client, stream):
    create = client.chat.completions.create
    if stream:
        return lambda: [c for c in create(model="m", messages=MESSAGES, stream=True)]
    return lambda: create(model="m", messages=MESSAGES)


def _mock_client():
    """A client whose transport answers in-process: the call's time is the client's own CPU
    work, so the wrapper's added µs stand out of the network noise."""
    import httpx
    from fake_llm_server import chat_completion

    body = chat_completion("m")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    return openai.OpenAI(base_url="http://fake/v1", api_key="sk-bench", max_retries=0,
                         http_client=httpx.Client(transport=transport))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_overhead_report(nf, client, stream, capsys):
    runs = [("local server", _one(client, stream))]
    if not stream:
        runs.append(("in-process transport", _one(_mock_client(), False)))
    rows = []
    nf.subscribers.register("bench-noop", lambda event: None)
    try:
        for where, run in runs:
            rows.append((f"nemoflow {nf.BACKEND}", where, *_compare(
                lambda: nf.instrument("openai"), lambda: nf.uninstrument("openai"), run)))
    finally:
        nf.subscribers._clear()
    try:
        instrumentor, provider, _ = _openinference()
    except pytest.skip.Exception:
        instrumentor = None
    if instrumentor is not None:
        for where, run in runs:
            rows.append(("openinference", where, *_compare(
                lambda: instrumentor.instrument(tracer_provider=provider),
                instrumentor.uninstrument, run)))
        provider.shutdown()
    with capsys.disabled():
        for name, where, base, added in rows:
            print(f"\n{'stream' if stream else 'plain'} {where}, {name}: call {base * 1e6:.0f} "
                  f"µs, added {added * 1e6:+.0f} µs ({added / base:+.1%})")
