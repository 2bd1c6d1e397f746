"""Integration with a real backend: Arize Phoenix reads nemoflow's openinference spans.

An example agent (agent → LLM call with an OpenAI-shaped request and response, usage and
model included → tool call) is exported over OTLP/HTTP to Phoenix and read back through
Phoenix's REST API: every span, parent link, span kind, token count and the model name must
come back as sent.

Phoenix is the one at ``NEMOFLOW_PHOENIX_URL``, else one started here with
``scripts/phoenix.sh`` when its virtualenv exists (``scripts/phoenix.sh install``); without
either, the test is skipped. CI runs it (``.ci/run`` starts Phoenix and sets the URL).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.phoenix

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "phoenix.sh")
VENV = os.path.join(ROOT, ".phoenix-venv")

REQUEST = {"model": "gpt-4o-mini", "temperature": 0.2,
           "messages": [{"role": "system", "content": "Be terse."},
                        {"role": "user", "content": "Weather in Paris?"}],
           "tools": [{"type": "function", "function": {
               "name": "get_weather", "parameters": {"type": "object", "properties": {
                   "city": {"type": "string"}}}}}]}
RESPONSE = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}}


@pytest.fixture(scope="module")
def phoenix_url():
    url = os.environ.get("NEMOFLOW_PHOENIX_URL", "").strip()
    if url:
        yield url.rstrip("/")
        return
    if not os.path.exists(os.path.join(VENV, "bin", "phoenix")):
        pytest.skip("no Phoenix: set NEMOFLOW_PHOENIX_URL or run scripts/phoenix.sh install")
    out = subprocess.run(["bash", SCRIPT, "start"], capture_output=True, text=True,
                         timeout=180, check=True)
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", SCRIPT, "stop"], capture_output=True, timeout=60)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _spans(base: str, project: str, want: int, timeout: float = 30.0) -> list:
    """The project's spans once ``want`` of them are stored (Phoenix ingests asynchronously)."""
    deadline = time.monotonic() + timeout
    name = urllib.parse.quote(project, safe="")
    spans: list = []
    while time.monotonic() < deadline:
        try:
            spans = _get(f"{base}/v1/projects/{name}/spans?limit=100")["data"]
        except urllib.error.HTTPError as exc:
            if exc.code != 404:  # 404: the project is made by the first span stored
                raise
            spans = []
        if len(spans) >= want:
            return spans
        time.sleep(0.25)
    raise AssertionError(f"Phoenix stored {len(spans)} of {want} spans in {timeout} s")


def test_agent_spans_round_trip_through_phoenix(nf, phoenix_url):
    project = f"nemoflow-test-{nf.BACKEND}-{uuid.uuid4().hex[:8]}"
    sub = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
        "openinference", phoenix_url, service_name="phoenix-test", scheduled_delay_millis=10,
        resource_attributes={"openinference.project.name": project}))
    sub.register("phoenix")
    try:
        with nf.scope.scope("weather-agent", nf.ScopeType.Agent,
                            metadata={"session_id": "sess-42"}) as agent:
            h = nf.llm.call("openai.chat", nf.LLMRequest({}, REQUEST))
            nf.llm.call_end(h, RESPONSE)
            t = nf.tools.call("get_weather", {"city": "Paris"}, tool_call_id="call_1")
            nf.tools.call_end(t, {"temp": 21, "unit": "C"})
        sub.force_flush(10)
    finally:
        sub.shutdown(5)
    assert sub.stats()["spans_exported"] == 3

    spans = {s["name"]: s for s in _spans(phoenix_url, project, 3)}
    assert set(spans) == {"weather-agent", "openai.chat", "get_weather"}
    root, llm, tool = spans["weather-agent"], spans["openai.chat"], spans["get_weather"]

    # ids and parent links: one trace, the agent its root, both calls its children
    trace_id = uuid.UUID(agent.uuid).hex
    assert {s["context"]["trace_id"] for s in spans.values()} == {trace_id}
    assert root["context"]["span_id"] == trace_id[16:]
    assert root.get("parent_id") in (None, "")
    assert llm["parent_id"] == root["context"]["span_id"]
    assert tool["parent_id"] == root["context"]["span_id"]
    assert llm["context"]["span_id"] == uuid.UUID(h.uuid).hex[16:]
    assert tool["context"]["span_id"] == uuid.UUID(t.uuid).hex[16:]

    # span kinds, as Phoenix reads them from openinference.span.kind
    assert root["span_kind"].upper() == "AGENT"
    assert llm["span_kind"].upper() == "LLM"
    assert tool["span_kind"].upper() == "TOOL"

    # token counts and model name, from the provider's response
    a = llm["attributes"]
    assert a["llm.token_count.prompt"] == 30
    assert a["llm.token_count.completion"] == 12
    assert a["llm.token_count.total"] == 42
    assert a["llm.model_name"] == "gpt-4o-mini-2024-07-18"
    assert tool["attributes"]["tool.name"] == "get_weather"
    assert root["attributes"]["session.id"] == "sess-42"
    for s in spans.values():
        assert s["status_code"] in ("UNSET", "OK")
        assert s["end_time"] >= s["start_time"]
