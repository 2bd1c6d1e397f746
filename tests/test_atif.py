"""ATIF trajectories: the live exporter, the file exporter and ``nemoflow convert``, each
trajectory validated with the ``atif`` package's models and checked field by field, and
compared with NeMo Relay's exporter on the same programs when it is installed."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest

atif = pytest.importorskip("atif")

from atif_programs import PROGRAMS, anonymized, run  # noqa: E402


def _is_parts(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(p, dict) and (
            (p.get("type") == "text" and isinstance(p.get("text"), str))
            or (p.get("type") == "image" and isinstance(p.get("source"), dict)
                and p["source"].get("media_type") in ("image/jpeg", "image/png", "image/gif",
                                                      "image/webp")
                and isinstance(p["source"].get("path"), str)))
        for p in value)


def _assert_atif_v17_shape(t: dict) -> None:
    """The reference's ``assert_atif_v17_shape``."""
    assert t["schema_version"] == "ATIF-v1.7" and t["session_id"]
    children = {c.get("trajectory_id") for c in t.get("subagent_trajectories", ())}
    for index, step in enumerate(t["steps"]):
        assert step["step_id"] == index + 1
        assert step["source"] in ("system", "user", "agent")
        assert isinstance(step["message"], str) or _is_parts(step["message"])
        if "llm_call_count" in step:
            assert step["source"] == "agent"
            if step["llm_call_count"] == 0:
                assert "metrics" not in step and "reasoning_content" not in step
        ids = set()
        for call in step.get("tool_calls", ()):
            assert call["tool_call_id"] and call["function_name"]
            assert isinstance(call["arguments"], dict)
            ids.add(call["tool_call_id"])
        for result in step.get("observation", {}).get("results", ()):
            if "content" in result:
                assert isinstance(result["content"], str) or _is_parts(result["content"])
            if "source_call_id" in result:
                assert result["source_call_id"] in ids
            for ref in result.get("subagent_trajectory_ref", ()):
                if children and "trajectory_id" in ref:
                    assert ref["trajectory_id"] in children
    for child in t.get("subagent_trajectories", ()):
        _assert_atif_v17_shape(child)


def _check(trajectory: dict, text: str | None = None) -> dict:
    """Validate with the ATIF models (subagents included) and return the trajectory."""
    atif.Trajectory.model_validate(trajectory)
    _assert_atif_v17_shape(trajectory)
    if text is not None:
        atif.Trajectory.model_validate_json(text)
        assert json.loads(text) == trajectory
    return trajectory


def _export(nf, program, **kw):
    exporter = run(nf, program, nf.exporters.AtifExporter, **kw)
    try:
        return _check(exporter.export(), exporter.export_json())
    finally:
        exporter.deregister("atif-test")


def _scopes(events, category, phase="start"):
    return [e for e in events if e.kind == "scope" and e.category == category
            and e.scope_category == phase]


def _results(step):
    return step.get("observation", {}).get("results", [])


# -- the agent loops ------------------------------------------------------------------------

def test_chat_tool_loop(nf, events):
    t = _export(nf, PROGRAMS["chat_tool_loop"], model_name="gpt-4o",
                tool_definitions=[{"type": "function", "function": {"name": "get_weather"}}],
                extra={"team": "a"})
    agent_scope = _scopes(events, "agent")[0]
    llm1, llm2 = _scopes(events, "llm")
    tool = _scopes(events, "tool")[0]
    assert t["schema_version"] == "ATIF-v1.7"
    assert t["session_id"] == t["trajectory_id"] == "session-1"
    assert t["agent"] == {"name": "test-agent", "version": "1.0.0", "model_name": "gpt-4o",
                          "tool_definitions": [{"function": {"name": "get_weather"},
                                                "type": "function"}],
                          "extra": {"team": "a"}}
    user, call, answer = t["steps"]
    assert [s["step_id"] for s in t["steps"]] == [1, 2, 3]
    assert user["source"] == "user" and user["message"] == "What is the weather in Paris?"
    assert "model_name" not in user and "metrics" not in user
    assert user["extra"]["ancestry"] == {"function_id": llm1.uuid, "function_name": "openai",
                                         "parent_id": agent_scope.uuid,
                                         "parent_name": "weather-agent"}
    assert user["extra"]["llm_request"]["reasoning_effort"] == "low"
    assert call["source"] == "agent" and call["message"] == ""
    assert call["model_name"] == "gpt-4o" and call["reasoning_effort"] == "low"
    assert call["llm_call_count"] == 1
    assert call["tool_calls"] == [{"tool_call_id": "call_1", "function_name": "get_weather",
                                   "arguments": {"city": "Paris"}}]
    [result] = _results(call)
    assert result["source_call_id"] == "call_1" and result["content"] == "18C and sunny"
    assert result["extra"]["event_uuid"] == tool.uuid
    assert call["metrics"] == {"prompt_tokens": 20, "completion_tokens": 7, "cached_tokens": 4,
                               "extra": {"total_tokens": 27}}
    extra = call["extra"]
    assert extra["ancestry"]["function_id"] == llm1.uuid
    assert extra["invocation"]["invocation_id"] == llm1.uuid
    assert extra["invocation"]["framework"] == "nemo_relay"
    assert extra["invocation"]["status"] == "completed"
    assert extra["invocation"]["start_timestamp"] <= extra["invocation"]["end_timestamp"]
    assert extra["llm_response"]["choices"][0]["finish_reason"] == "tool_calls"
    assert [a["function_id"] for a in extra["tool_ancestry"]] == [tool.uuid]
    assert [i["invocation_id"] for i in extra["tool_invocations"]] == ["call_1"]
    # the follow-up request only returns the tool result: no user step, kept on the answer
    assert answer["message"] == "It is 18C and sunny in Paris."
    assert answer["extra"]["ancestry"]["function_id"] == llm2.uuid
    assert answer["extra"]["llm_request"]["messages"][-1]["role"] == "tool"
    assert t["final_metrics"] == {"total_prompt_tokens": 32, "total_completion_tokens": 12,
                                  "total_cached_tokens": 4, "total_steps": 3}
    assert user["timestamp"].endswith("+00:00")


