"""Every Python block of the README runs as written, on its own, as a new user pastes it: in a
fresh interpreter, on both cores, with the OpenAI SDK pointed at a local fake server and the
OTLP endpoint at a loopback collector."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from fake_llm_server import FakeLLMServer
from otlp_collector import Collector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    out = []
    for match in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M):
        line = text.count("\n", 0, match.start()) + 2
        out.append(pytest.param(match.group(1), id=f"README.md:{line}"))
    return out


BLOCKS = _blocks()


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("code", BLOCKS)
def test_readme_block_runs_as_written(nf, tmp_path, code):
    if "openai" in code:
        pytest.importorskip("openai")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEMOFLOW_", "OTEL_"))}
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    script = tmp_path / "snippet.py"
    script.write_text(code, encoding="utf-8")
    collector = Collector()
    try:
        with FakeLLMServer() as server:
            env.update(OPENAI_BASE_URL=server.url + "/v1", OPENAI_API_KEY="sk-test",
                       OTEL_EXPORTER_OTLP_ENDPOINT=collector.url)
            proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=60, check=False)
        spans = collector.spans()
    finally:
        collector.close()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    if "OpenTelemetrySubscriber" in code:
        assert spans  # the block really exported to the endpoint it names
