"""Load `nemoflow report` pages in headless Chromium and check what a reader would see.

    python scripts/report_check.py [--out DIR] [--no-install]

Two reports are made: one of the example agent (examples/agent.py, run here: asyncio tasks and a
worker thread), one of a hostile trace whose names and payloads try to close the script block,
inject tags and load images. Each page is opened from disk through the DevTools protocol (a
small standard-library WebSocket client); the check fails on a JavaScript exception, a console
or log error (a Content-Security-Policy violation is one), any request other than the page
itself, an injected element or a changed title, or a number of drawn scopes that differs from
the trace's. A PNG screenshot of each page is written to DIR (default `.ci/artifacts/`).

Chromium comes from the Debian packages: when no browser is found and the script runs as root,
it installs the `chromium` package with apt-get first (`--no-install` turns that off).
Exit status: 0 all checks passed, 1 a check failed, 3 no browser could be found or installed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NO_BROWSER = 3

HOSTILE = "</script><script>document.title='pwned'</script><img src=x onerror=alert(1)>"


def find_browser(install: bool) -> str | None:
    """The path of a Chromium binary, installing the Debian package when allowed."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, timeout=900).returncode:
            return None
    return shutil.which("chromium")


# -- a minimal WebSocket client (RFC 6455: text frames, client-side masking) ----------------

class WebSocket:
    def __init__(self, url: str, timeout: float):
        assert url.startswith("ws://"), url
        host_port, _, path = url[5:].partition("/")
        host, _, port = host_port.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"WebSocket handshake refused: {status!r}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping / pong: not used by DevTools
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """Commands and events of one page target."""

    def __init__(self, url: str, timeout: float):
        self.ws = WebSocket(url, timeout)
        self.next_id = 0
        self.events: list = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, deadline: float) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(f"no {method} before the deadline")


def start_browser(binary: str, profile: str, timeout: float):
    """Headless Chromium with DevTools on a free loopback port; (process, http base URL)."""
    proc = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--metrics-recording-only",
         "--hide-scrollbars", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("DevTools listening on ws://"):
            port = line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
            return proc, f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError("Chromium did not start its DevTools endpoint")


