"""A small research agent, traced with nemoflow, written to ATOF JSONL and summarized.

    python examples/agent.py [OUTPUT.jsonl]

The agent plans, searches three sources concurrently (asyncio tasks), ranks the hits in a
worker thread, retries a flaky step and answers. Every step is a scope; an AtofExporter writes
the trace to a JSONL file (one ATOF event per line) and a readable tree is printed at the end.
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import nemoflow as nf
from nemoflow.cli import read_events, summary
from nemoflow.exporters import ChromeTraceExporter

CORPUS = {
    "docs": ["ring buffers keep the traced thread cheap", "ATOF is one JSON event per line"],
    "issues": ["asyncio tasks must not share a scope stack", "fork must not duplicate events"],
    "blog": ["tracing that nobody consumes should cost almost nothing"],
}


@nf.trace.agent("planner")
def plan(question: str) -> list:
    nf.mark("plan.ready", data={"sources": len(CORPUS)})
    return sorted(CORPUS)


@nf.trace.retriever
async def search(source: str, question: str) -> list:
    await asyncio.sleep(0.001 * (1 + len(source) % 3))  # a network round trip
    words = set(question.lower().split())
    return [doc for doc in CORPUS[source] if words & set(doc.split())]


@nf.trace.reranker
def rank(hits: list) -> list:
    return sorted(hits, key=len)


class Flaky(Exception):
    pass


_attempts = {"n": 0}


@nf.trace
def summarize(hits: list) -> str:
    _attempts["n"] += 1
    if _attempts["n"] == 1:
        raise Flaky("model timed out")  # recorded as an ERROR end event, then retried
    return f"{len(hits)} findings; best: {hits[0]!r}" if hits else "nothing found"


@nf.trace.agent("research-agent")
async def answer(question: str) -> str:
    sources = plan(question)
    # Concurrent tasks under one scope: each sees the agent as parent, none corrupts another.
    found = await asyncio.gather(*(search(s, question) for s in sources))
    hits = [doc for docs in found for doc in docs]
    # A worker thread joins the trace through nf.wrap (threads start with their own stack).
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as pool:
        ranked = await loop.run_in_executor(pool, nf.wrap(rank), hits)
    for attempt in range(3):
        try:
            return summarize(ranked)
        except Flaky:
            nf.mark("retry", data={"attempt": attempt + 1})
    return "gave up"


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("traces", "agent.jsonl")
    # The JSONL exporter is fed by nemoflow's delivery thread: the agent's threads only record.
    config = nf.AtofExporterConfig(output_directory=os.path.dirname(out) or ".",
                                   filename=os.path.basename(out),
                                   mode=nf.AtofExporterMode.Overwrite)
    exporter = nf.AtofExporter(config)
    exporter.register("jsonl")
    # The same events as a Chrome/Perfetto trace (open it in ui.perfetto.dev).
    chrome = ChromeTraceExporter(os.path.splitext(out)[0] + ".trace.json")
    chrome.register("chrome")
    try:
        result = asyncio.run(answer("why must asyncio tasks not share a scope stack"))
    finally:
        exporter.shutdown()  # flushes: every event is in the file once this returns
        chrome.shutdown()
    print(f"answer: {result}\n")
    print(f"trace written to {exporter.path} (backend: {nf.BACKEND})")
    print(f"Perfetto/Chrome trace: {chrome.path}")
    print(summary(read_events(exporter.path)))
    pipeline = nf.diagnostics()["pipeline"]
    print(f"\ndropped: {pipeline['dropped']}")


if __name__ == "__main__":
    main()
