"""Record NeMo Relay's OTLP spans for the test suite's reference replay.

    pip install nemo-relay==0.10.4 opentelemetry-proto
    python scripts/record_otel_reference.py tests/otel_reference_fixtures.json

Runs a few agent programs on ``nemo_relay`` with each projection (``full``, ``gen_ai``,
``openinference``) and a set of options, and stores, per run, the ATOF events NeMo Relay wrote
(its own ATOF exporter), the spans its OpenTelemetry subscriber sent to a loopback collector
(serialized protobuf, hex) and its runtime diagnostics. ``tests/test_otel_projections.py``
replays the events through nemoflow's projections and compares the spans byte for byte.
"""

from __future__ import annotations

import gzip
import http.server
import importlib.metadata
import json
import os
import sys
import tempfile
import threading

import nemo_relay as nr
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

CHAT = {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 128, "stop": ["END"],
        "messages": [{"role": "system", "content": "Be terse."},
                     {"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "w",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}
CHAT_RESPONSE = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
    "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
              "prompt_tokens_details": {"cached_tokens": 8}}}
CHAT2 = {"model": "gpt-4o", "temperature": 1, "top_p": 0.9, "max_completion_tokens": 64,
         "stop": "X", "frequency_penalty": 0.5, "presence_penalty": 0.1, "seed": 7, "n": 2,
         "stream": True, "reasoning_effort": "low", "response_format": {"type": "json_object"},
         "messages": [{"role": "user", "name": "bob", "content": [
             {"type": "text", "text": "hi"},
             {"type": "image_url", "image_url": {"url": "http://i"}}]},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function",
                  "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "res"}]}
ANTHROPIC = {"model": "claude-3-5-sonnet", "max_tokens": 100, "top_k": 5, "system": "sys text",
             "stop_sequences": ["S"], "messages": [
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
                 {"role": "user", "content": "go"}]}
ANTHROPIC_RESPONSE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-2024",
    "stop_reason": "end_turn", "content": [{"type": "text", "text": "done"}],
    "usage": {"input_tokens": 100, "output_tokens": 30, "cache_read_input_tokens": 50,
              "cache_creation_input_tokens": 20, "cost_usd": 0.25}}
RESPONSES = {"model": "o3", "instructions": "be nice", "input": "what",
             "reasoning": {"effort": "high"}, "max_output_tokens": 50,
             "text": {"format": {"type": "text"}}}
RESPONSES_RESPONSE = {
    "id": "resp_1", "object": "response", "model": "o3-x", "status": "completed",
    "output": [{"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "answer"}]},
               {"type": "function_call", "call_id": "fc1", "name": "lookup",
                "arguments": "{\"q\":2}"}],
    "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
              "cost": {"total": 1.5, "currency": "EUR"}}}


def base():
    """Agent → LLM call → tool call with a mark → failing child under a guardrail → retriever."""
    with nr.scope.scope("planner", nr.ScopeType.Agent,
                        metadata={"session_id": "sess-1", "user_id": "alice", "app.tier": "gold"}):
        h = nr.llm.call("openai.chat", nr.LLMRequest({"authorization": "x"}, CHAT),
                        metadata={"app.req": 1})
        nr.llm.call_end(h, CHAT_RESPONSE, metadata={"app.done": True})
        t = nr.tools.call("get_weather", {"city": "Paris"}, tool_call_id="call_1",
                          metadata={"k": "v"})
        nr.scope.event("progress", data={"step": 2, "nested": {"b": 1, "a": [1, 2]}},
                       metadata={"hook_event_name": "x"})
        nr.tools.call_end(t, nr.ToolExecutionResult({"temp": 21, "unit": "C"}))
        f = nr.scope.push("validate", nr.ScopeType.Guardrail, input={"q": 1})
        g = nr.scope.push("inner", nr.ScopeType.Function)
        nr.scope.pop(g, metadata={"otel.status_code": "ERROR",
                                  "otel.status_description": "inner failed",
                                  "error.type": "timeout", "exception.type": "TimeoutError"})
        nr.scope.pop(f, output={"ok": False}, metadata={"otel.status_code": "ERROR"})
        r = nr.scope.push("retrieve", nr.ScopeType.Retriever,
                          metadata={"index_name": "docs", "top_k": 3})
        nr.scope.pop(r, output=["a", "b"])


def providers():
    """OpenAI chat (every parameter), Anthropic, Responses, an embedder, a tool, marks before
    and after their parent ended, a top-level session.start mark."""
    a = nr.scope.push("outer", nr.ScopeType.Agent, metadata={
        "session_id": "s2", "agent_kind": "planner", "app.x": [1, 2], "app.bad": {"o": 1},
        "nemo_relay.y": 1})
    h = nr.llm.call("gpt chat", nr.LLMRequest({}, CHAT2),
                    metadata={"server.address": "api.example", "server_port": 443,
                              "app.x": "start"})
    nr.scope.event("llm.chunk", data={"d": 1})
    nr.scope.event("tick", data={"x": 1}, metadata={"app.m": 3})
    nr.llm.call_end(h, {"id": "c2", "model": "gpt-4o", "choices": [
        {"index": 0, "finish_reason": "length",
         "message": {"role": "assistant", "content": "partial"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 64, "total_tokens": 10,
                  "cost_usd": 0.01}}, metadata={"app.x": "end"})
    h = nr.llm.call("anthropic.messages", nr.LLMRequest({}, ANTHROPIC))
    nr.llm.call_end(h, ANTHROPIC_RESPONSE)
    h = nr.llm.call("openai.responses", nr.LLMRequest({}, RESPONSES))
    nr.llm.call_end(h, RESPONSES_RESPONSE)
    e = nr.scope.push("embed", nr.ScopeType.Embedder,
                      metadata={"model": "text-emb", "provider": "cohere"})
    nr.scope.pop(e, output={"model": "text-emb-3", "usage": {"prompt_tokens": 9}})
    t = nr.scope.push("tool2", nr.ScopeType.Tool, metadata={
        "tool_type": "function", "description": "desc", "gen_ai.tool.name": "real_tool"})
    nr.scope.pop(t, output="plain text")
    x = nr.scope.push("weird", nr.ScopeType.Custom, metadata={"big": 2 ** 64 - 1})
    nr.scope.pop(x)
    nr.scope.pop(a)
    nr.scope.event("late", data={"z": 1}, handle=a)
    nr.scope.event("session.start", metadata={"session_id": "sx", "user_id": "ux"})


def categories():
    """Nested agents under a function, parallel attribute, operation names, tool annotation,
    every category, unknown and non-string status values, a metric mark."""
    top = nr.scope.push("fnTop", nr.ScopeType.Function,
                        attributes=nr.ScopeAttributes(nr.ScopeAttributes.PARALLEL),
                        metadata={"session_id": "s3", "app.k": "v", "gen_ai.x": 1})
    ag = nr.scope.push("agentIn", nr.ScopeType.Agent, metadata={"session_id": "inner"})
    ag2 = nr.scope.push("agentIn2", nr.ScopeType.Agent)
    h = nr.llm.call("bedrock.text_completion",
                    nr.LLMRequest({}, {"model": "m1", "prompt": "hi"}), model_name="prof-model")
    nr.scope.event("llm.chunk", data={"delta": "h"})
    nr.llm.call_end(h, {"text": "hello", "usage": {
        "input_tokens": 3, "output_tokens": 2, "cost": {"input": 0.1, "output": 0.2}}})
    h = nr.llm.call("vertex generateContent", nr.LLMRequest({}, {
        "model": "gem", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "text"}}))
    nr.llm.call_end(h, {"choices": [{"index": 0, "finish_reason": "content_filter",
                                     "message": {"role": "assistant", "content": "y"}}],
                        "usage": {"prompt_tokens": 1, "total_tokens": 1}})
    t = nr.tools.call("annotated_tool", {"q": [1, 2]}, attributes=nr.ToolAttributes(0))
    nr.tools.call_end(t, nr.ToolExecutionResult({"r": 1}, annotation={"source": "cache", "n": 2}))
    for cat in ("Reranker", "Evaluator", "Embedder", "Custom", "Unknown"):
        x = nr.scope.push(cat.lower() + "_scope", getattr(nr.ScopeType, cat), input={"in": cat})
        nr.scope.pop(x, output={"content": "out " + cat}, metadata={"otel.status_code": "weird"})
    e = nr.scope.push("failing", nr.ScopeType.Function)
    nr.scope.pop(e, metadata={"otel.status_code": "ERROR", "otel.status_description": 5})
    nr.scope.metric("m", [nr.MetricMeasurement("tokens", nr.MetricKind.Counter,
                                               nr.MetricValueType.U64, 5)])
    x = nr.scope.push("resp_json", nr.ScopeType.Llm, input={"headers": {}, "content": {
        "model": "o4", "input": [{"role": "user", "content": "q"}],
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}})
    nr.scope.pop(x, output={"output_text": "{}", "model": "o4"})
    nr.scope.pop(ag2)
    nr.scope.pop(ag, metadata={"otel.status_code": "OK"})
    nr.scope.event("session.start", data={"k": 1},
                   metadata={"session_id": "ss", "agent_kind": "kk", "app.k": [True, False]})
    nr.scope.pop(top)


def promotion():
    """Every kind of metadata value under a promoted prefix."""
    h = nr.scope.push("s", nr.ScopeType.Function, metadata={
        "p.null": None, "p.nested": [[1]], "p.mixed": [1, "a"], "p.big": 2 ** 63,
        "p.objarr": [{}], "p.empty": [], "p.fl": [1.5, 2], "p.bools": [True],
        "p.mixnum": [1, 2.5], "p.obj": {"a": 1}, "p.s": "x", "p.i": -3, "p.b": False})
    nr.scope.pop(h, metadata={"otel.status_code": "OK", "p.s": "y"})


def promotion_phases():
    """Promotions at the start, at the end only, both, neither; a start without metadata."""
    for name, start, end in (("A", {"s": 1, "p.a": 1}, {"e": 2}), ("B", {"s": 1}, {"p.a": 2}),
                             ("C", {"s": 1, "p.a": 1}, {"p.a": 2, "e": 2}),
                             ("D", {"s": 1}, {"e": 2}), ("E", None, {"p.a": 3})):
        h = nr.scope.push(name, nr.ScopeType.Function, metadata=start)
        nr.scope.pop(h, metadata=end)


MAPPINGS = [{"key": "nemo_relay.model_name", "alias": "model"},
            {"key": "llm.model_name", "alias": "model2"},
            {"key": "session.id", "alias": "nemo_relay.uuid"}]
RUNS = [
    ("base", base, {}),
    ("providers", providers, {"promote_metadata_prefixes": ["app."],
                              "attribute_mappings": MAPPINGS}),
    ("providers-tool-marks", providers, {"mark_projection": "tool"}),
    ("categories", categories, {"promote_metadata_prefixes": ["app.", "gen_ai."],
                                "mark_projection": "event"}),
    ("categories-tool-marks", categories, {"mark_projection": "tool", "mark_exclude_names": []}),
    ("promotion", promotion, {"promote_metadata_prefixes": ["p."]}),
    ("promotion-phases", promotion_phases, {"promote_metadata_prefixes": ["p."]}),
]


class Collector:
    def __init__(self):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer.requests.append((self.path, self.headers.get("Content-Type"),
                                       ExportTraceServiceRequest.FromString(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def record(collector, otel_type, program, options) -> dict:
    config = nr.OpenTelemetryConfig(otel_type, collector.url)
    for key, value in options.items():
        setattr(config, key, value)
    sub = nr.OpenTelemetrySubscriber(config)
    sub.register("record-otel")
    directory = tempfile.mkdtemp()
    atof_config = nr.AtofExporterConfig()
    atof_config.output_directory = directory
    atof_config.filename = "events.jsonl"
    atof = nr.AtofExporter(atof_config)
    atof.register("record-atof")
    program()
    atof.force_flush()
    sub.force_flush()
    sub.deregister("record-otel")
    atof.deregister("record-atof")
    sub.shutdown()
    atof.shutdown()
    with open(os.path.join(directory, "events.jsonl")) as f:
        events = [json.loads(line) for line in f]
    spans = [s.SerializeToString().hex() for _, _, req in collector.requests
             for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    path, content_type, _ = collector.requests[0]
    collector.requests.clear()
    diagnostics = [[e.code, e.message, e.count] for e in sub.runtime_diagnostics().entries]
    return {"events": events, "spans": spans, "path": path, "content_type": content_type,
            "diagnostics": diagnostics}


def main() -> None:
    out_path = sys.argv[1]
    collector = Collector()
    cases = []
    for name, program, options in RUNS:
        for otel_type in ("full", "gen_ai", "openinference"):
            case = {"program": name, "otel_type": otel_type, "options": options}
            case.update(record(collector, otel_type, program, options))
            cases.append(case)
    with open(out_path, "w") as f:
        json.dump({"reference": f"nemo-relay {importlib.metadata.version('nemo-relay')}",
                   "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