def test_credentials_never_reach_the_trajectory(nf):
    exporter = run(nf, PROGRAMS["chat_tool_loop"], nf.exporters.AtifExporter)
    text = exporter.export_json()
    exporter.deregister("atif-test")
    assert "sk-secret" not in text and "k-secret" not in text
    assert "Authorization" not in text and "headers" not in text


def test_sanitized_request_fields_never_reach_the_trajectory(nf):
    def scrub(request):
        content = dict(request.content)
        content["messages"] = [{**m, "content": "[redacted]"} if m.get("role") == "user" else m
                               for m in content["messages"]]
        content.pop("user_ssn", None)
        return nf.LLMRequest(request.headers, content)

    nf.guardrails.register_llm_sanitize_request("scrub", 1, scrub)

    async def program(m):
        with m.scope.scope("agent", m.ScopeType.Agent):
            await m.llm.execute("openai", m.LLMRequest(
                {"authorization": "Bearer sk-live"},
                {"model": "gpt-4o", "user_ssn": "123-45-6789",
                 "messages": [{"role": "user", "content": "my ssn is 123-45-6789"}]}),
                lambda _r: {"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    try:
        t = _export(nf, program)
    finally:
        nf.guardrails.deregister_llm_sanitize_request("scrub")
    text = json.dumps(t)
    assert "123-45-6789" not in text and "sk-live" not in text
    assert t["steps"][0]["message"] == "[redacted]"


def test_anthropic_tool_loop(nf):
    t = _export(nf, PROGRAMS["anthropic_tool_loop"])
    user, call, answer = t["steps"]
    assert user["message"] == [{"text": "Add 2 and 3", "type": "text"}]
    assert call["message"] == "Let me add." and call["model_name"] == "claude-sonnet-4"
    assert call["tool_calls"] == [{"tool_call_id": "toolu_1", "function_name": "add",
                                   "arguments": {"a": 2, "b": 3}}]
    [result] = _results(call)
    # a structured tool output is not ATIF content: it is kept in extra.tool_result
    assert "content" not in result and result["extra"]["tool_result"] == {"sum": 5}
    # Anthropic counts cache reads and writes beside the input: the prompt includes them
    assert call["metrics"] == {"prompt_tokens": 170, "completion_tokens": 30,
                               "cached_tokens": 70}
    assert answer["message"] == "5"
    assert answer["extra"]["llm_request"]["messages"][-1]["content"][0]["type"] == "tool_result"
    assert t["final_metrics"]["total_prompt_tokens"] == 310


def test_responses_tool_loop(nf):
    t = _export(nf, PROGRAMS["responses_tool_loop"])
    user, call, answer = t["steps"]
    assert user["message"] == "What is ATIF?"
    assert call["tool_calls"] == [{"tool_call_id": "call_r1", "function_name": "lookup",
                                   "arguments": {"term": "atif"}}]
    [result] = _results(call)
    assert result["source_call_id"] == "call_r1"
    assert result["content"] == [{"text": "a format", "type": "text"}]
    assert call["metrics"] == {"prompt_tokens": 30, "completion_tokens": 9, "cached_tokens": 10,
                               "extra": {"total_tokens": 39}}
    assert answer["message"] == "ATIF is a format." and answer["model_name"] == "gpt-4.1"


def test_repeated_identical_tool_calls_match_in_order(nf):
    t = _export(nf, PROGRAMS["repeated_calls"])
    call = t["steps"][1]
    assert [c["tool_call_id"] for c in call["tool_calls"]] == ["call_a", "call_b", "call_c"]
    assert [(r["source_call_id"], r["content"]) for r in _results(call)] == [
        ("call_a", "r1"), ("call_b", "r2"), ("call_c", "r3")]
    assert [i["invocation_id"] for i in call["extra"]["tool_invocations"]] == [
        "call_a", "call_b", "call_c"]
    assert [s["source"] for s in t["steps"]] == ["user", "agent", "user", "agent"]


def test_explicit_tool_call_ids_win(nf):
    t = _export(nf, PROGRAMS["explicit_ids"])
    assert [(r["source_call_id"], r["content"]) for r in _results(t["steps"][1])] == [
        ("call_2", "two"), ("call_1", "one")]


def test_tool_without_a_call_is_added_to_the_step(nf, events):
    t = _export(nf, PROGRAMS["unmatched_tool"])
    surprise = next(e for e in _scopes(events, "tool") if e.name == "surprise")
    call = t["steps"][1]
    assert call["tool_calls"][1]["tool_call_id"] == surprise.uuid
    assert call["tool_calls"][1]["arguments"] == {"z": 1}
    assert call["tool_calls"][1]["extra"]["event_uuid"] == surprise.uuid
    assert _results(call)[1]["source_call_id"] == surprise.uuid


def test_continuations_make_no_user_step(nf):
    t = _export(nf, PROGRAMS["continuation_variants"])
    users = [s["message"] for s in t["steps"] if s["source"] == "user"]
    # tool/assistant last (system aside) continues; a trailing user message or text part does
    # not; Responses input with typed output items continues; an Anthropic user turn with text
    # beside its tool result is a user step
    assert users == [[{"text": "parts", "type": "text"}], "resp user",
                     '[{"content":"r","tool_use_id":"t","type":"tool_result"},'
                     '{"text":"more","type":"text"}]',
                     '{"messages":[]}', "no role"]
    assert [s["message"] for s in t["steps"] if s["source"] == "agent"] == [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_nested_subagents(nf, events):
    t = _export(nf, PROGRAMS["nested_subagents"])
    agents = {e.name: e.uuid for e in _scopes(events, "agent")}
    assert t["trajectory_id"] == "session-1"
    subs = t["subagent_trajectories"]
    assert [(s["trajectory_id"], s["session_id"]) for s in subs] == [
        (agents["researcher"], "inner"), (agents["writer"], "session-1")]
    assert agents["idle"] not in json.dumps(t)   # delegated, no steps: dropped
    delegate = t["steps"][1]
    [result] = _results(delegate)
    assert result["source_call_id"] == "call_d"
    assert result["subagent_trajectory_ref"] == [{
        "trajectory_id": agents["researcher"], "session_id": "inner",
        "extra": {"name": "researcher", "scope_uuid": agents["researcher"]}}]
    writer = t["steps"][2]   # no delegating call: a synthetic dispatch step
    assert writer["source"] == "agent" and writer["llm_call_count"] == 0
    assert writer["tool_calls"][0]["tool_call_id"] == f"subagent:{agents['writer']}"
    assert writer["tool_calls"][0]["arguments"] == {"name": "writer",
                                                    "payload": {"draft": True}}
    assert "metrics" not in writer
    assert [s["message"] for s in subs[0]["steps"]] == ["research atif", "ATIF is JSON."]
    assert subs[0]["final_metrics"] == {"total_prompt_tokens": 12,
                                        "total_completion_tokens": 5, "total_steps": 2}
    # the parent's totals are its own steps only
    assert t["final_metrics"]["total_prompt_tokens"] == 24


def test_failed_tool(nf, events):
    t = _export(nf, PROGRAMS["failed_tool"])
    tool_end = _scopes(events, "tool", "end")[0]
    assert tool_end.metadata["otel.status_code"] == "ERROR"
    call = t["steps"][1]
    assert call["tool_calls"][0]["tool_call_id"] == "call_f"
    assert "observation" not in call   # the tool returned nothing
    assert call["extra"]["tool_ancestry"][0]["function_id"] == tool_end.uuid
    assert t["steps"][2]["message"] == "It failed."


def test_agent_without_llm_calls(nf):
    t = _export(nf, PROGRAMS["no_llm_agent"])
    [step] = t["steps"]
    assert step["source"] == "system" and step["message"] == ""
    first, second = _results(step)
    assert "source_call_id" not in first and first["extra"]["tool_result"] == ["a", "b"]
    assert second["content"] == "text of a"
    assert t["final_metrics"] == {"total_steps": 1}


def test_marks_and_other_scopes_make_no_steps(nf):
    async def program(m):
        with m.scope.scope("agent", m.ScopeType.Agent):
            m.scope.event("checkpoint", data={"x": 1})
            with m.scope.scope("retrieve", m.ScopeType.Retriever, input={"q": 1}):
                pass

    t = _export(nf, program)
    assert t["steps"] == [] and t["final_metrics"] == {"total_steps": 0}


def test_export_waits_does_not_clear_and_clear_resets(nf):
    exporter = run(nf, PROGRAMS["two_turns"], nf.exporters.AtifExporter)
    try:
        first = exporter.export()
        assert exporter.export() == first and len(first["steps"]) == 4
        exporter.clear()
        assert _check(exporter.export())["steps"] == []
    finally:
        exporter.deregister("atif-test")


def test_export_in_an_event_loop(nf):
    exporter = nf.exporters.AtifExporter("s", "a", "1")
    exporter.register("atif-loop")

    async def main():
        await PROGRAMS["two_turns"](nf)
        with pytest.raises(RuntimeError, match="export_async"):
            exporter.export()
        return await exporter.export_async()

    try:
        t = asyncio.run(main())
    finally:
        exporter.deregister("atif-loop")
    assert len(_check(t)["steps"]) == 4


def test_constructor_checks_types(nf):
    with pytest.raises(TypeError, match="session_id"):
        nf.exporters.AtifExporter(1, "a", "1")
    with pytest.raises(TypeError, match="tool_definitions"):
        nf.exporters.AtifExporter("s", "a", "1", tool_definitions=["x"])


# -- the pure conversion (inputs of the reference's unit tests) ----------------------------

def _event(uuid, phase, category, name, *, parent=None, data=None, metadata=None, profile=None,
           ts="2026-01-01T00:00:00+00:00"):
    return {"kind": "scope", "uuid": uuid, "parent_uuid": parent, "scope_category": phase,
            "category": category, "name": name, "data": data, "metadata": metadata,
            "category_profile": profile, "timestamp": ts, "atof_version": "0.1",
            "attributes": [], "data_schema": None}


def test_conversion_of_no_events():
    from nemoflow.exporters._atif_convert import agent_info, events_to_trajectory

    t = events_to_trajectory([], "session-1", agent_info("test-agent", "1.0.0"))
    assert _check(t) == {"schema_version": "ATIF-v1.7", "session_id": "session-1",
                         "trajectory_id": "session-1",
                         "agent": {"name": "test-agent", "version": "1.0.0"}, "steps": [],
                         "final_metrics": {"total_steps": 0}}


def test_conversion_of_a_lone_tool_call():
    from nemoflow.exporters._atif_convert import agent_info, events_to_trajectory

    uuid = "01a20a36-598b-78ca-8c5b-c7c6d175adb1"
    events = [_event(uuid, "start", "tool", "web_search", data={"query": "test"},
                     profile={"tool_call_id": "call_123"}),
              _event(uuid, "end", "tool", "web_search", data={"results": ["result1"]},
                     profile={"tool_call_id": "call_123"}, ts="2026-01-01T00:00:01+00:00")]
    t = _check(events_to_trajectory(events, "session-1", agent_info("a", "1")))
    [step] = t["steps"]
    assert step["source"] == "system" and step["timestamp"] == "2026-01-01T00:00:01+00:00"
    [result] = _results(step)
    assert "source_call_id" not in result and "content" not in result
    assert result["extra"]["tool_result"] == {"results": ["result1"]}


def test_conversion_parses_tool_arguments():
    from nemoflow.exporters._atif_convert import extract_tool_calls

    calls = extract_tool_calls({"tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
        {"function": {"name": "g", "arguments": "[1]"}},
        {"id": "c", "name": "h", "arguments": "oops", "index": 2},
        {"id": "d", "name": "k"}, {}]})
    assert calls == [
        {"tool_call_id": "a", "function_name": "f", "arguments": {"x": 1}},
        {"tool_call_id": "g:2", "function_name": "g", "arguments": {"value": [1]}},
        {"tool_call_id": "c", "function_name": "h", "arguments": {"raw": "oops"},
         "extra": {"index": 2}},
        {"tool_call_id": "d", "function_name": "k", "arguments": {}}]


def test_overlapping_duplicate_llm_spans_are_deduplicated():
    from nemoflow.exporters._atif_convert import agent_info, events_to_trajectory

    agent, hook, gateway = ("01a20a36-0000-7000-8000-00000000000%d" % i for i in (1, 2, 3))
    request = {"headers": {}, "content": {"messages": [{"role": "user", "content": "hi"}]}}
    response = {"choices": [{"message": {"role": "assistant", "content": "yo"}}],
                "usage": {"prompt_tokens": 3}}
    t0, t1 = "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:02+00:00"
    events = [_event(agent, "start", "agent", "a", ts=t0),
              _event(hook, "start", "llm", "hook", parent=agent, data=request,
                     metadata={"hook_event_name": "x"}, ts=t0),
              _event(gateway, "start", "llm", "gw", parent=agent, data=request,
                     metadata={"gateway_path": "/v1"}, ts=t0),
              _event(gateway, "end", "llm", "gw", parent=agent,
                     data={**response, "usage": {"completion_tokens": 2}}, ts=t1),
              _event(hook, "end", "llm", "hook", parent=agent, data=response, ts=t1),
              _event(agent, "end", "agent", "a", ts=t1)]
    t = _check(events_to_trajectory(events, "s", agent_info("a", "1")))
    assert [s["source"] for s in t["steps"]] == ["user", "agent"]
    assert t["steps"][1]["extra"]["ancestry"]["function_id"] == hook
    # the suppressed span's counts fill the kept one's gaps
    assert t["steps"][1]["metrics"] == {"prompt_tokens": 3, "completion_tokens": 2}


# -- files and convert ---------------------------------------------------------------------

def _file_exporter(nf, tmp_path, **kw):
    exporter = nf.exporters.AtifFileExporter(str(tmp_path / "out"), agent_name="test-agent",
                                             agent_version="1.0.0", **kw)
    exporter.register("atif-files")
    return exporter


async def _two_agents(m):
    for user in ("alice", "bob"):
        with m.scope.scope("assistant", m.ScopeType.Agent,
                           metadata={"session_id": f"s-{user}", "user_id": user}):
            await m.llm.execute("openai", m.LLMRequest({}, {"messages": [
                {"role": "user", "content": f"hi from {user}"}]}),
                lambda _r: {"choices": [{"message": {"role": "assistant", "content": "hi"}}]})


def test_file_mode_writes_one_file_per_top_level_agent(nf, tmp_path):
    exporter = _file_exporter(nf, tmp_path, filename="atif-{metadata.user_id:-anon}-"
                                                     "{session_id}.json")
    asyncio.run(_two_agents(nf))
    exporter.force_flush()
    exporter.shutdown()
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["atif-alice-s-alice.json", "atif-bob-s-bob.json"]
    path = out / "atif-alice-s-alice.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert text.startswith('{\n  "schema_version": "ATIF-v1.7",\n  "session_id": "s-alice"')
    t = _check(json.loads(text), text)
    assert t["extra"]["nemo_relay"] == {"session_id": "s-alice", "session_instance_id": None,
                                        "user_id": "alice"}
    assert len(t["extra"]["observed_events"]) == 4
    assert t["steps"][0]["message"] == "hi from alice"


def test_file_mode_replaces_atomically_and_refuses_symlinks(nf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "nemo-relay-atif-s-alice.json").write_text("old")
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.symlink(target, out / "nemo-relay-atif-s-bob.json")
    exporter = _file_exporter(nf, tmp_path)
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        asyncio.run(_two_agents(nf))
        exporter.force_flush()
    exporter.shutdown()
    assert json.loads((out / "nemo-relay-atif-s-alice.json").read_text())["session_id"] == \
        "s-alice"
    assert target.read_text() == "keep"
    assert sorted(os.listdir(out)) == ["nemo-relay-atif-s-alice.json",
                                       "nemo-relay-atif-s-bob.json"]   # no temporary left
    assert exporter.stats()["errors"] == 1


@pytest.mark.parametrize("template", ["../x.json", "a/b.json", "{metadata.x:-../y}.json",
                                      "{nope}.json", "..json", "{session_id"])
def test_file_mode_refuses_unsafe_templates(nf, template, tmp_path):
    with pytest.raises(ValueError, match="template|placeholder|safe file name|braces"):
        nf.exporters.AtifFileExporter(str(tmp_path), filename=template)


def test_file_mode_refuses_unsafe_substitutions(nf, tmp_path):
    exporter = _file_exporter(nf, tmp_path, filename="{metadata.user_id}.json")

    async def program(m):
        for user in ("../../etc/passwd", "ok"):
            with m.scope.scope("assistant", m.ScopeType.Agent, metadata={"user_id": user}):
                pass

    with pytest.warns(RuntimeWarning, match="not a safe file name"):
        asyncio.run(program(nf))
        exporter.force_flush()
    assert nf.diagnostics()["exporters"]["atif-files"]["errors"] == 1
    exporter.shutdown()
    assert os.listdir(tmp_path / "out") == ["ok.json"]


def test_convert_gives_the_live_trajectory_byte_for_byte(nf, tmp_path):
    from nemoflow import cli

    jsonl = nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), "run.jsonl",
                                                  nf.AtofExporterMode.Overwrite))
    jsonl.register("jsonl")
    live = nf.exporters.AtifExporter("session-1", "test-agent", "1.0.0")
    live.register("atif-live")
    for program in ("chat_tool_loop", "nested_subagents", "anthropic_tool_loop"):
        asyncio.run(PROGRAMS[program](nf))
    jsonl.force_flush()
    expected = live.export_json()
    live.deregister("atif-live")
    jsonl.shutdown()
    out = tmp_path / "t.json"
    assert cli.main(["convert", str(tmp_path / "run.jsonl"), "--to", "atif", "-o", str(out),
                     "--session-id", "session-1", "--agent-name", "test-agent",
                     "--agent-version", "1.0.0"]) == 0
    assert out.read_bytes() == (expected + "\n").encode()
    _check(json.loads(expected), expected)


