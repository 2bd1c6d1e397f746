"""Cost of a managed tool call, beside a direct call and NeMo Relay's ``tools.execute``.

Every benchmark runs its operation ``N`` times per round, as in ``test_core_ops.py``;
``scripts/bench_compare.py`` reports them in ×call units from the same run.
"""

from __future__ import annotations

import asyncio

import pytest

N = 1000
R = range(N)

RELAY_MISSING = "nemo-relay is not installed (pip install nemo-relay): NeMo Relay reference skipped"


def _tool(args):
    return args


def _record(benchmark, nf, attached, op, run):
    benchmark.group = f"{op} [{attached}]"
    benchmark.extra_info.update(op=op, backend=nf.BACKEND, attached=attached)
    benchmark(run)


def test_ref_direct_tool_call(benchmark):
    f = _tool
    args = {"q": "x"}

    def run():
        for _ in R:
            f(args)
    benchmark.group = "reference"
    benchmark.extra_info.update(op="direct tool call", backend="-")
    benchmark(run)


def test_decorated_managed_tool(benchmark, nf, attached):
    @nf.trace.tool("search")
    def search(q):
        return q

    def run():
        for _ in R:
            search("x")
    _record(benchmark, nf, attached, "nf.trace.tool call", run)


def test_tools_execute(benchmark, nf, attached):
    execute = nf.tools.execute
    args = {"q": "x"}

    async def many():
        for _ in R:
            await execute("search", args, _tool)

    _record(benchmark, nf, attached, "tools.execute (async)", lambda: asyncio.run(many()))


def test_relay_tools_execute(benchmark):
    relay = pytest.importorskip("nemo_relay", reason=RELAY_MISSING)
    execute, result = relay.tools.execute, relay.ToolExecutionResult
    args = {"q": "x"}

    def tool(a):
        return result(a)

    async def many():
        for _ in R:
            await execute("search", args, tool)

    benchmark.group = "reference"
    benchmark.extra_info.update(op="nemo_relay tools.execute (async)", backend="nemo-relay")
    benchmark(lambda: asyncio.run(many()))
