"""A local stand-in for the OpenAI and Anthropic HTTP APIs, for the integration tests and the
benchmark: stdlib ``http.server`` on 127.0.0.1, one thread per connection.

What it answers depends on the request's ``model``: ``"error-500"`` / ``"error-429"`` answer
that status, ``"tool"`` answers a tool call, ``"slow"`` streams one chunk and then waits (for
cancellation tests). Every request is recorded (path, headers, JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CREATED = 1700000000
USAGE_CHAT = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
USAGE_ANTHROPIC = {"input_tokens": 5, "output_tokens": 2}
TOOL_ARGS = '{"city": "Paris"}'


def chat_completion(model):
    if model == "tool":
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": TOOL_ARGS}}]}
        reason = "tool_calls"
    else:
        message = {"role": "assistant", "content": "Hello!"}
        reason = "stop"
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": reason}],
            "usage": dict(USAGE_CHAT)}


def chat_chunks(model, include_usage):
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": CREATED,
            "model": model}

    def chunk(delta, reason=None):
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}

    if model == "tool":
        out = [chunk({"role": "assistant", "tool_calls": [
                   {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
               chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
               chunk({}, "tool_calls")]
    else:
        out = [chunk({"role": "assistant", "content": "Hel"}), chunk({"content": "lo!"}),
               chunk({}, "stop")]
    if include_usage:
        out.append({**head, "choices": [], "usage": dict(USAGE_CHAT)})
    return out


def response_object(model, status="completed"):
    return {"id": "resp_1", "object": "response", "created_at": CREATED, "status": status,
            "model": model,
            "output": [{"type": "message", "id": "msg_1", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "Hello!",
                                     "annotations": []}]}],
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}


def response_events(model):
    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant",
            "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    return [
        {"type": "response.created", "sequence_number": 0,
         "response": {**response_object(model, "in_progress"), "output": []}},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
         "item": item},
        {"type": "response.content_part.added", "sequence_number": 2, "output_index": 0,
         "item_id": "msg_1", "content_index": 0, "part": part},
        {"type": "response.output_text.delta", "sequence_number": 3, "output_index": 0,
         "item_id": "msg_1", "content_index": 0, "delta": "Hel"},
        {"type": "response.output_text.delta", "sequence_number": 4, "output_index": 0,
         "item_id": "msg_1", "content_index": 0, "delta": "lo!"},
        {"type": "response.completed", "sequence_number": 5, "response": response_object(model)},
    ]


def anthropic_message(model):
    if model == "tool":
        content = [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                    "input": {"city": "Paris"}}]
        reason = "tool_use"
    else:
        content = [{"type": "text", "text": "Hello!"}]
        reason = "end_turn"
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": None,
            "usage": dict(USAGE_ANTHROPIC)}


def anthropic_events(model):
    start = {**anthropic_message(model), "content": [], "stop_reason": None,
             "usage": {"input_tokens": 5, "output_tokens": 1}}
    if model == "tool":
        block = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": '{"city": '},
                  {"type": "input_json_delta", "partial_json": '"Paris"}'}]
        reason = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": "Hel"}, {"type": "text_delta", "text": "lo!"}]
        reason = "end_turn"
    return [{"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": block},
            *({"type": "content_block_delta", "index": 0, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
             "usage": {"output_tokens": 2}},
            {"type": "message_stop"}]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small response must not wait for a delayed ACK

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        server = self.server
        with server.lock:
            server.requests.append({"path": self.path, "headers": dict(self.headers),
                                    "body": body})
        model = body.get("model", "")
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            return self._json(status, {"error": {"message": f"fake {status}",
                                                 "type": "server_error"},
                                       "type": "error"})
        path = self.path.split("?")[0]
        stream = body.get("stream") is True
        if path.endswith("/chat/completions"):
            if not stream:
                return self._json(200, chat_completion(model))
            usage = (body.get("stream_options") or {}).get("include_usage") is True
            return self._sse([(None, c) for c in chat_chunks(model, usage)], done=True,
                             slow=model == "slow")
        if path.endswith("/responses"):
            if not stream:
                return self._json(200, response_object(model))
            return self._sse([(e["type"], e) for e in response_events(model)],
                             slow=model == "slow")
        if path.endswith("/messages"):
            if not stream:
                return self._json(200, anthropic_message(model))
            return self._sse([(e["type"], e) for e in anthropic_events(model)],
                             slow=model == "slow")
        return self._json(404, {"error": {"message": "not found"}})

    def _json(self, status, payload):
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _sse(self, events, done=False, slow=False):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for i, (name, event) in enumerate(events):
                head = f"event: {name}\n" if name else ""
                self.wfile.write(f"{head}data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
                if slow and i == 0:
                    self.server.release.wait(5)
            if done:
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
        except OSError:  # the client went away (a cancelled stream)
            pass


class FakeLLMServer:
    """``with FakeLLMServer() as server:`` serves on ``server.url`` until the block ends."""

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []
        self.httpd.lock = threading.Lock()
        self.httpd.release = threading.Event()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self) -> list:
        return self.httpd.requests

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def request_data(data):
    """An LLM start event's data without the ``x-dynamo-*`` session headers that managed calls
    add under agent scopes (what the tests compare is the SDK call's own request)."""
    headers = {k: v for k, v in data["headers"].items() if not k.startswith("x-dynamo-")}
    return {**data, "headers": headers}


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.005)
