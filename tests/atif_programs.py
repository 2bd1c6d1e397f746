"""Agent programs for the ATIF tests, written once for nemoflow and for NeMo Relay (``m`` is
either package): managed LLM and tool calls with provider-shaped requests and responses."""

from __future__ import annotations

import asyncio
import contextlib
import re

import orjson

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")


def tool_result(m, value):
    cls = getattr(m, "ToolExecutionResult", None)
    return value if cls is None or m.__name__.startswith("nemoflow") else cls(value)


def request(m, content, headers=None):
    return m.LLMRequest(headers or {}, content)


def _chat(content=None, calls=(), usage=None, model="gpt-4o"):
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function",
             "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
            for cid, name, args in calls]
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": usage or {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}


def _ask(messages, model="gpt-4o", **extra):
    return {"model": model, "messages": messages, **extra}


async def _llm(m, name, content, response, headers=None, **kw):
    return await m.llm.execute(name, request(m, content, headers), lambda _req: response, **kw)


async def _tool(m, name, args, value, **kw):
    return await m.tools.execute(name, args, lambda _a: tool_result(m, value), **kw)


# -- programs ------------------------------------------------------------------------------

async def chat_tool_loop(m):
    user = {"role": "user", "content": "What is the weather in Paris?"}
    call = ("call_1", "get_weather", {"city": "Paris"})
    with m.scope.scope("weather-agent", m.ScopeType.Agent, input={"q": "weather"}):
        await _llm(m, "openai", _ask([{"role": "system", "content": "Be brief."}, user],
                                     reasoning_effort="low"),
                   _chat(None, [call], {"prompt_tokens": 20, "completion_tokens": 7,
                                        "total_tokens": 27,
                                        "prompt_tokens_details": {"cached_tokens": 4}}),
                   headers={"Authorization": "Bearer sk-secret", "x-api-key": "k-secret"})
        await _tool(m, "get_weather", {"city": "Paris"}, "18C and sunny")
        followup = [user, {"role": "assistant", "content": None,
                           "tool_calls": _chat(None, [call])["choices"][0]["message"][
                               "tool_calls"]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}]
        await _llm(m, "openai", _ask(followup), _chat("It is 18C and sunny in Paris."))


async def anthropic_tool_loop(m):
    user = {"role": "user", "content": [{"type": "text", "text": "Add 2 and 3"}]}
    response = {"id": "msg_1", "type": "message", "role": "assistant",
                "model": "claude-sonnet-4", "stop_reason": "tool_use",
                "content": [{"type": "text", "text": "Let me add."},
                            {"type": "tool_use", "id": "toolu_1", "name": "add",
                             "input": {"a": 2, "b": 3}}],
                "usage": {"input_tokens": 100, "output_tokens": 30,
                          "cache_read_input_tokens": 50, "cache_creation_input_tokens": 20}}
    final = {"id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
             "stop_reason": "end_turn", "content": [{"type": "text", "text": "5"}],
             "usage": {"input_tokens": 140, "output_tokens": 2}}
    with m.scope.scope("math-agent", m.ScopeType.Agent):
        await _llm(m, "anthropic", {"model": "claude-sonnet-4", "system": "You add.",
                                    "max_tokens": 100, "messages": [user]}, response)
        await _tool(m, "add", {"a": 2, "b": 3}, {"sum": 5})
        await _llm(m, "anthropic", {
            "model": "claude-sonnet-4", "system": "You add.", "max_tokens": 100,
            "messages": [user, {"role": "assistant", "content": response["content"]},
                         {"role": "user", "content": [{"type": "tool_result",
                                                       "tool_use_id": "toolu_1",
                                                       "content": "5"}]}]}, final)


