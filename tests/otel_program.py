"""One agent program written against the API nemoflow shares with NeMo Relay: an agent scope,
an LLM call with an OpenAI-shaped request and response (usage included), a tool call, marks,
a failing child scope under a guardrail, a retriever. Used to compare both libraries' spans."""

from __future__ import annotations

REQUEST = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 128, "stop": ["END"],
           "messages": [{"role": "system", "content": "Be terse."},
                        {"role": "user", "content": "Weather in Paris?"}],
           "tools": [{"type": "function", "function": {
               "name": "get_weather", "description": "w",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}
RESPONSE = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                      "prompt_tokens_details": {"cached_tokens": 8}}}


def run(lib) -> None:
    """Run the program on ``lib`` (``nemoflow`` or ``nemo_relay``)."""
    result = getattr(lib, "ToolExecutionResult", None)
    with lib.scope.scope("planner", lib.ScopeType.Agent,
                         metadata={"session_id": "sess-1", "user_id": "alice"}):
        h = lib.llm.call("openai.chat", lib.LLMRequest({}, REQUEST), metadata={"app.req": 1})
        lib.llm.call_end(h, RESPONSE, metadata={"app.done": True})
        t = lib.tools.call("get_weather", {"city": "Paris"}, tool_call_id="call_1",
                           metadata={"k": "v"})
        lib.scope.event("progress", data={"step": 2, "nested": {"b": 1, "a": [1, 2]}},
                        metadata={"hook_event_name": "x"})
        value = {"temp": 21, "unit": "C"}
        lib.tools.call_end(t, result(value) if result is not None else value)
        g = lib.scope.push("validate", lib.ScopeType.Guardrail, input={"q": 1})
        f = lib.scope.push("inner", lib.ScopeType.Function)
        lib.scope.pop(f, metadata={"otel.status_code": "ERROR",
                                   "otel.status_description": "inner failed",
                                   "error.type": "timeout", "exception.type": "TimeoutError"})
        lib.scope.pop(g, output={"ok": False}, metadata={"otel.status_code": "ERROR"})
        r = lib.scope.push("retrieve", lib.ScopeType.Retriever,
                           metadata={"index_name": "docs", "top_k": 3})
        lib.scope.pop(r, output=["a", "b"])
    lib.scope.event("after", data={"z": 1})
