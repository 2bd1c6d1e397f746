"""A small LangGraph agent, traced without decorating it: ATOF JSONL, OTLP/JSON and ATIF.

    pip install 'nemoflow[langgraph]'
    python examples/langgraph_agent.py [OUTPUT_DIR]

The graph asks a local fake chat model (langchain-core's ``GenericFakeChatModel``, no network),
runs the tool it calls in a ``ToolNode``, fans out to two parallel branches and joins them.
``instrument_graph`` adds nemoflow's callback handler: the graph run is an agent scope, each
node a function scope, the model an LLM call and the tool a tool call. The trace is printed as
a tree.
"""

from __future__ import annotations

import operator
import os
import sys
from typing import Annotated, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

import nemoflow as nf
from nemoflow.cli import read_events, summary
from nemoflow.integrations.langgraph import instrument_graph


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class State(TypedDict):
    messages: Annotated[list, add_messages]
    notes: Annotated[list, operator.add]


def build():
    model = GenericFakeChatModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"},
                                           "id": "call_1"}]),
        AIMessage(content="It is sunny in Paris."),
    ]))

    def agent(state):
        return {"messages": [model.invoke(state["messages"])]}

    def check_units(state):
        nf.mark("units", data={"system": "metric"})  # lands under this node's scope
        return {"notes": ["units checked"]}

    def check_sources(state):
        return {"notes": ["sources checked"]}

    def answer(state):
        return {"messages": [model.invoke(state["messages"])]}

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([get_weather]))
    g.add_node("check_units", check_units)
    g.add_node("check_sources", check_sources)
    g.add_node("answer", answer)
    g.add_edge(START, "agent")
    g.add_edge("agent", "tools")
    g.add_edge("tools", "check_units")
    g.add_edge("tools", "check_sources")
    g.add_edge(["check_units", "check_sources"], "answer")
    g.add_edge("answer", END)
    return instrument_graph(g.compile())


def main() -> None:
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "traces"
    os.makedirs(out_dir, exist_ok=True)
    jsonl = nf.AtofExporter(nf.AtofExporterConfig(
        output_directory=out_dir, filename="langgraph_agent.jsonl",
        mode=nf.AtofExporterMode.Overwrite))
    jsonl.register("jsonl")
    otlp = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
        "openinference", transport="otlp_json_file", output_directory=out_dir,
        filename="langgraph_agent.otlp.jsonl", service_name="langgraph-agent"))
    otlp.register("otlp")
    atif = nf.AtifExporter("weather-1", "weather-request", "1.0")
    atif.register("atif")
    try:
        with nf.scope.scope("weather-request", nf.ScopeType.Agent):
            result = build().invoke({"messages": [HumanMessage("Weather in Paris?")],
                                     "notes": []})
        trajectory = os.path.join(out_dir, "langgraph_agent.atif.json")
        with open(trajectory, "w", encoding="utf-8") as f:
            f.write(atif.export_json())
    finally:
        jsonl.shutdown()
        otlp.shutdown()
        atif.shutdown()
    print(result["messages"][-1].content)
    print(f"ATOF JSONL: {jsonl.path}")
    print(f"OTLP/JSON: {os.path.join(out_dir, 'langgraph_agent.otlp.jsonl')}")
    print(f"ATIF trajectory: {trajectory}")
    print(summary(read_events(jsonl.path)))


if __name__ == "__main__":
    main()