async def responses_tool_loop(m):
    response = {"id": "resp_1", "object": "response", "model": "gpt-4.1", "status": "completed",
                "output": [{"type": "function_call", "id": "fc_1", "call_id": "call_r1",
                            "name": "lookup", "arguments": "{\"term\":\"atif\"}"}],
                "usage": {"input_tokens": 30, "output_tokens": 9, "total_tokens": 39,
                          "input_tokens_details": {"cached_tokens": 10}}}
    final = {"id": "resp_2", "object": "response", "model": "gpt-4.1", "status": "completed",
             "output": [{"type": "message", "role": "assistant",
                         "content": [{"type": "output_text", "text": "ATIF is a format."}]}],
             "usage": {"input_tokens": 50, "output_tokens": 6, "total_tokens": 56}}
    with m.scope.scope("search-agent", m.ScopeType.Agent):
        await _llm(m, "openai.responses", {"model": "gpt-4.1", "instructions": "Search first.",
                                           "input": "What is ATIF?"}, response)
        await _tool(m, "lookup", {"term": "atif"}, [{"type": "text", "text": "a format"}])
        await _llm(m, "openai.responses", {
            "model": "gpt-4.1", "input": [
                {"role": "user", "content": "What is ATIF?"},
                {"type": "function_call", "call_id": "call_r1", "name": "lookup",
                 "arguments": "{\"term\":\"atif\"}"},
                {"type": "function_call_output", "call_id": "call_r1", "output": "a format"}]},
            final)


async def repeated_calls(m):
    calls = [("call_a", "search", {"q": "x"}), ("call_b", "search", {"q": "x"}),
             ("call_c", "search", {"q": "y"})]
    with m.scope.scope("repeat-agent", m.ScopeType.Agent):
        await _llm(m, "openai", _ask([{"role": "user", "content": "search twice"}]),
                   _chat(None, calls))
        await _tool(m, "search", {"q": "x"}, "r1")
        await _tool(m, "search", {"q": "x"}, "r2")
        await _tool(m, "search", {"q": "y"}, "r3")
        await _llm(m, "openai", _ask([{"role": "user", "content": "and now?"}]),
                   _chat("done"))


async def explicit_ids(m):
    calls = [("call_1", "fetch", {"u": 1}), ("call_2", "fetch", {"u": 2})]
    with m.scope.scope("ids-agent", m.ScopeType.Agent):
        await _llm(m, "openai", _ask([{"role": "user", "content": "fetch both"}]),
                   _chat(None, calls))
        await _tool(m, "fetch", {"u": 2}, "two", tool_call_id="call_2")
        await _tool(m, "fetch", {"u": 1}, "one", tool_call_id="call_1")


async def unmatched_tool(m):
    with m.scope.scope("loose-agent", m.ScopeType.Agent):
        await _llm(m, "openai", _ask([{"role": "user", "content": "hi"}]),
                   _chat(None, [("call_1", "known", {})]))
        await _tool(m, "known", {}, "k")
        await _tool(m, "surprise", {"z": 1}, {"extra": True})


async def failed_tool(m):
    def boom(_args):
        raise ValueError("boom")

    with m.scope.scope("fail-agent", m.ScopeType.Agent):
        await _llm(m, "openai", _ask([{"role": "user", "content": "try"}]),
                   _chat(None, [("call_f", "flaky", {"n": 1})]))
        with contextlib.suppress(ValueError):
            await m.tools.execute("flaky", {"n": 1}, boom)
        await _llm(m, "openai", _ask([{"role": "user", "content": "try"},
                                      {"role": "tool", "tool_call_id": "call_f",
                                       "content": "error"}]), _chat("It failed."))


async def nested_subagents(m):
    with m.scope.scope("orchestrator", m.ScopeType.Agent, metadata={"session_id": "outer"}):
        await _llm(m, "openai", _ask([{"role": "user", "content": "delegate"}]),
                   _chat(None, [("call_d", "researcher", {"topic": "atif"})]))
        with m.scope.scope("researcher", m.ScopeType.Agent,
                           metadata={"session_id": "inner", "tool_call_id": "call_d"}):
            await _llm(m, "openai", _ask([{"role": "user", "content": "research atif"}]),
                       _chat("ATIF is JSON."))
        with m.scope.scope("writer", m.ScopeType.Agent, input={"draft": True}):
            await _llm(m, "openai", _ask([{"role": "user", "content": "write"}]),
                       _chat("Written."))
        with m.scope.scope("idle", m.ScopeType.Agent,
                           metadata={"nemo_relay_scope_role": "subagent"}):
            pass
        await _llm(m, "openai", _ask([{"role": "user", "content": "summarize"}]),
                   _chat("Summary."))


async def no_llm_agent(m):
    with m.scope.scope("tool-only", m.ScopeType.Agent):
        await _tool(m, "ls", {"path": "."}, ["a", "b"])
        with m.scope.scope("helper", m.ScopeType.Function):
            await _tool(m, "cat", {"path": "a"}, "text of a")


