"""LangGraph: the LangChain callback handler, plus graph lifecycle marks and helpers.

``instrument_graph(graph)`` returns a proxy whose ``invoke``/``ainvoke``/``stream``/``astream``
add a ``NemoFlowCallbackHandler``: the graph run is an ``Agent`` scope, each node a ``Function``
scope (parallel branches each under the graph), and the chat models, tools and retrievers the
nodes run are LLM calls, tool calls and ``Retriever`` scopes under their node.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .._backend import core as _core
from .langchain import NemoFlowCallbackHandler as _LangChainHandler
from .langchain import _plain, with_nemo_flow_callbacks

try:  # lifecycle callbacks (interrupt / resume) of recent LangGraph versions
    from langgraph.callbacks import GraphCallbackHandler as _GraphHandler
except ImportError:  # pragma: no cover - older LangGraph
    _GraphHandler = object  # type: ignore[assignment,misc]

__all__ = ["NemoFlowCallbackHandler", "NemoFlowGraph", "instrument_graph",
           "with_nemo_flow_callbacks"]


class NemoFlowCallbackHandler(_LangChainHandler, _GraphHandler):
    """The LangChain handler, plus ``Graph Interrupt`` / ``Graph Resume`` marks."""

    def on_interrupt(self, event) -> None:
        """A graph run was interrupted: a ``Graph Interrupt`` mark."""
        self._mark("Graph Interrupt", event, [
            {"id": getattr(i, "id", None), "value": getattr(i, "value", i)}
            for i in getattr(event, "interrupts", ())])

    def on_resume(self, event) -> None:
        """A graph run resumed: a ``Graph Resume`` mark."""
        self._mark("Graph Resume", event, None)

    def _mark(self, name, event, interrupts):
        data: dict = {"run_id": str(getattr(event, "run_id", None)),
                      "status": getattr(event, "status", None),
                      "checkpoint_id": getattr(event, "checkpoint_id", None)}
        if interrupts is not None:
            data["interrupts"] = interrupts
        with contextlib.suppress(Exception):
            _core.event(name, data=_plain_json(data))


def _plain_json(data):
    import orjson

    return orjson.loads(orjson.dumps(_plain(data), default=str))


def instrument_graph(graph, *, callback_handler=None) -> NemoFlowGraph:
    """A proxy of the compiled ``graph`` whose runs are traced."""
    return NemoFlowGraph(graph, callback_handler=callback_handler)


class NemoFlowGraph:
    """A compiled graph whose ``invoke``/``ainvoke``/``stream``/``astream`` add the handler;
    every other attribute is the graph's."""

    def __init__(self, graph, *, callback_handler=None) -> None:
        self._graph = graph
        self._handler = callback_handler or NemoFlowCallbackHandler()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)

    def _config(self, config):
        return with_nemo_flow_callbacks(config, callback_handler=self._handler)

    def with_config(self, config=None, **kwargs) -> NemoFlowGraph:
        """The graph with ``config`` applied, still traced."""
        return NemoFlowGraph(self._graph.with_config(config, **kwargs),
                             callback_handler=self._handler)

    def invoke(self, input, config=None, **kwargs):
        """``graph.invoke`` with the handler."""
        return self._graph.invoke(input, self._config(config), **kwargs)

    async def ainvoke(self, input, config=None, **kwargs):
        """``graph.ainvoke`` with the handler."""
        return await self._graph.ainvoke(input, self._config(config), **kwargs)

    def stream(self, input, config=None, **kwargs):
        """``graph.stream`` with the handler."""
        return self._graph.stream(input, self._config(config), **kwargs)

    def astream(self, input, config=None, **kwargs):
        """``graph.astream`` with the handler."""
        return self._graph.astream(input, self._config(config), **kwargs)
