"""The examples the README points to run as documented, on both cores, and write what they say.

``examples/agent.py`` is the README's first command: if it breaks, the quick start is false.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(nf, script, *args, cwd):
    env = dict(os.environ)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def _lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_agent_example_writes_its_trace_and_summary(nf, tmp_path):
    out = _run(nf, "agent.py", cwd=tmp_path)
    events = _lines(tmp_path / "traces" / "agent.jsonl")
    assert f"\n{len(events)} events: " in out
    assert "research-agent [agent]" in out and "dropped: 0" in out
    assert {e["name"] for e in events} >= {"research-agent", "planner", "search", "summarize"}


def test_agent_tools_example(nf, tmp_path):
    _run(nf, "agent_tools.py", str(tmp_path / "tools.jsonl"), cwd=tmp_path)
    names = {e["name"] for e in _lines(tmp_path / "tools.jsonl")}
    assert "llm.chunk" in names


def test_langgraph_example_writes_jsonl_otlp_and_a_trajectory(nf, tmp_path):
    pytest.importorskip("langgraph")
    atif = pytest.importorskip("atif")
    out = _run(nf, "langgraph_agent.py", str(tmp_path), cwd=tmp_path)
    assert "It is sunny in Paris." in out
    assert _lines(tmp_path / "langgraph_agent.jsonl")
    assert all("resourceSpans" in line for line in _lines(tmp_path / "langgraph_agent.otlp.jsonl"))
    with open(tmp_path / "langgraph_agent.atif.json", encoding="utf-8") as f:
        atif.Trajectory.model_validate(json.load(f))