async def two_turns(m):
    with m.scope.scope("chat-agent", m.ScopeType.Agent):
        with m.scope.scope("turn", m.ScopeType.Agent, metadata={"nemo_relay_scope_role": "turn"}):
            await _llm(m, "openai", _ask([{"role": "user", "content": "hello"}]), _chat("hi"))
        with m.scope.scope("turn", m.ScopeType.Agent, metadata={"nemo_relay_scope_role": "turn"}):
            await _llm(m, "openai", _ask([{"role": "user", "content": "bye"}]), _chat("bye!"))


async def odd_payloads(m):
    with m.scope.scope("odd-agent", m.ScopeType.Agent):
        await _llm(m, "custom", {"prompt": "complete this"},
                   {"content": "completed", "reasoning": "thought",
                    "token_usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                    "reasoning_tokens": 1, "cost_usd": 0.25}},
                   model_name="my-model")
        await _llm(m, "custom", {"question": {"nested": [1, 2]}},
                   {"answer": {"k": "v"},
                    "tool_calls": [{"name": "noid", "arguments": "not json"},
                                   {"name": "num", "arguments": "[1, 2]"}]})
        await _tool(m, "noid", "plain string args", None)
        await _tool(m, "num", [1, 2], 3)


async def top_level_llm(m):
    await _llm(m, "openai", _ask([{"role": "user", "content": "no agent"}]), _chat("ok"))
    with m.scope.scope("late-agent", m.ScopeType.Agent):
        await _llm(m, "openai", _ask([{"role": "user", "content": "in agent"}]), _chat("ok2"))


PROGRAMS = {f.__name__: f for f in (
    chat_tool_loop, anthropic_tool_loop, responses_tool_loop, repeated_calls, explicit_ids,
    unmatched_tool, failed_tool, nested_subagents, no_llm_agent, two_turns, odd_payloads,
    top_level_llm)}


def run(m, program, exporter_cls, session_id="session-1", **kw):
    """Run ``program`` under a fresh ATIF exporter of package ``m``; returns the exporter."""
    exporter = exporter_cls(session_id, "test-agent", "1.0.0", **kw)
    exporter.register("atif-test")
    try:
        asyncio.run(program(m))
    finally:
        pass
    return exporter


def anonymized(value, ids=None):
    """``value`` with uuids numbered by first appearance and times replaced, to compare two
    runs of one program."""
    ids = {} if ids is None else ids

    def sub_uuid(match):
        return ids.setdefault(match.group(0), f"<uuid-{len(ids)}>")

    if isinstance(value, dict):
        return {k: (0.0 if k in ("start_timestamp", "end_timestamp") else
                    "<time>" if k == "timestamp" and isinstance(v, str) and STAMP.match(v) else
                    anonymized(v, ids)) for k, v in value.items()}
    if isinstance(value, list):
        return [anonymized(v, ids) for v in value]
    if isinstance(value, str):
        return UUID.sub(sub_uuid, value)
    return value


async def continuation_variants(m):
    with m.scope.scope("cont-agent", m.ScopeType.Agent):
        # system message after a tool result; developer message last
        await _llm(m, "openai", _ask([{"role": "user", "content": "a"},
                                      {"role": "tool", "tool_call_id": "x", "content": "r"},
                                      {"role": "system", "content": "note"}]), _chat("one"))
        await _llm(m, "openai", _ask([{"role": "user", "content": "b"},
                                      {"role": "assistant", "content": "prefill"}]), _chat("two"))
        await _llm(m, "openai", _ask([{"role": "assistant", "content": "x"},
                                      {"role": "user", "content": [
                                          {"type": "text", "text": "parts"}]}]), _chat("three"))
        await _llm(m, "openai.responses", {"model": "gpt-4.1", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "resp user"}]}]},
            {"output_text": "four", "model": "gpt-4.1"})
        await _llm(m, "openai.responses", {"model": "gpt-4.1", "input": [
            {"role": "user", "content": "q"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "partial"}]}]},
            {"output_text": "five", "model": "gpt-4.1"})
        await _llm(m, "openai.responses", {"model": "gpt-4.1", "input": [
            {"role": "user", "content": "q"},
            {"type": "reasoning", "id": "rs_1", "summary": []}]},
            {"output_text": "six", "model": "gpt-4.1"})
        await _llm(m, "anthropic", {"model": "claude-3", "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "content": "r"}, {"type": "text", "text": "more"}]}]},
            {"type": "message", "content": [{"type": "text", "text": "seven"}],
             "model": "claude-3"})
        await _llm(m, "custom", {"messages": []}, {"content": "eight"})
        await _llm(m, "custom", {"messages": [{"content": "no role"}]}, {"content": "nine"})


async def parallel_subagent_without_call(m):
    with m.scope.scope("boss", m.ScopeType.Agent):
        with m.scope.scope("worker", m.ScopeType.Agent, input={"task": "t"},
                           metadata={"session_id": "w-1"}):
            await _tool(m, "work", {"t": 1}, "did it")
        await _llm(m, "openai", _ask([{"role": "user", "content": "status?"}]),
                   _chat(None, [("call_w", "worker2", {})]))
        await _tool(m, "worker2", {}, "spawned", tool_call_id="call_w")
        with m.scope.scope("worker2", m.ScopeType.Agent, data={"tool_call_id": "call_w"}):
            await _llm(m, "openai", _ask([{"role": "user", "content": "inner"}]),
                       _chat("inner done"))


async def streamed_call(m):
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
              {"choices": [{"index": 0, "delta": {"content": "lo"}}]}]
    final = _chat("Hello")

    async def stream(_req):
        for c in chunks:
            yield c

    with m.scope.scope("stream-agent", m.ScopeType.Agent):
        got = m.llm.stream_execute("openai", request(m, _ask([{"role": "user",
                                                               "content": "hi"}])),
                                   stream, lambda c: None, lambda: final)
        if not hasattr(got, "__aiter__"):
            got = await got
        async for _ in got:
            pass


