"""``nemoflow report``: one self-contained HTML file of a run.

The page holds a timeline of the scopes (one row per track, tracks laid out from the trace tree
as the Chrome exporter does: asyncio tasks and threads that overlap get tracks of their own), the
scope tree with each scope's input and output, the statistics of ``nemoflow summary --stats`` and
the token usage per LLM model. It loads nothing: script and style are inline, and a
Content-Security-Policy forbids every request and every script but the page's own.

A trace is untrusted input: every name and payload is escaped (HTML text, or JSON inside a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as ``\\u003c``…),
and the script builds the timeline with ``textContent``, never ``innerHTML``. The size is
bounded: the timeline and the tree show the first ``max_scopes`` scopes and ``max_marks`` marks
(in file order), payloads are cut at ``payload_chars`` characters, and the page says so; the
statistics cover every event.
"""

from __future__ import annotations

import base64
import hashlib
import html
from datetime import datetime, timezone

import orjson

from ._cli_stats import Stats
from .cli import TraceError, _display, _expand, _progress, _ts_ns, iter_events

__all__ = ["MAX_MARKS", "MAX_SCOPES", "PAYLOAD_CHARS", "build_report"]

MAX_SCOPES = 5000
MAX_MARKS = 5000
PAYLOAD_CHARS = 2000


class _Scope:
    __slots__ = ("uuid", "parent", "name", "cat", "start", "end", "status", "error", "input",
                 "output", "kids", "marks", "track", "level", "index", "open")

    def __init__(self, ev, start, payload_chars):
        self.uuid = ev["uuid"]
        self.parent = ev["parent_uuid"]
        self.name = str(ev["name"])
        self.cat = str(ev["category"])
        self.start = start
        self.end = None
        self.status = ""
        self.error = ""
        self.input = _payload(ev.get("data"), payload_chars)
        self.output = None
        self.kids: list = []
        self.marks: list = []
        self.track = 0
        self.level = 0
        self.index = 0
        self.open = True


