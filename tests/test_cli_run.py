"""``nemoflow run``: a program run traced in a real subprocess, as ``python script.py`` /
``python -m`` would run it (argv, ``__main__``, ``sys.path[0]``, exit status, tracebacks),
with exporters from options or ``NEMOFLOW_*`` variables, integrations instrumented and the
summary on stderr at exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import orjson
import pytest
from fake_llm_server import FakeLLMServer
from otlp_collector import Collector

PROGRAM = textwrap.dedent("""\
    import json, os, sys
    import nemoflow as nf

    @nf.trace.agent("agent")
    def main():
        with nf.trace.tool("search") as call:
            call.output = ["a"]
        nf.mark("done")

    main()
    print(json.dumps({"argv": sys.argv, "name": __name__, "file": __file__,
                      "path0": sys.path[0], "main": sys.modules["__main__"].__dict__ is globals(),
                      "spec": __spec__ is None}))
    if len(sys.argv) > 1 and sys.argv[1] == "raise":
        raise ValueError("no luck")
    if len(sys.argv) > 1:
        sys.exit(sys.argv[1] if not sys.argv[1].isdigit() else int(sys.argv[1]))
    """)


def _env(nf, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEMOFLOW_")}
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    env.update(extra)
    return env


def _run(nf, argv, cwd, timeout=60, **env):
    proc = subprocess.run(argv, cwd=cwd, env=_env(nf, **env), capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def _nemoflow(nf, *args, cwd, **env):
    return _run(nf, [sys.executable, "-m", "nemoflow", "run", *args], cwd, **env)


def _lines(path):
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f]


@pytest.fixture
def program(tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM)
    return "prog.py"


def test_the_program_sees_what_python_gives_it(nf, tmp_path, program):
    for args in ([], ["x", "--flag", "-m"]):
        code, out, _err = _run(nf, [sys.executable, program, *args], tmp_path)
        traced = _nemoflow(nf, program, *args, cwd=tmp_path)
        assert (code, out) == traced[:2], traced[2]
        assert json.loads(out)["argv"] == [program, *args]
        assert json.loads(out)["main"] and json.loads(out)["name"] == "__main__"


def test_module_mode_is_python_dash_m(nf, tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tool.py").write_text(PROGRAM)
    plain = _run(nf, [sys.executable, "-m", "pkg.tool", "7"], tmp_path)
    traced = _nemoflow(nf, "-m", "pkg.tool", "7", cwd=tmp_path)
    assert plain[1] == traced[1] and plain[0] == traced[0] == 7
    assert json.loads(traced[1])["argv"] == [str(pkg / "tool.py"), "7"]
    code, _out, err = _nemoflow(nf, "-m", "no_such_module", cwd=tmp_path)
    assert code == 1 and "No module named no_such_module" in err


@pytest.mark.parametrize("arg, status", [("3", 3), ("0", 0), ("stop now", 1)])
def test_exit_status_is_the_programs(nf, tmp_path, program, arg, status):
    code, _out, err = _nemoflow(nf, program, arg, cwd=tmp_path)
    assert code == status
    if arg == "stop now":
        assert err.startswith("stop now\n")
    assert "Traceback" not in err


def test_an_uncaught_exception_is_printed_as_python_prints_it(nf, tmp_path, program):
    _code, _out, plain = _run(nf, [sys.executable, program, "raise"], tmp_path)
    code, _out, err = _nemoflow(nf, program, "raise", cwd=tmp_path)
    assert code == 1
    assert err.startswith(plain), err
    (tmp_path / "broken.py").write_text("x = (\n")
    _code, _out, plain = _run(nf, [sys.executable, "broken.py"], tmp_path)
    code, _out, err = _nemoflow(nf, "broken.py", cwd=tmp_path)
    assert code == 1 and err.startswith(plain) and "_cli_run" not in err


def test_summary_on_stderr_at_exit(nf, tmp_path, program):
    code, out, err = _nemoflow(nf, program, cwd=tmp_path)
    assert code == 0 and "search" not in out
    head = err.strip().splitlines()[0]
    assert head == "5 events: 2 scopes, 1 marks, 0 errors"
    assert "agent" in err and "search" in err
    code, _out, err = _nemoflow(nf, "--summary", "tree", program, cwd=tmp_path)
    assert "  agent [agent]" in err and "    search [tool]" in err and "      • done" not in err
    assert "    • done" in err
    code, _out, err = _nemoflow(nf, "--summary", "none", program, cwd=tmp_path)
    assert (code, err) == (0, "")
    code, _out, err = _nemoflow(nf, program, cwd=tmp_path, NEMOFLOW_SUMMARY="none")
    assert (code, err) == (0, "")


def test_exporters_from_options(nf, tmp_path, program):
    from nemoflow.exporters.chrome import validate_chrome_trace

    code, _out, err = _nemoflow(nf, "--jsonl", "out/t.jsonl", "--chrome", "t.json",
                                "--otlp-json", "t.otlp.jsonl", "--atif", "t.atif.json",
                                "--summary", "none", program, cwd=tmp_path)
    assert code == 0, err
    assert err.splitlines() == ["nemoflow: ATOF JSONL: out/t.jsonl",
                                "nemoflow: Chrome trace: t.json",
                                "nemoflow: OTLP/JSON: t.otlp.jsonl",
                                "nemoflow: ATIF trajectory: t.atif.json"]
    events = _lines(tmp_path / "out" / "t.jsonl")
    assert [(e["name"], e.get("scope_category")) for e in events] == [
        ("agent", "start"), ("search", "start"), ("search", "end"), ("done", None),
        ("agent", "end")]
    chrome = json.loads((tmp_path / "t.json").read_bytes())
    assert validate_chrome_trace(chrome) == []
    assert {e["name"] for e in chrome["traceEvents"] if e["ph"] == "X"} == {"agent", "search"}
    spans = [s for line in _lines(tmp_path / "t.otlp.jsonl") for rs in line["resourceSpans"]
             for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert sorted(s["name"] for s in spans) == ["agent", "search"]
    trajectory = json.loads((tmp_path / "t.atif.json").read_bytes())
    assert trajectory["session_id"] == events[0]["uuid"]
    assert trajectory["agent"]["name"] == "agent"


def test_exporters_from_the_environment_and_options_win(nf, tmp_path, program):
    code, _out, err = _nemoflow(nf, program, cwd=tmp_path, NEMOFLOW_JSONL="env.jsonl",
                                NEMOFLOW_CHROME="env.json", NEMOFLOW_SUMMARY="none")
    assert code == 0, err
    assert len(_lines(tmp_path / "env.jsonl")) == 5 and (tmp_path / "env.json").exists()
    code, _out, err = _nemoflow(nf, "--jsonl", "flag.jsonl", program, cwd=tmp_path,
                                NEMOFLOW_JSONL="env2.jsonl", NEMOFLOW_SUMMARY="none")
    assert (tmp_path / "flag.jsonl").exists() and not (tmp_path / "env2.jsonl").exists()


def test_spans_reach_a_collector_with_their_parents(nf, tmp_path, program):
    collector = Collector()
    try:
        code, _out, err = _nemoflow(nf, "--otlp", collector.url, "--projection", "gen_ai",
                                    "--summary", "none", program, cwd=tmp_path,
                                    OTEL_SERVICE_NAME="my-svc")
        spans = collector.spans()
        resource = collector.resource_spans()[0].resource
    finally:
        collector.close()
    assert code == 0, err
    by_id = {s.span_id: s for s in spans}
    assert len(spans) == 2
    child = next(s for s in spans if s.parent_span_id)
    assert by_id[child.parent_span_id].trace_id == child.trace_id
    assert any(a.key.startswith("gen_ai.") for a in child.attributes)
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "my-svc"


def test_the_program_is_traced_until_it_really_ends(nf, tmp_path):
    (tmp_path / "late.py").write_text(textwrap.dedent("""\
        import atexit, threading, time
        import nemoflow as nf

        def worker():
            time.sleep(0.2)
            nf.mark("from-thread")

        threading.Thread(target=worker).start()
        atexit.register(lambda: nf.mark("from-atexit"))
        """))
    code, _out, err = _nemoflow(nf, "--jsonl", "t.jsonl", "late.py", cwd=tmp_path)
    assert code == 0, err
    events = sorted(_lines(tmp_path / "t.jsonl"), key=lambda e: e["timestamp"])
    assert [e["name"] for e in events] == ["from-thread", "from-atexit"]
    assert err.splitlines()[1] == "2 events: 0 scopes, 2 marks, 0 errors"


OPENAI_PROGRAM = textwrap.dedent("""\
    import os, sys
    import openai

    client = openai.OpenAI(base_url=os.environ["LLM_URL"] + "/v1", api_key="sk-test",
                           max_retries=0)
    reply = client.chat.completions.create(model="gpt-4o",
                                           messages=[{"role": "user", "content": "hi"}])
    print(reply.choices[0].message.content)
    """)


def test_a_real_openai_program_is_instrumented(nf, tmp_path):
    pytest.importorskip("openai")
    (tmp_path / "ask.py").write_text(OPENAI_PROGRAM)
    with FakeLLMServer() as server:
        code, out, err = _nemoflow(nf, "--jsonl", "t.jsonl", "ask.py", cwd=tmp_path,
                                   LLM_URL=server.url)
        assert code == 0, err
        assert out == "Hello!\n"
        events = _lines(tmp_path / "t.jsonl")
        assert [(e["category"], e["scope_category"]) for e in events] == [("llm", "start"),
                                                                          ("llm", "end")]
        assert events[1]["data"]["usage"]["prompt_tokens"] == 5
        assert "sk-test" not in (tmp_path / "t.jsonl").read_text()
        assert "gpt-4o" in err  # the LLM models table
        code, _out, err = _nemoflow(nf, "--jsonl", "t2.jsonl", "--instrument", "none", "ask.py",
                                    cwd=tmp_path, LLM_URL=server.url)
    assert code == 0 and _lines(tmp_path / "t2.jsonl") == []
    assert "no events were recorded" in err


def test_langchain_runs_are_traced_without_passing_a_handler(nf, tmp_path):
    pytest.importorskip("langchain_core")
    (tmp_path / "chain.py").write_text(textwrap.dedent("""\
        from langchain_core.language_models.fake_chat_models import FakeListChatModel
        from langchain_core.prompts import ChatPromptTemplate

        chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | FakeListChatModel(
            responses=["fine"])
        print(chain.invoke({"q": "how are you?"}).content)
        """))
    code, out, err = _nemoflow(nf, "--jsonl", "t.jsonl", "chain.py", cwd=tmp_path)
    assert code == 0, err
    assert out == "fine\n"
    events = _lines(tmp_path / "t.jsonl")
    starts = [e for e in events if e["scope_category"] == "start"]
    assert starts[0]["category"] == "agent"
    assert "llm" in {e["category"] for e in starts}
    assert all(e["parent_uuid"] == starts[0]["uuid"] for e in starts[1:])


@pytest.mark.parametrize("args, message", [
    ([], "give a script to run"),
    (["--bogus", "prog.py"], "unrecognized arguments: --bogus"),
    (["--summary", "loud", "prog.py"], "invalid choice: 'loud'"),
    (["--instrument", "zipkin", "prog.py"], "unknown integration(s) zipkin"),
    (["-m"], "expected a module name"),
    (["--jsonl", ".", "prog.py"], "not a regular file"),
])
def test_usage_errors_stop_before_the_program_runs(nf, tmp_path, program, args, message):
    code, out, err = _nemoflow(nf, *args, cwd=tmp_path)
    assert code == 2 and message in err and out == "" and "Traceback" not in err
    code, _out, err = _nemoflow(nf, "missing.py", cwd=tmp_path)
    assert code == 2 and "can't open file" in err


def test_help(nf, tmp_path):
    code, out, _err = _nemoflow(nf, "--help", cwd=tmp_path)
    assert code == 0 and "nemoflow run [options] -m module" in out and "NEMOFLOW_JSONL" in out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_print_the_summary_again(nf, tmp_path):
    (tmp_path / "forks.py").write_text(textwrap.dedent("""\
        import os, sys
        import nemoflow as nf

        nf.mark("before")
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs the exit handlers in the child
        os.waitpid(pid, 0)
        """))
    code, _out, err = _nemoflow(nf, "forks.py", cwd=tmp_path)
    assert code == 0, err
    assert err.count("events:") == 1


def test_a_directory_or_zip_runs_its_main_as_python_does(nf, tmp_path):
    import zipfile

    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__main__.py").write_text(PROGRAM)
    with zipfile.ZipFile(tmp_path / "app.zip", "w") as z:
        z.write(tmp_path / "app" / "__main__.py", "__main__.py")
    for target in ("app", "app.zip"):
        plain = _run(nf, [sys.executable, target, "5"], tmp_path)
        traced = _nemoflow(nf, "--summary", "none", target, "5", cwd=tmp_path)
        assert traced == plain
        assert json.loads(plain[1])["argv"] == [target, "5"]
