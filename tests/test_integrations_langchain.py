"""LangChain and LangGraph runs as nemoflow scopes (``NemoFlowCallbackHandler``), with the real
``langchain-core`` fake chat models and a small ``langgraph`` graph."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, TypedDict

import pytest

pytest.importorskip("langchain_core")

from fake_llm_server import request_data
from langchain_core.callbacks.manager import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

try:
    from langgraph.graph.message import add_messages
except ImportError:  # the graph tests skip
    add_messages = operator.add

OK = {"otel.status_code": "OK"}


class State(TypedDict):
    messages: Annotated[list, add_messages]
    seen: Annotated[list, operator.add]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class Docs(BaseRetriever):
    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> list:
        return [Document(page_content=f"about {query}", metadata={"n": 1})]


def tree(events):
    """``{name: (category, parent name, start, end)}`` of the scopes in ``events``."""
    starts = {e.uuid: e for e in events if e.kind == "scope" and e.scope_category == "start"}
    ends = {e.uuid: e for e in events if e.kind == "scope" and e.scope_category == "end"}
    out = {}
    for uuid, s in starts.items():
        parent = starts.get(s.parent_uuid)
        out.setdefault(s.name, []).append(
            (s.category, parent.name if parent else None, s, ends.get(uuid)))
    return out


def one(t, name):
    (entry,) = t[name]
    return entry


def handler(nf):
    from nemoflow.integrations.langchain import NemoFlowCallbackHandler
    return NemoFlowCallbackHandler()


def test_chain_chat_model_and_prompt(nf, events):
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | FakeListChatModel(
        responses=["hello there"])
    with nf.scope.scope("request", nf.ScopeType.Agent):
        out = chain.invoke({"q": "hi"}, config={"callbacks": [handler(nf)]})
    assert out.content == "hello there"
    t = tree(events)
    assert one(t, "RunnableSequence")[:2] == ("agent", "request")
    assert one(t, "ChatPromptTemplate")[:2] == ("function", "RunnableSequence")
    cat, parent, start, end = one(t, "FakeListChatModel")
    assert (cat, parent) == ("llm", "RunnableSequence")
    assert start.data == {"headers": {}, "content": {"messages": [{"role": "user",
                                                                   "content": "hi"}]}}
    assert end.data == {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello there"},
         "finish_reason": None}]}
    assert end.metadata == OK
    seq = one(t, "RunnableSequence")
    assert seq[2].data == {"q": "hi"}
    assert seq[3].data == {"role": "assistant", "content": "hello there"}
    assert seq[3].metadata["otel.status_code"] == "OK"


def test_streamed_chat_model_writes_chunk_marks(nf, events):
    model = GenericFakeChatModel(messages=iter([AIMessage(content="a b c")]))
    chunks = list(model.stream("hi", config={"callbacks": [handler(nf)]}))
    assert "".join(c.content for c in chunks) == "a b c"
    _, _, start, end = one(tree(events), "GenericFakeChatModel")
    marks = [e for e in events if e.kind == "mark"]
    assert [m.data["chunk_index"] for m in marks] == list(range(len(chunks)))
    assert all(m.parent_uuid == start.uuid and m.name == "llm.chunk" for m in marks)
    assert end.data["choices"][0]["message"]["content"] == "a b c"
    assert 0 < end.category_profile["time_to_first_chunk"] < 5


def test_tool_and_retriever_and_errors(nf, events):
    h = handler(nf)
    with nf.scope.scope("request", nf.ScopeType.Agent) as request:
        assert get_weather.invoke({"city": "Paris"}, config={"callbacks": [h]}) == \
            "sunny in Paris"
        docs = Docs().invoke("cats", config={"callbacks": [h]})
        assert docs[0].page_content == "about cats"

        def boom(x):
            raise KeyError("x")
        with pytest.raises(KeyError):
            RunnableLambda(boom).invoke(1, config={"callbacks": [h]})
    t = tree(events)
    cat, parent, start, end = one(t, "get_weather")
    assert (cat, parent) == ("tool", "request") and start.parent_uuid == request.uuid
    assert start.data == {"city": "Paris"} and end.data == "sunny in Paris"
    cat, parent, start, end = one(t, "Docs")
    assert (cat, parent) == ("retriever", "request")
    assert start.data == {"query": "cats"}
    assert end.data == [{"page_content": "about cats", "metadata": {"n": 1}}]
    _, _, _, end = one(t, "boom")
    assert end.metadata["otel.status_code"] == "ERROR"
    assert end.metadata["error.type"] == "KeyError"
    assert nf.scope.get_handle() is not None and not h._runs


def test_chains_under_asyncio_gather(nf, events):
    h = handler(nf)

    async def run(i):
        with nf.scope.scope(f"task-{i}", nf.ScopeType.Agent):
            chain = RunnableLambda(lambda x: x) | FakeListChatModel(responses=[f"r{i}"])
            await asyncio.sleep(0.001 * (5 - i))
            return await chain.ainvoke(f"q{i}", config={"callbacks": [h]})

    async def main():
        return await asyncio.gather(*(run(i) for i in range(5)))

    outs = asyncio.run(main())
    assert [o.content for o in outs] == [f"r{i}" for i in range(5)]
    t = tree(events)
    seqs = t["RunnableSequence"]
    assert sorted(parent for _, parent, _, _ in seqs) == [f"task-{i}" for i in range(5)]
    for _, _parent, start, end in t["FakeListChatModel"]:
        i = int(end.data["choices"][0]["message"]["content"][1:])
        seq = next(s for _, p, s, _ in seqs if p == f"task-{i}")
        assert start.parent_uuid == seq.uuid


# --------------------------------------------------------------------------------------------
# LangGraph

def _graph(nf, model):
    pytest.importorskip("langgraph")
    from langgraph.graph import END, START, StateGraph
    from langgraph.prebuilt import ToolNode

    def agent(state):
        return {"messages": [model.invoke(state["messages"])]}

    def branch(name):
        def node(state):
            nf.mark(f"inside-{name}")  # code in a node lands under the node's scope
            return {"seen": [name]}
        return node

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_node("tools", ToolNode([get_weather]))
    g.add_node("a", branch("a"))
    g.add_node("b", branch("b"))
    g.add_node("join", lambda state: {"seen": ["join"]})
    g.add_edge(START, "agent")
    g.add_edge("agent", "tools")
    g.add_edge("tools", "a")
    g.add_edge("tools", "b")
    g.add_edge(["a", "b"], "join")
    g.add_edge("join", END)
    return g.compile()


def _model():
    return GenericFakeChatModel(messages=iter([AIMessage(content="", tool_calls=[
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}])]))


def _check_graph(events, out):
    assert out["seen"][-1] == "join" and sorted(out["seen"][:2]) == ["a", "b"]
    assert out["messages"][-1].content == "sunny in Paris"
    t = tree(events)
    cat, parent, _, graph_end = one(t, "LangGraph")
    assert (cat, parent) == ("agent", "request")
    assert graph_end.metadata["otel.status_code"] == "OK"
    for node in ("agent", "tools", "a", "b", "join"):
        cat, parent, start, end = one(t, node)
        assert (cat, parent) == ("function", "LangGraph"), node
        assert start.metadata["langgraph.node"] == node
        assert end.metadata["otel.status_code"] == "OK"
    cat, parent, start, end = one(t, "GenericFakeChatModel")
    assert (cat, parent) == ("llm", "agent")
    assert end.data["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == \
        "get_weather"
    cat, parent, start, end = one(t, "get_weather")
    assert (cat, parent) == ("tool", "tools")
    assert start.data == {"city": "Paris"} and end.data == "sunny in Paris"
    assert start.category_profile == {"tool_call_id": "call_1"}
    starts = {e.uuid: e.name for e in events if e.kind == "scope"}
    for name in ("a", "b"):
        (mark,) = [e for e in events if e.kind == "mark" and e.name == f"inside-{name}"]
        assert starts[mark.parent_uuid] == name


def test_graph_with_tool_node_and_parallel_branches(nf, events):
    from nemoflow.integrations.langgraph import instrument_graph

    graph = instrument_graph(_graph(nf, _model()))
    with nf.scope.scope("request", nf.ScopeType.Agent) as request:
        out = graph.invoke({"messages": [HumanMessage("weather?")], "seen": []})
        assert nf.scope.get_handle() is request  # the graph's scope is no longer current
    _check_graph(events, out)


def test_graph_async_parallel_branches(nf, events):
    from nemoflow.integrations.langgraph import with_nemo_flow_callbacks

    graph = _graph(nf, _model())

    async def main():
        with nf.scope.scope("request", nf.ScopeType.Agent):
            return await graph.ainvoke({"messages": [HumanMessage("weather?")], "seen": []},
                                       with_nemo_flow_callbacks())

    _check_graph(events, asyncio.run(main()))


def test_with_nemo_flow_callbacks_adds_the_handler_once(nf):
    from nemoflow.integrations.langgraph import NemoFlowCallbackHandler, with_nemo_flow_callbacks

    h = NemoFlowCallbackHandler()
    config = with_nemo_flow_callbacks({"tags": ["x"]}, callback_handler=h)
    assert config == {"tags": ["x"], "callbacks": [h]}
    assert with_nemo_flow_callbacks(config)["callbacks"] == [h]


def test_graph_interrupt_and_resume_marks(nf, events):
    pytest.importorskip("langgraph")
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt

    from nemoflow.integrations.langgraph import instrument_graph

    class Ask(TypedDict):
        x: str

    g = StateGraph(Ask)
    g.add_node("ask", lambda state: {"x": interrupt("need input")})
    g.add_edge(START, "ask")
    g.add_edge("ask", END)
    graph = instrument_graph(g.compile(checkpointer=InMemorySaver()))
    config = {"configurable": {"thread_id": "1"}}
    graph.invoke({"x": ""}, config)
    assert graph.invoke(Command(resume="yes"), config) == {"x": "yes"}
    marks = [e for e in events if e.kind == "mark"]
    assert [m.name for m in marks] == ["Graph Interrupt", "Graph Resume"]
    assert marks[0].data["interrupts"][0]["value"] == "need input"


class _ToolModel(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):
        return self


def _agent_model():
    return _ToolModel(messages=iter([
        AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"},
                                           "id": "call_1"}]),
        AIMessage(content="done")]))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_agent_middleware_runs_managed_calls(nf, events, mode):
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent

    from nemoflow.integrations.langchain import NemoFlowCallbackHandler, NemoFlowMiddleware

    agent = create_agent(model=_agent_model(), tools=[get_weather],
                         middleware=[NemoFlowMiddleware()])
    nf.intercepts.register_tool_request(
        "upper", 0, False, lambda name, args: {**args, "city": args["city"].upper()})
    config = {"callbacks": [NemoFlowCallbackHandler()]}
    inputs = {"messages": [HumanMessage("weather?")]}
    with nf.scope.scope("request", nf.ScopeType.Agent):
        if mode == "sync":
            out = agent.invoke(inputs, config)
        else:
            out = asyncio.run(agent.ainvoke(inputs, config))
    assert out["messages"][-1].content == "done"
    assert out["messages"][-2].content == "sunny in PARIS"  # the intercept's arguments ran
    t = tree(events)
    llms = t["_ToolModel"]  # recorded once each, by the middleware
    assert [(cat, parent) for cat, parent, _, _ in llms] == [("llm", "model")] * 2
    _, _, start, end = llms[0]
    assert request_data(start.data) == {"headers": {}, "content": {"messages": [
        {"role": "user", "content": "weather?"}]}}
    assert end.data["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == \
        "get_weather"
    cat, parent, start, end = one(t, "get_weather")
    assert (cat, parent) == ("tool", "tools")
    assert start.data == {"city": "PARIS"} and end.data == "sunny in PARIS"
    assert start.category_profile == {"tool_call_id": "call_1"}
