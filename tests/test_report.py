"""``nemoflow report``: what the page holds, escaping of hostile traces, size bounds, errors, and
the page loaded in a real headless Chromium (skipped where no Chromium is installed)."""

from __future__ import annotations

import html.parser
import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import orjson
import pytest
from test_cli_stats import ROOT, Trace, _constructed, _write


class _Cli:
    """``nemoflow.cli`` as loaded now: other tests re-import the package per backend, and the
    report module must raise the same ``TraceError`` class the command catches."""

    def __getattr__(self, attr):
        return getattr(importlib.import_module("nemoflow.cli"), attr)


cli = _Cli()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTILE = "</script><script>alert(1)</script><img src=x onerror=alert(2)><!--"


class _Page(html.parser.HTMLParser):
    """The tags of a page, and the data of its JSON block."""

    def __init__(self, text):
        super().__init__()
        self.tags: list = []
        self.data_block = None
        self._in_data = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self._in_data = tag == "script" and attrs.get("type") == "application/json"

    def handle_endtag(self, tag):
        self._in_data = False

    def handle_data(self, data):
        if self._in_data:
            self.data_block = json.loads(data)

    def count(self, tag, cls=None):
        return sum(1 for t, a in self.tags
                   if t == tag and (cls is None or cls in (a.get("class") or "").split()))


def _report(tmp_path, capsys, trace: bytes, *args):
    path = _write(tmp_path, "t.jsonl", trace)
    out = tmp_path / "report.html"
    code = cli.main(["report", path, "-o", str(out), *args])
    _, err = capsys.readouterr()
    assert code == 0, err
    return out.read_text(encoding="utf-8")


def test_report_holds_timeline_tree_statistics_and_models(tmp_path, capsys):
    text = _report(tmp_path, capsys, _constructed())
    page = _Page(text)
    data = page.data_block
    assert len(data["scopes"]) == 10 and len(data["marks"]) == 1
    assert page.count("details", "scope") == 10
    assert page.count("details", "err") == 1  # the failing search call
    names = sorted(s[0] for s in data["scopes"])
    assert names == ["agent", "chat", "chat", "search", "search", "search", "search", "search",
                     "search", "step"]
    # the statistics are summary --stats': same numbers in the table
    assert "<td class=\"l\">search</td><td class=\"r\">6</td><td class=\"r\">1</td>" in text
    assert "gpt-4o-2024-08-06" in text and "claude-sonnet-4" in text
    assert 'data-scopes="10"' in text
    # inputs and outputs are in the tree
    assert "chat.completion" in text
    # nothing is loaded: no external reference, a CSP that forbids requests
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert not any("src" in a or "href" in a for _, a in page.tags)
    csp = next(a["content"] for t, a in page.tags if a.get("http-equiv") ==
               "Content-Security-Policy")
    assert csp.startswith("default-src 'none'; script-src 'sha256-")
    assert page.count("script") == 2 and page.count("link") == 0


def test_timeline_lanes_follow_the_tree(tmp_path, capsys):
    t = Trace()
    agent = t.scope("agent", "agent", 0, 100_000)
    t.scope("one", "tool", 1_000, 50_000, agent)
    t.scope("two", "tool", 2_000, 60_000, agent)  # overlaps "one": a task of its own
    t.scope("three", "tool", 70_000, 80_000, agent)  # after both: back on the agent's track
    data = _Page(_report(tmp_path, capsys, t.bytes())).data_block
    lanes = {s[0]: (s[4], s[5]) for s in data["scopes"]}
    assert lanes["agent"] == (0, 0) and lanes["one"] == (0, 1) and lanes["three"] == (0, 1)
    assert lanes["two"][0] == 1 and lanes["two"][1] == 0
    assert [t[0] for t in data["tracks"]] == [f"trace {ROOT[-12:]}", "agent #2"]


def test_hostile_names_and_payloads_are_escaped(tmp_path, capsys):
    t = Trace()
    agent = t.scope(HOSTILE, "agent", 0, 10_000, status="ERROR",
                    data={"k": HOSTILE, "\u2028": "\u2029 & <"})
    t.scope("<marquee>x</marquee>", "tool", 10, 100, agent, data=HOSTILE)
    t.mark(HOSTILE, 50, agent)
    text = _report(tmp_path, capsys, t.bytes(), "--title", HOSTILE)
    page = _Page(text)
    assert page.count("script") == 2  # the data block and the page's script, nothing injected
    assert page.count("img") == 0 and page.count("marquee") == 0
    assert text.count("</script>") == 2 and text.lower().count("<script") == 2
    assert "\u2028" not in text.split('id="data">')[1].split("</script>")[0]
    assert page.data_block["scopes"][0][0] == HOSTILE
    assert page.data_block["marks"][0][0] == HOSTILE
    assert "&lt;/script&gt;" in text