PROGRAMS.update({f.__name__: f for f in (continuation_variants, parallel_subagent_without_call,
                                          streamed_call)})


async def tool_before_response(m):
    with m.scope.scope("eager-agent", m.ScopeType.Agent):
        handle = m.llm.call("openai", request(m, _ask([{"role": "user", "content": "go"}])))
        await _tool(m, "prefetch", {"k": 1}, "early", tool_call_id="call_e")
        m.llm.call_end(handle, _chat(None, [("call_e", "prefetch", {"k": 1}),
                                            ("call_f", "other", {})]))
        await _tool(m, "other", {}, "late")


async def subagent_inside_tool(m):
    async def delegate(_args):
        with m.scope.scope("helper-agent", m.ScopeType.Agent, input={"why": "asked"}):
            await _llm(m, "openai", _ask([{"role": "user", "content": "help"}]), _chat("helped"))
        return tool_result(m, "delegated")

    with m.scope.scope("lead-agent", m.ScopeType.Agent):
        await _llm(m, "openai", _ask([{"role": "user", "content": "ask helper"}]),
                   _chat(None, [("call_h", "ask_helper", {"q": 1})]))
        await m.tools.execute("ask_helper", {"q": 1}, delegate)


async def two_root_agents(m):
    for name in ("first", "second"):
        with m.scope.scope(name, m.ScopeType.Agent):
            await _llm(m, "openai", _ask([{"role": "user", "content": name}]), _chat(name))


async def marks_and_other_scopes(m):
    with m.scope.scope("mark-agent", m.ScopeType.Agent):
        m.scope.event("checkpoint", data={"x": 1})
        with m.scope.scope("retrieve", m.ScopeType.Retriever, input={"q": 1}):
            await _llm(m, "openai", _ask([{"role": "user", "content": "inside retriever"}]),
                       _chat("r"))
        m.scope.event("llm.chunk", data={"x": 2})


async def swapped_duplicates(m):
    calls = [("c1", "get", {"id": 1}), ("c2", "get", {"id": 2}), ("c3", "put", {"id": 1})]
    with m.scope.scope("swap-agent", m.ScopeType.Agent):
        await _llm(m, "openai", _ask([{"role": "user", "content": "x"}]), _chat(None, calls))
        await _tool(m, "get", {"id": 2}, "two")
        await _tool(m, "put", {"id": 1}, "put")
        await _tool(m, "get", {"id": 1}, "one")
        await _tool(m, "get", {"id": 3}, "three")


PROGRAMS.update({f.__name__: f for f in (tool_before_response, subagent_inside_tool,
                                          two_root_agents, marks_and_other_scopes,
                                          swapped_duplicates)})