def test_convert_defaults_to_the_top_level_agent(nf, tmp_path, capsys):
    from nemoflow import cli

    jsonl = nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), "run.jsonl",
                                                  nf.AtofExporterMode.Overwrite))
    jsonl.register("jsonl")
    asyncio.run(PROGRAMS["responses_tool_loop"](nf))
    jsonl.shutdown()
    assert cli.main(["convert", str(tmp_path / "run.jsonl"), "--to", "atif"]) == 0
    t = _check(json.loads(capsys.readouterr().out))
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert t["session_id"] == lines[0]["uuid"] and t["agent"]["name"] == "search-agent"


# -- parity with NeMo Relay ----------------------------------------------------------------

def _key_order(text):
    return json.loads(text, object_pairs_hook=lambda pairs: [
        (k, v) for k, v in pairs if isinstance(v, list)] + [k for k, _ in pairs])


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_same_trajectory_as_nemo_relay(nf, program):
    relay = pytest.importorskip("nemo_relay")
    kw = {"model_name": "gpt-4o", "extra": {"b": 1, "a": [2]},
          "tool_definitions": [{"type": "function", "function": {"name": "f"}}]}
    theirs = run(relay, PROGRAMS[program], relay.AtifExporter, **kw)
    try:
        their_dict, their_json = theirs.export(), theirs.export_json()
    finally:
        theirs.deregister("atif-test")
    ours = run(nf, PROGRAMS[program], nf.exporters.AtifExporter, **kw)
    try:
        our_dict, our_json = ours.export(), ours.export_json()
    finally:
        ours.deregister("atif-test")
    _check(our_dict, our_json)
    assert anonymized(our_dict) == anonymized(their_dict)
    assert _key_order(our_json) == _key_order(their_json)


