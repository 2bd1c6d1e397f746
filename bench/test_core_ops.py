"""Per-operation cost of the core API, for both backends, beside same-run references.

Every benchmark runs its operation ``N`` times per round. ``scripts/bench_compare.py`` turns the
results into ×call units: (op - bare loop) / (empty call - bare loop), all from the same run.
"""

from __future__ import annotations

import contextvars

#: Operations per benchmark round: per-op costs are round time / N, minus the bare loop.
N = 1000
R = range(N)


def _empty():
    pass


class _TrivialCM:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- references (no nemoflow involved) ------------------------------------------------------

def test_ref_bare_loop(benchmark):
    def run():
        for _ in R:
            pass
    benchmark.group = "reference"
    benchmark.extra_info.update(op="bare loop", backend="-")
    benchmark(run)


def test_ref_empty_call(benchmark):
    f = _empty

    def run():
        for _ in R:
            f()
    benchmark.group = "reference"
    benchmark.extra_info.update(op="empty call", backend="-")
    benchmark(run)


def test_ref_trivial_with(benchmark):
    cm = _TrivialCM()

    def run():
        for _ in R:
            with cm:
                pass
    benchmark.group = "reference"
    benchmark.extra_info.update(op="with trivial CM", backend="-")
    benchmark(run)


def test_ref_contextvar_set_reset(benchmark):
    var = contextvars.ContextVar("v")

    def run():
        for _ in R:
            var.reset(var.set(1))
    benchmark.group = "reference"
    benchmark.extra_info.update(op="ContextVar set+reset", backend="-")
    benchmark(run)


# -- nemoflow, nothing attached and with one synchronous subscriber (``attached``) ----------

def _record(benchmark, nf, attached, op, run):
    benchmark.group = f"{op} [{attached}]"
    benchmark.extra_info.update(op=op, backend=nf.BACKEND, attached=attached)
    benchmark(run)


def test_scope_pair(benchmark, nf, attached):
    scope, kind = nf.scope.scope, nf.ScopeType.Function

    def run():
        for _ in R:
            with scope("step", kind):
                pass
    _record(benchmark, nf, attached, "scope pair", run)


def test_push_pop(benchmark, nf, attached):
    push, pop, kind = nf.scope.push, nf.scope.pop, nf.ScopeType.Function

    def run():
        for _ in R:
            pop(push("step", kind))
    _record(benchmark, nf, attached, "push+pop", run)


def test_mark(benchmark, nf, attached):
    event = nf.scope.event

    def run():
        for _ in R:
            event("checkpoint")
    _record(benchmark, nf, attached, "mark", run)


def test_trace_span(benchmark, nf, attached):
    trace = nf.trace

    def run():
        for _ in R:
            with trace("step"):
                pass
    _record(benchmark, nf, attached, "nf.trace span", run)


def test_trace_decorator(benchmark, nf, attached):
    @nf.trace
    def step(x):
        return x

    def run():
        for _ in R:
            step(1)
    _record(benchmark, nf, attached, "decorated call", run)


def test_traced_call_with_args(benchmark, nf, attached):
    # The call users make: arguments in, a small dict out (both recorded as payloads).
    @nf.trace
    def step(a, b):
        return {"sum": a + b, "ok": True}

    def run():
        for _ in R:
            step(1, 2)
    _record(benchmark, nf, attached, "traced call (args)", run)


def test_nested_depth_3(benchmark, nf, attached):
    scope, kind = nf.scope.scope, nf.ScopeType.Function

    def run():
        for _ in R:
            with scope("a", kind):
                with scope("b", kind):
                    with scope("c", kind):
                        pass
    _record(benchmark, nf, attached, "nested depth 3", run)