def check_page(base: str, html_path: Path, png_path: Path, expected: dict,
               timeout: float) -> list:
    """Open one report; the problems found (empty when the page is as expected)."""
    new = urllib.request.Request(f"{base}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(new, timeout=timeout) as r:
        target = json.loads(r.read())
    tools = DevTools(target["webSocketDebuggerUrl"], timeout)
    problems = []
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        tools.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000,
                   deviceScaleFactor=1, mobile=False)
        url = html_path.resolve().as_uri()
        deadline = time.monotonic() + timeout
        tools.call("Page.navigate", url=url)
        tools.wait_for("Page.loadEventFired", deadline)
        time.sleep(0.3)  # late console messages, a stray timer
        state = tools.call("Runtime.evaluate", returnByValue=True, expression="""({
            ready: document.body.getAttribute("data-ready"),
            title: document.title,
            rects: document.querySelectorAll("#timeline rect.scope").length,
            marks: document.querySelectorAll("#timeline .mark").length,
            tree: document.querySelectorAll("#tree details.scope").length,
            tracks: document.querySelectorAll("#timeline .lane-label").length,
            scripts: document.scripts.length,
            injected: document.querySelectorAll("img, iframe, object, embed").length,
            scopes: +document.getElementById("summary").dataset.scopes,
            tables: document.querySelectorAll("table.stats tbody tr").length,
            models: [...document.querySelectorAll("table.stats")].map(
                t => t.previousElementSibling.textContent),
        })""")["result"]["value"]
        shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        png_path.write_bytes(base64.b64decode(shot["data"]))
        # Zoom in with the wheel: the time axis must then span less.
        zoom = tools.call("Runtime.evaluate", returnByValue=True, expression="""(() => {
            const span = () => +document.querySelector("#timeline svg").dataset.span;
            const box = document.getElementById("timeline"), r = box.getBoundingClientRect();
            const before = span();
            for (let i = 0; i < 5; i++)
                box.dispatchEvent(new WheelEvent("wheel", {deltaY: -100, bubbles: true,
                    cancelable: true, clientX: r.left + r.width / 2, clientY: r.top + 30}));
            const after = span();
            box.dispatchEvent(new MouseEvent("dblclick", {bubbles: true}));
            return {before, after, reset: span()};
        })()""")["result"]["value"]
    finally:
        tools.ws.close()
    for ev in tools.events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append(f"JavaScript exception: {params['exceptionDetails'].get('text')} "
                            f"{params['exceptionDetails'].get('exception', {}).get('description')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"log error: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            requested = params["request"]["url"]
            if requested != url:
                problems.append(f"network request: {requested}")
        elif method == "Page.javascriptDialogOpening":
            problems.append(f"dialog opened: {params.get('message')}")
    if not zoom["after"] < 0.5 * zoom["before"] or zoom["reset"] != zoom["before"]:
        problems.append(f"wheel zoom did not zoom and double-click reset: {zoom}")
    if state["ready"] != "1":
        problems.append("the page script did not finish (body has no data-ready)")
    if state["injected"] or state["scripts"] != 2:
        problems.append(f"injected content: {state['injected']} elements, "
                        f"{state['scripts']} scripts (expected 2)")
    if "pwned" in state["title"]:
        problems.append(f"the title was changed: {state['title']!r}")
    for key, want in expected.items():
        if state[key] != want:
            problems.append(f"{key}: {state[key]} shown, {want} expected")
    print(f"  {html_path.name}: {state['rects']} scopes drawn on {state['tracks']} tracks, "
          f"{state['tree']} in the tree, {state['marks']} marks, {state['tables']} table rows; "
          f"screenshot {png_path}")
    return problems


def count(trace: Path) -> dict:
    """Scopes and marks in a trace file, counted independently of nemoflow."""
    scopes = marks = 0
    for line in trace.read_text().splitlines():
        ev = json.loads(line)
        if ev["kind"] == "mark":
            marks += 1
        elif ev["scope_category"] == "start":
            scopes += 1
    return {"scopes": scopes, "marks": marks}


def hostile_trace(path: Path) -> None:
    """A trace whose every string tries to break out of the page."""
    root = "00000000-0000-7000-8000-000000000000"
    lines = []
    for i, (name, cat) in enumerate([(HOSTILE, "agent"), ("<b>tool</b>", "tool"),
                                     ("--><!--", "llm")]):
        uuid = f"00000000-0000-7000-8000-{i + 1:012d}"
        parent = root if i == 0 else "00000000-0000-7000-8000-000000000001"
        for phase, t, data, meta in (
                ("start", i, {"q": HOSTILE, "u\u2028": "\u2029"}, None),
                ("end", 10 - i, f"<style>*{{display:none}}</style>{HOSTILE}",
                 {"otel.status_code": "ERROR", "otel.status_description": HOSTILE})):
            lines.append({"atof_version": "0.1", "attributes": [], "category": cat,
                          "category_profile": {"model_name": HOSTILE} if cat == "llm" else None,
                          "data": data, "data_schema": None, "kind": "scope", "metadata": meta,
                          "name": name, "parent_uuid": parent, "scope_category": phase,
                          "timestamp": f"2026-01-01T00:00:00.{t:06d}000+00:00", "uuid": uuid})
    lines.append({"atof_version": "0.1", "category": None, "category_profile": None,
                  "data": {"x": HOSTILE}, "data_schema": None, "kind": "mark",
                  "metadata": None, "name": HOSTILE, "parent_uuid": lines[0]["uuid"],
                  "timestamp": "2026-01-01T00:00:00.000005000+00:00",
                  "uuid": "00000000-0000-7000-8000-000000000099"})
    lines.sort(key=lambda ev: ev["timestamp"])
    path.write_text("".join(json.dumps(ev) + "\n" for ev in lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / ".ci" / "artifacts"),
                        help="where the screenshots and reports go")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install Chromium when it is missing")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    binary = find_browser(not args.no_install)
    if binary is None:
        print("report_check: no Chromium found (install the Debian package `chromium`)",
              file=sys.stderr)
        return NO_BROWSER
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nemoflow-report-"))
    try:
        agent_trace = work / "agent.jsonl"
        subprocess.run([sys.executable, str(ROOT / "examples" / "agent.py"), str(agent_trace)],
                       check=True, stdout=subprocess.DEVNULL, timeout=120, cwd=work)
        bad_trace = work / "hostile.jsonl"
        hostile_trace(bad_trace)
        pages = []
        for trace, stem in ((agent_trace, "report-agent"), (bad_trace, "report-hostile")):
            page = out / f"{stem}.html"
            subprocess.run([sys.executable, "-m", "nemoflow", "report", str(trace), "-o",
                            str(page)], check=True, timeout=120, cwd=ROOT)
            n = count(trace)
            pages.append((page, out / f"{stem}.png", {"rects": n["scopes"], "tree": n["scopes"],
                                                      "scopes": n["scopes"],
                                                      "marks": n["marks"]}))
        proc, base = start_browser(binary, str(work / "profile"), args.timeout)
        problems = []
        try:
            print(f"report_check: {binary} ({base})")
            for page, png, expected in pages:
                problems += [f"{page.name}: {p}" for p in
                             check_page(base, page, png, expected, args.timeout)]
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for problem in problems:
        print(f"report_check: FAIL {problem}", file=sys.stderr)
    if not problems:
        print("report_check: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