def test_size_is_bounded_and_the_page_says_so(tmp_path, capsys):
    t = Trace()
    agent = t.scope("agent", "agent", 0, 10_000_000)
    for i in range(50):
        t.scope("step", "function", 10 + i * 1000, 500 + i * 1000, agent, data={"x": "y" * 5000})
        t.mark("m", 20 + i * 1000, agent)
    text = _report(tmp_path, capsys, t.bytes(), "--max-scopes", "10", "--max-marks", "3",
                   "--payload-chars", "100")
    page = _Page(text)
    assert len(page.data_block["scopes"]) == 10 and page.count("details", "scope") == 10
    assert len(page.data_block["marks"]) == 3
    assert "the first 10 of 51 scopes" in text and "The first 3 of 50 marks" in text
    assert "more characters)" in text and "y" * 101 not in text
    # the statistics still cover every scope
    assert '<td class="l">step</td><td class="r">50</td>' in text


def test_open_scopes_are_drawn_to_the_end(tmp_path, capsys):
    lines = _constructed().splitlines(keepends=True)
    kept = [ln for ln in lines if not (b'"name":"agent"' in ln and b'"end"' in ln)]
    data = _Page(_report(tmp_path, capsys, b"".join(kept))).data_block
    agent = next(s for s in data["scopes"] if s[0] == "agent")
    assert agent[7] == 1 and agent[2] + agent[3] == data["span"]


def test_unreadable_input_and_unwritable_output(tmp_path, capsys):
    code = cli.main(["report", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "r.html")])
    _, err = capsys.readouterr()
    assert code == 1 and err.strip() == f"nemoflow: error: {tmp_path / 'missing.jsonl'}: no " \
        "such file" and not (tmp_path / "r.html").exists()
    path = _write(tmp_path, "t.jsonl", _constructed())
    code = cli.main(["report", path, "-o", str(tmp_path / "no" / "dir" / "r.html")])
    _, err = capsys.readouterr()
    assert code == 1 and "cannot write" in err and len(err.splitlines()) == 1
    code = cli.main(["report", path, "-o", str(tmp_path / "r.html"), "--max-scopes", "-1"])
    _, err = capsys.readouterr()
    assert code == 1 and "--max-scopes must be 0 or more" in err


def test_several_files_and_stdin(tmp_path):
    a = _write(tmp_path, "a.jsonl", _constructed(1))
    out = tmp_path / "r.html"
    with open(a, "rb") as f:
        proc = subprocess.run([sys.executable, "-m", "nemoflow", "report", "-",
                               _write(tmp_path, "b.jsonl", _constructed(100)), "-o", str(out)],
                              stdin=f, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'data-scopes="20"' in out.read_text()


def _chromium():
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install chromium;"
                    " CI installs it through scripts/report_check.py)")
def test_report_in_headless_chromium(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "report_check.py"),
                           "--no-install", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "report_check: OK" in proc.stdout
    for stem in ("report-agent", "report-hostile"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{stem}.html").stat().st_size > 0


def test_the_data_block_is_valid_json_for_any_string(tmp_path, capsys):
    from nemoflow.report import _json_for_script

    value = {"s": "".join(chr(c) for c in range(0, 0x3000, 7)) + "</script><!--\u2028\u2029"}
    text = _json_for_script(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert orjson.loads(text) == value


def test_top_level_marks_and_a_scope_that_is_its_own_ancestor(tmp_path, capsys):
    t = Trace()
    a = t.scope("a", "agent", 0, 1000)
    t.mark("loose", 10, ROOT)
    b = t.scope("b", "tool", 0, 500, a)
    lines = t.bytes().replace(f'"parent_uuid":"{ROOT}","scope_category":"start"'.encode(),
                              f'"parent_uuid":"{b}","scope_category":"start"'.encode())
    page = _Page(_report(tmp_path, capsys, lines))
    assert len(page.data_block["scopes"]) == 2 and page.count("details", "scope") == 2
    assert [m[0] for m in page.data_block["marks"]] == ["loose"]
    assert page.count("div", "mark-row") == 1
    only_marks = Trace()
    only_marks.mark("m", 0, ROOT)
    data = _Page(_report(tmp_path, capsys, only_marks.bytes())).data_block
    assert data["tracks"] == [["marks", 1]] and len(data["marks"]) == 1