def _payload(value, limit: int) -> str | None:
    """A payload as indented JSON, cut at ``limit`` characters (None when there is none)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
                                ).decode()
        except (TypeError, orjson.JSONEncodeError):
            text = repr(value)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit} more characters)"
    return text


class _Collector:
    """Reads events one at a time: statistics over all of them, details of the first scopes."""

    def __init__(self, max_scopes, max_marks, payload_chars):
        self.stats = Stats(_ts_ns)
        self.max_scopes = max_scopes
        self.max_marks = max_marks
        self.payload_chars = payload_chars
        self.scopes: dict = {}  # uuid -> _Scope, in order of start
        self.marks: list = []  # (parent, ts, name, data)
        self.n_scopes = self.n_marks = 0
        self.first = self.last = None

    def add(self, ev: dict) -> None:
        self.stats.add(ev)
        ts = _ts_ns(ev["timestamp"])
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last:
            self.last = ts
        if ev["kind"] == "mark":
            self.n_marks += 1
            if len(self.marks) < self.max_marks:
                self.marks.append((ev["parent_uuid"], ts, str(ev["name"]),
                                   _payload(ev.get("data"), self.payload_chars)))
            return
        if ev["scope_category"] == "start":
            self.n_scopes += 1
            if len(self.scopes) < self.max_scopes and ev["uuid"] not in self.scopes:
                new = self.scopes[ev["uuid"]] = _Scope(ev, ts, self.payload_chars)
                new.index = len(self.scopes) - 1
            return
        scope = self.scopes.get(ev["uuid"])
        if scope is None or scope.end is not None:
            return
        scope.end = max(ts, scope.start)
        scope.open = False
        meta = ev.get("metadata")
        if isinstance(meta, dict):
            status = meta.get("otel.status_code")
            scope.status = status if status in ("OK", "ERROR") else ""
            if status == "ERROR":
                scope.error = str(meta.get("otel.status_description") or "")
        scope.output = _payload(ev.get("data"), self.payload_chars)


def _lay_out(scopes: dict, last: int):
    """Tops (scopes whose parent is not shown) and tracks ``[label, rows, order key]``; sets each
    scope's track and nesting level on it. A scope goes on its parent's track when it lies
    within the parent and after the siblings already there, else on the first of the parent's
    extra tracks it fits on, else on a new one."""
    tops: list = []
    for scope in scopes.values():
        if scope.end is None:
            scope.end = max(last, scope.start)
        parent = scopes.get(scope.parent)
        # A parent starts before its child; linking only such pairs keeps a malformed trace
        # (a scope its own ancestor) from looping.
        if parent is not None and (parent.start, parent.index) < (scope.start, scope.index):
            parent.kids.append(scope)
        else:
            tops.append(scope)

    tracks: list = []  # [label, rows]
    below: dict = {}  # track -> tracks made for scopes on it, drawn right under it

    def new_track(label, under):
        tracks.append([label, 1])
        below.setdefault(under, []).append(len(tracks) - 1)
        return len(tracks) - 1

    def place(siblings, owner_track, owner_start, owner_end, extra, label):
        """Put ``siblings`` (sorted by start) on tracks; ``extra``: [track, end of last]."""
        own_end = owner_start
        placed = []
        for scope in siblings:
            if (owner_track is not None and scope.start >= own_end
                    and owner_start <= scope.start and scope.end <= owner_end):
                track, own_end = owner_track, scope.end
            else:
                for slot in extra:
                    if scope.start >= slot[1]:
                        track, slot[1] = slot[0], scope.end
                        break
                else:
                    n = len(extra) + (1 if owner_track is not None else 0)
                    name = label if n == 0 else f"{label} #{n + 1}"
                    track = new_track(name, owner_track)
                    extra.append([track, scope.end])
            scope.track = track
            placed.append(scope)
        return placed

    groups: dict = {}
    for scope in tops:
        groups.setdefault(scope.parent, []).append(scope)
    stack = []
    for parent, members in groups.items():
        members.sort(key=lambda s: (s.start, -s.end))
        label = "trace" if not parent else f"trace {str(parent)[-12:]}"
        for scope in place(members, None, 0, 0, [], label):
            scope.level = 0
            stack.append(scope)
    while stack:  # explicit stack: a trace may nest deeper than Python recurses
        scope = stack.pop()
        scope.kids.sort(key=lambda s: (s.start, -s.end))
        for kid in place(scope.kids, scope.track, scope.start, scope.end, [], scope.name):
            kid.level = scope.level + 1 if kid.track == scope.track else 0
            rows = tracks[kid.track]
            rows[1] = max(rows[1], kid.level + 1)
            stack.append(kid)

    # Track order: each track followed by the tracks made under it, depth first.
    order: list = []
    todo = list(reversed(below.get(None, [])))
    while todo:
        t = todo.pop()
        order.append(t)
        todo.extend(reversed(below.get(t, [])))
    return tops, tracks, order


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _tree_html(tops: list, loose: list, out: list) -> None:
    """The scope tree as nested ``<details>`` (with the marks not under a shown scope at the
    top level), built without recursion."""
    items = [("open", (scope, 0)) for scope in tops] + [("mark", m) for m in loose]
    items.sort(key=lambda it: it[1][0].start if it[0] == "open" else it[1][1])
    stack: list = list(reversed(items))
    while stack:
        what, scope = stack.pop()
        if what == "close":
            out.append("</div></details>")
            continue
        if what == "mark":
            _, _, name, data = scope
            out.append(f'<div class="mark-row">• {_esc(name)}'
                       + (f' <code>{_esc(data)}</code>' if data is not None else "") + "</div>")
            continue
        scope, depth = scope
        status = "(open)" if scope.open else _esc(scope.status)
        if scope.error:
            status += f": {_esc(scope.error)}"
        cls = "scope err" if scope.status == "ERROR" else "scope"
        out.append(
            f'<details class="{cls}" id="s{scope.index}"{" open" if depth < 2 else ""}>'
            '<summary>'
            f'<span class="cat c-{_esc(scope.cat)}">{_esc(scope.cat)}</span> '
            f'<span class="nm">{_esc(scope.name)}</span> '
            f'<span class="dur">{_ms(scope.end - scope.start)}</span> '
            f'<span class="st">{status}</span></summary><div class="body">')
        for label, text in (("input", scope.input), ("output", scope.output)):
            if text is not None:
                out.append(f'<div class="io"><b>{label}</b><pre>{_esc(text)}</pre></div>')
        items = [("open", (k, depth + 1)) for k in scope.kids]
        items += [("mark", m) for m in scope.marks]
        items.sort(key=lambda it: it[1][0].start if it[0] == "open" else it[1][1])
        stack.append(("close", None))
        stack.extend(reversed(items))


def _table_html(title: str, headers, rows, left: int) -> str:
    head = "".join(f'<th class="{"l" if j < left else "r"}">{_esc(h)}</th>'
                   for j, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if j < left else "r"}">{_esc(c)}</td>'
                                    for j, c in enumerate(cells)) + "</tr>" for cells in rows)
    return (f'<h3>{_esc(title)}</h3><table class="stats"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _json_for_script(value) -> str:
    """JSON that cannot end the ``<script>`` block it is in, nor open a comment or a tag."""
    data = orjson.dumps(value).decode()
    return (data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def build_report(paths, *, title: str | None = None, max_scopes: int = MAX_SCOPES,
                 max_marks: int = MAX_MARKS, payload_chars: int = PAYLOAD_CHARS,
                 on_read=None) -> str:
    """The HTML report of the ATOF JSONL files ``paths`` (read one event at a time)."""
    from ._cli_stats import _tables

    col = _Collector(max_scopes, max_marks, payload_chars)
    for path in paths:
        for ev in iter_events(path, on_read=on_read):
            col.add(ev)
    result = col.stats.result("total")
    first = col.first or 0
    last = col.last or 0
    scopes = col.scopes
    tops, tracks, order = _lay_out(scopes, last)
    loose = [m for m in col.marks if m[0] not in scopes]
    if loose and not tracks:
        tracks.append(["marks", 1])
        order.append(0)
    rank = {t: i for i, t in enumerate(order)}

    marks_js = []
    for mark in col.marks:
        parent = scopes.get(mark[0])
        if parent is not None:
            parent.marks.append(mark)
            marks_js.append([mark[2], mark[1] - first, rank[parent.track], parent.level])
        else:  # under a scope not shown (or the trace's root): on the first track
            marks_js.append([mark[2], mark[1] - first, 0, 0])
    data = {
        "t0": first, "span": max(last - first, 1),
        "tracks": [[tracks[t][0], tracks[t][1]] for t in order],
        "scopes": [[s.name, s.cat, s.start - first, s.end - s.start, rank[s.track], s.level,
                    s.status, 1 if s.open else 0]
                   for s in scopes.values()],
        "marks": marks_js,
    }

    shown, total = len(scopes), col.n_scopes
    notes = []
    if total > shown:
        notes.append(f"The timeline and the tree show the first {shown:,} of {total:,} scopes "
                     "(in file order); the statistics cover all of them.")
    if col.n_marks > len(col.marks):
        notes.append(f"The first {len(col.marks):,} of {col.n_marks:,} marks are shown.")
    notes.append(f"Payloads longer than {payload_chars:,} characters are cut.")

    names = ", ".join(_display(p) for p in paths)
    title = title or f"nemoflow report: {names}"
    when = (datetime.fromtimestamp(first / 1e9, tz=timezone.utc).isoformat(timespec="seconds")
            if col.first is not None else "-")
    errors = result["errors"]
    tables = [_table_html(t, h, rows, 2 if t == "Scopes" else 1) for t, h, rows in
              _tables(result)]
    if not result["models"]:
        tables.append('<h3>LLM models</h3><p class="hint">No LLM calls in the trace.</p>')
    tree: list = []
    _tree_html(tops, loose, tree)

    script = _SCRIPT
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{_esc(title)}</h1>",
        f'<p id="summary" data-scopes="{total}" data-shown="{shown}" '
        f'data-marks="{col.n_marks}" data-events="{result["events"]}">'
        f'{result["events"]:,} events: {total:,} scopes, {col.n_marks:,} marks, '
        f"{errors:,} errors, {_ms(last - first)} from {_esc(when)}</p>",
        "".join(f'<p class="note">{_esc(n)}</p>' for n in notes), "</header>",
        '<section><h2>Timeline</h2><p class="hint">Wheel: zoom, drag: pan, double-click: '
        "reset, click a scope: show it in the tree.</p>"
        '<div id="timeline"><noscript>The timeline needs JavaScript.</noscript></div>'
        '<div id="tip" hidden></div></section>',
        "<section><h2>Statistics</h2>", *tables, "</section>",
        '<section><h2>Scope tree</h2><p class="hint"><button id="expand" type="button">expand'
        ' all</button> <button id="collapse" type="button">collapse all</button></p>'
        '<div id="tree">', *tree, "</div></section>",
        f'<script type="application/json" id="data">{_json_for_script(data)}</script>',
        f"<script>{script}</script></body></html>\n",
    ]
    return "".join(parts)


def add_parser(sub) -> None:
    """The ``report`` subcommand's arguments."""
    text = "write a self-contained HTML report: timeline, scope tree, statistics"
    p = sub.add_parser("report", help=text, description=text + " (opens from disk, loads "
                       "nothing from the network).")
    p.add_argument("paths", nargs="+", metavar="TRACE",
                   help="ATOF JSONL files or glob patterns (- for stdin)")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--title", help="the page title (default: the files' names)")
    p.add_argument("--max-scopes", type=int, default=MAX_SCOPES,
                   help=f"scopes shown in the timeline and tree (default: {MAX_SCOPES})")
    p.add_argument("--max-marks", type=int, default=MAX_MARKS,
                   help=f"marks shown (default: {MAX_MARKS})")
    p.add_argument("--payload-chars", type=int, default=PAYLOAD_CHARS,
                   help=f"characters kept of each input or output (default: {PAYLOAD_CHARS})")
    p.add_argument("--progress", action="store_true", help="show a progress bar on stderr")


def run(args) -> int:
    """``nemoflow report``: write the page; the exit status."""
    for flag in ("max_scopes", "max_marks", "payload_chars"):
        if getattr(args, flag) < 0:
            raise TraceError(f"--{flag.replace('_', '-')} must be 0 or more")
    paths = _expand(args.paths)
    progress = _progress(paths, args.progress)
    try:
        page = build_report(paths, title=args.title, max_scopes=args.max_scopes,
                            max_marks=args.max_marks, payload_chars=args.payload_chars,
                            on_read=progress.advance if progress is not None else None)
    finally:
        if progress is not None:
            progress.close()
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as exc:
        raise TraceError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    return 0


_STYLE = """
body{font:13px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 16px 32px;
color:#1d2330;background:#fff}
h1{font-size:18px;margin:14px 0 4px;word-break:break-all}h2{font-size:15px;margin:22px 0 6px}
h3{font-size:13px;margin:12px 0 4px}.note{color:#8a5300;margin:2px 0}.hint{color:#667;margin:2px 0}
#timeline{position:relative;border:1px solid #ccd;overflow:hidden;user-select:none;cursor:grab}
#timeline svg{display:block}#timeline text{font-size:11px;pointer-events:none}
.lane-label{fill:#334;font-weight:600}.axis{fill:#667}
rect.scope{stroke:#fff;stroke-width:.5}rect.scope.err{stroke:#c00;stroke-width:1.5}
#tip{position:fixed;background:#1d2330;color:#fff;padding:4px 8px;border-radius:3px;
pointer-events:none;max-width:480px;word-break:break-all;font-size:12px;z-index:9}
table.stats{border-collapse:collapse;margin-bottom:8px}
table.stats th,table.stats td{padding:2px 10px;border-bottom:1px solid #e3e5ea}
table.stats th{background:#f2f3f6}.l{text-align:left}.r{text-align:right}
#tree details{margin-left:14px}#tree summary{cursor:pointer;overflow-wrap:anywhere}
#tree .body{border-left:1px dotted #ccd;margin-left:4px;padding-left:4px}
.cat{display:inline-block;min-width:60px;color:#556}.nm{font-weight:600}.dur{color:#556}
.err>summary .st{color:#c00;font-weight:600}.io pre{background:#f6f7f9;margin:2px 0 6px;
padding:4px 6px;max-height:240px;overflow:auto;white-space:pre-wrap;word-break:break-all}
.mark-row{margin-left:14px;color:#6a3d9a}.flash>summary{background:#fff3b0}
"""

# The script reads the data block and draws with DOM methods only (textContent, setAttribute).
_SCRIPT = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = {agent: "#4e79a7", llm: "#f28e2b", tool: "#59a14f", function: "#76b7b2",
    guardrail: "#edc948", retriever: "#b07aa1", embedder: "#ff9da7", reranker: "#9c755f",
    custom: "#bab0ac"};
  var ROW = 18, LABEL = 150, AXIS = 20;
  var box = document.getElementById("timeline"), tip = document.getElementById("tip");
  var top = [], y = AXIS;
  D.tracks.forEach(function (t) { top.push(y); y += t[1] * ROW + 4; });
  var height = y + 4, v0 = 0, v1 = D.span, svg = null;

  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function ms(ns) { return (ns / 1e6).toFixed(3) + " ms"; }
  function tick(ns, range) {  // enough digits to tell the ticks apart
    if (range < 5e4) return (ns / 1e3).toFixed(3) + " µs";
    var digits = Math.max(0, Math.min(6, 3 - Math.floor(Math.log10(range / 5e6))));
    return (ns / 1e6).toFixed(digits) + " ms";
  }
  function draw() {
    var width = Math.max(box.clientWidth, 400), plot = width - LABEL;
    var k = plot / (v1 - v0);
    var s = el("svg", {width: width, height: height, role: "img", "data-span": v1 - v0});
    for (var i = 0; i <= 5; i++) {
      var x = LABEL + plot * i / 5;
      s.appendChild(el("line", {x1: x, x2: x, y1: AXIS - 4, y2: height, stroke: "#eef"}));
      s.appendChild(el("text", {x: x + 2, y: 12, "class": "axis"},
                       tick(v0 + (v1 - v0) * i / 5, v1 - v0)));
    }
    D.scopes.forEach(function (sc, i) {
      var x0 = LABEL + (sc[2] - v0) * k, w = Math.max(sc[3] * k, 1);
      if (x0 > width || x0 + w < LABEL) return;
      var cx = Math.max(x0, LABEL), cw = Math.min(x0 + w, width) - cx;
      var yy = top[sc[4]] + sc[5] * ROW;
      var r = el("rect", {x: cx, y: yy, width: Math.max(cw, 1), height: ROW - 2,
        fill: COLORS[sc[1]] || "#999", "class": sc[6] === "ERROR" ? "scope err" : "scope",
        "data-i": i});
      s.appendChild(r);
      if (cw > 40) {
        var n = Math.floor((cw - 6) / 6.5);
        var label = sc[0].length > n ? sc[0].slice(0, n - 1) + "…" : sc[0];
        s.appendChild(el("text", {x: cx + 3, y: yy + ROW - 6, fill: "#fff"}, label));
      }
    });
    D.marks.forEach(function (m) {
      var x = LABEL + (m[1] - v0) * k;
      if (x < LABEL || x > width) return;
      var yy = top[m[2]] + m[3] * ROW;
      s.appendChild(el("path", {d: "M" + x + " " + yy + "l4 4l-4 4l-4 -4z", fill: "#6a3d9a",
        "class": "mark"}, undefined)).appendChild(el("title", {}, m[0]));
    });
    s.appendChild(el("rect", {x: 0, y: 0, width: LABEL, height: height, fill: "#fafbfc"}));
    D.tracks.forEach(function (t, i) {
      var label = t[0].length > 22 ? t[0].slice(0, 21) + "…" : t[0];
      s.appendChild(el("text", {x: 4, y: top[i] + 13, "class": "lane-label"}, label))
        .appendChild(el("title", {}, t[0]));
    });
    if (svg) box.replaceChild(s, svg); else box.appendChild(s);
    svg = s;
  }
  function timeAt(px) {
    var plot = Math.max(box.clientWidth, 400) - LABEL;
    return v0 + (px - LABEL) / plot * (v1 - v0);
  }
  box.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = box.getBoundingClientRect(), t = timeAt(e.clientX - r.left);
    var f = e.deltaY < 0 ? 0.8 : 1.25, a = t - (t - v0) * f, b = t + (v1 - t) * f;
    if (b - a < 1000) return;
    v0 = Math.max(a, -D.span * 0.05); v1 = Math.min(b, D.span * 1.05); draw();
  }, {passive: false});
  var drag = null;
  box.addEventListener("mousedown", function (e) {
    drag = {x: e.clientX, a: v0, b: v1, moved: false};
  });
  window.addEventListener("mouseup", function () { setTimeout(function () { drag = null; }, 0); });
  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    var plot = Math.max(box.clientWidth, 400) - LABEL;
    var dt = (e.clientX - drag.x) / plot * (drag.b - drag.a);
    if (Math.abs(e.clientX - drag.x) > 2) drag.moved = true;
    v0 = drag.a - dt; v1 = drag.b - dt; draw();
  });
  box.addEventListener("dblclick", function () { v0 = 0; v1 = D.span; draw(); });
  box.addEventListener("mousemove", function (e) {
    var i = e.target.getAttribute && e.target.getAttribute("data-i");
    if (i === null || i === undefined) { tip.hidden = true; return; }
    var sc = D.scopes[+i];
    tip.textContent = sc[0] + " [" + sc[1] + "] " + ms(sc[3]) + (sc[6] ? " " + sc[6] : "") +
      (sc[7] ? " (open)" : "");
    tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px";
    tip.hidden = false;
  });
  box.addEventListener("mouseleave", function () { tip.hidden = true; });
  box.addEventListener("click", function (e) {
    if (drag && drag.moved) return;
    var i = e.target.getAttribute && e.target.getAttribute("data-i");
    if (i === null || i === undefined) return;
    var node = document.getElementById("s" + i);
    if (!node) return;
    for (var p = node; p; p = p.parentElement) if (p.tagName === "DETAILS") p.open = true;
    node.scrollIntoView({block: "center"});
    node.classList.add("flash");
    setTimeout(function () { node.classList.remove("flash"); }, 1500);
  });
  function all(open) {
    document.querySelectorAll("#tree details").forEach(function (d) { d.open = open; });
  }
  document.getElementById("expand").addEventListener("click", function () { all(true); });
  document.getElementById("collapse").addEventListener("click", function () { all(false); });
  window.addEventListener("resize", draw);
  draw();
  document.body.setAttribute("data-ready", "1");
})();
"""