# -- expectations ported from the reference's unit tests -----------------------------------

_T = ["2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00.001+00:00",
      "2026-01-01T00:00:00.002+00:00"]


def _convert(events):
    from nemoflow.exporters._atif_convert import agent_info, events_to_trajectory

    return _check(events_to_trajectory(events, "session-1", agent_info("test-agent", "1.0.0")))


def test_reference_llm_lifecycle():
    uuid = "01a20a36-598b-78ca-8c5b-000000000001"
    t = _convert([
        _event(uuid, "start", "llm", "gpt-4", profile={"model_name": "gpt-4"}, data={
            "content": {"messages": [{"role": "user", "content": "hello"}], "temperature": 0.1,
                        "tools": [{"type": "function", "function": {"name": "read_file"}}]},
            "headers": {}}),
        _event(uuid, "end", "llm", "gpt-4", profile={"model_name": "gpt-4"}, ts=_T[1], data={
            "content": "Hi there!", "role": "assistant", "tool_calls": [],
            "token_usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}})])
    user, agent = t["steps"]
    assert user["message"] == "hello" and "model_name" not in user
    assert user["extra"]["llm_request"]["temperature"] == 0.1
    assert user["extra"]["llm_request"]["tools"][0]["function"]["name"] == "read_file"
    assert agent["message"] == "Hi there!" and agent["model_name"] == "gpt-4"
    assert agent["llm_call_count"] == 1 and "tool_calls" not in agent
    assert agent["metrics"]["prompt_tokens"] == 10
    assert agent["metrics"]["completion_tokens"] == 20
    assert t["final_metrics"] == {"total_prompt_tokens": 10, "total_completion_tokens": 20,
                                  "total_steps": 2}


def test_reference_plain_input_and_string_response():
    uuid = "01a20a36-598b-78ca-8c5b-000000000002"
    t = _convert([
        _event(uuid, "start", "llm", "gpt-4",
               data={"messages": [{"role": "user", "content": "hello"}]}),
        _event(uuid, "end", "llm", "gpt-4", data="simple string response", ts=_T[1])])
    assert [s["message"] for s in t["steps"]] == ["hello", "simple string response"]
    assert "metrics" not in t["steps"][1]
    assert t["final_metrics"] == {"total_steps": 2}


def test_reference_responses_lifecycle():
    uuid = "01a20a36-598b-78ca-8c5b-000000000003"
    t = _convert([
        _event(uuid, "start", "llm", "gpt-test-model", profile={"model_name": "gpt-test-model"},
               data={"input": "Summarize the Codex worker result.", "model": "gpt-test-model",
                     "prompt_cache_key": "codex-child-thread"}),
        _event(uuid, "end", "llm", "gpt-test-model", ts=_T[1], data={
            "id": "resp_1", "status": "completed",
            "output": [{"type": "message", "content": [
                {"type": "output_text", "text": "Codex worker summary complete."}]}],
            "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}})])
    user, agent = t["steps"]
    assert user["message"] == "Summarize the Codex worker result."
    assert user["extra"]["llm_request"]["prompt_cache_key"] == "codex-child-thread"
    assert agent["message"] == "Codex worker summary complete."
    assert agent["model_name"] == "gpt-test-model"
    assert agent["metrics"]["prompt_tokens"] == 11
    assert agent["metrics"]["completion_tokens"] == 7
    assert agent["extra"]["llm_response"]["id"] == "resp_1"


def test_reference_anthropic_tool_use_blocks():
    llm, tool = "01a20a36-598b-78ca-8c5b-000000000004", "01a20a36-598b-78ca-8c5b-000000000005"
    t = _convert([
        _event(llm, "start", "llm", "claude-sonnet-4", data={
            "model": "claude-sonnet-4", "system": "Be concise.",
            "messages": [{"role": "user", "content": "Find the file."}],
            "tools": [{"name": "search", "input_schema": {"type": "object"}}]}),
        _event(llm, "end", "llm", "claude-sonnet-4", ts=_T[1], data={
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
            "content": [{"type": "text", "text": "I will search for it."},
                        {"type": "tool_use", "id": "toolu_01", "name": "search",
                         "input": {"query": "file"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 3,
                      "cache_creation_input_tokens": 5}}),
        _event(tool, "end", "tool", "search", parent=llm, ts=_T[2],
               profile={"tool_call_id": "toolu_01"}, data={"matches": ["README.md"]})])
    user, agent = t["steps"]
    assert user["message"] == "Find the file."
    assert user["extra"]["llm_request"]["system"] == "Be concise."
    assert agent["message"] == "I will search for it."
    # NeMo Relay 0.10 counts Anthropic's cache reads and writes into the prompt (11 + 3 + 5)
    assert agent["metrics"] == {"prompt_tokens": 19, "completion_tokens": 7,
                                "cached_tokens": 8}
    assert agent["tool_calls"] == [{"tool_call_id": "toolu_01", "function_name": "search",
                                    "arguments": {"query": "file"}}]
    [result] = _results(agent)
    assert result["source_call_id"] == "toolu_01" and "content" not in result
    assert result["extra"]["tool_result"] == {"matches": ["README.md"]}


def test_reference_placeholder_request_keeps_an_empty_user_step():
    uuid = "01a20a36-598b-78ca-8c5b-000000000006"
    t = _convert([
        _event(uuid, "start", "llm", "openclaw-model-call", data={"headers": {}, "content": {
            "provider": "nvidia-inference", "model": "claude-sonnet-4", "prompt": "",
            "messages": [], "placeholderRequest": True}}),
        _event(uuid, "end", "llm", "openclaw-model-call", ts=_T[1],
               data={"role": "assistant", "content": "I will search."})])
    user, agent = t["steps"]
    assert user["message"] == "" and "headers" not in user["extra"]["llm_request"]
    assert user["extra"]["llm_request"]["placeholderRequest"] is True
    assert agent["message"] == "I will search." and agent["model_name"] == "claude-sonnet-4"


@pytest.mark.parametrize("usage, expected", [
    ({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "cost_usd": 0.001,
      "prompt_tokens_details": {"cached_tokens": 4}},
     {"prompt_tokens": 10, "completion_tokens": 20, "cached_tokens": 4, "cost_usd": 0.001,
      "extra": {"total_tokens": 30}}),
    ({"input_tokens": 75, "output_tokens": 20, "total_tokens": 95,
      "input_tokens_details": {"cached_tokens": 10}, "cost_usd": 0.005},
     {"prompt_tokens": 75, "completion_tokens": 20, "cached_tokens": 10, "cost_usd": 0.005,
      "extra": {"total_tokens": 95}}),
    ({"input_tokens": 11, "output_tokens": 22, "cache_read_input_tokens": 3,
      "cache_creation_input_tokens": 5, "cost": {"total": 0.0042, "currency": "USD"}},
     {"prompt_tokens": 11, "completion_tokens": 22, "cached_tokens": 8, "cost_usd": 0.0042}),
    ({"input_tokens": 11, "output_tokens": 22, "cost": {"total": 0.0042, "currency": "EUR"}},
     {"prompt_tokens": 11, "completion_tokens": 22}),
    ({"prompt_tokens": 1000, "completion_tokens": 500,
      "cost": {"total": 0.42, "source": "provider_reported"}},
     {"prompt_tokens": 1000, "completion_tokens": 500, "cost_usd": 0.42}),
    ({"cost_usd": 0.0}, {"cost_usd": 0.0}),
])
def test_reference_metrics_from_provider_usage(usage, expected):
    from nemoflow.exporters._atif_convert import extract_metrics

    assert extract_metrics({"usage": usage}, "custom") == expected


def test_subagent_started_by_a_tool_hangs_under_that_call(nf, events):
    t = _export(nf, PROGRAMS["subagent_inside_tool"])
    helper = next(e.uuid for e in _scopes(events, "agent") if e.name == "helper-agent")
    [result] = _results(t["steps"][1])
    assert result["source_call_id"] == "call_h" and result["content"] == "delegated"
    assert [r["trajectory_id"] for r in result["subagent_trajectory_ref"]] == [helper]
    assert [s["trajectory_id"] for s in t["subagent_trajectories"]] == [helper]


def test_tool_results_before_the_response_join_it(nf):
    t = _export(nf, PROGRAMS["tool_before_response"])
    assert [(r["source_call_id"], r["content"]) for r in _results(t["steps"][1])] == [
        ("call_e", "early"), ("call_f", "late")]


def test_file_mode_finds_agents_inside_other_scopes(nf, tmp_path):
    exporter = _file_exporter(nf, tmp_path)

    async def program(m):
        with m.scope.scope("request-handler", m.ScopeType.Function):
            await _two_agents(m)
            with m.scope.scope("not-an-agent", m.ScopeType.Function):
                pass
        with m.scope.scope("chat", m.ScopeType.Function,
                           metadata={"nemo_relay_scope_role": "turn", "session_id": "t-1"}):
            await m.llm.execute("openai", m.LLMRequest({}, {"messages": [
                {"role": "user", "content": "turn"}]}), lambda _r: {"content": "ok"})

    asyncio.run(program(nf))
    exporter.force_flush()
    exporter.shutdown()
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["nemo-relay-atif-s-alice.json",
                                       "nemo-relay-atif-s-bob.json", "nemo-relay-atif-t-1.json"]
    bob = _check(json.loads((out / "nemo-relay-atif-s-bob.json").read_text()))
    assert [s["message"] for s in bob["steps"]] == ["hi from bob", "hi"]
    assert {e["name"] for e in bob["extra"]["observed_events"]} == {"assistant", "openai"}
    turn = _check(json.loads((out / "nemo-relay-atif-t-1.json").read_text()))
    assert [s["message"] for s in turn["steps"]] == ["turn", "ok"]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_convert_of_a_nemo_relay_trace_is_its_live_trajectory(program, tmp_path, capsys):
    """NeMo Relay records a run as ATOF JSONL and exports its trajectory live; converting that
    file gives the same bytes (its uuids, timestamps and numbers included)."""
    relay = pytest.importorskip("nemo_relay")
    from nemoflow import cli

    config = relay.AtofExporterConfig()
    config.output_directory, config.filename = str(tmp_path), "relay.jsonl"
    jsonl = relay.AtofExporter(config)
    jsonl.register("relay-jsonl")
    live = relay.AtifExporter("session-1", "test-agent", "1.0.0")
    live.register("relay-atif")
    try:
        asyncio.run(PROGRAMS[program](relay))
        jsonl.force_flush()
        expected = live.export_json()
    finally:
        live.deregister("relay-atif")
        jsonl.deregister("relay-jsonl")
        jsonl.shutdown()
    assert cli.main(["convert", str(tmp_path / "relay.jsonl"), "--to", "atif", "--session-id",
                     "session-1", "--agent-name", "test-agent", "--agent-version",
                     "1.0.0"]) == 0
    assert capsys.readouterr().out == expected + "\n"
