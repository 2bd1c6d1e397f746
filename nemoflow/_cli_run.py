"""``nemoflow run``: run a Python program traced, as ``python script.py`` / ``python -m`` would.

The exporters come from the options or ``NEMOFLOW_*`` environment variables, the installed
integrations are instrumented, then the program runs in this interpreter with the ``sys.argv``,
``sys.path[0]`` and ``__main__`` Python would give it. Its exit status is preserved and an
exception it does not catch is printed as Python prints it. At exit, after the program's own
exit handlers, everything it emitted is delivered and a summary is printed on stderr.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import contextvars
import os
import sys
import threading

_ENV = {"jsonl": "NEMOFLOW_JSONL", "chrome": "NEMOFLOW_CHROME", "otlp": "NEMOFLOW_OTLP",
        "otlp_json": "NEMOFLOW_OTLP_JSON", "atif": "NEMOFLOW_ATIF",
        "projection": "NEMOFLOW_OTLP_PROJECTION", "service_name": "NEMOFLOW_SERVICE_NAME",
        "summary": "NEMOFLOW_SUMMARY", "instrument": "NEMOFLOW_INSTRUMENT",
        "redact": "NEMOFLOW_REDACT"}
_LIBRARIES = ("openai", "anthropic", "langchain")
_LANGCHAIN_ENV = "NEMOFLOW_RUN_LANGCHAIN"
_SUMMARY_NAME = "nemoflow-run-summary"


class UsageError(Exception):
    """Options that cannot be used: the command stops before the program runs."""


def parser() -> argparse.ArgumentParser:
    """The options of ``nemoflow run`` (the program and its arguments are split off first)."""
    env = ", ".join(f"{v}" for v in _ENV.values())
    p = argparse.ArgumentParser(
        prog="nemoflow run",
        usage="nemoflow run [options] script.py [args ...]\n"
              "       nemoflow run [options] -m module [args ...]",
        description="Run a Python program traced: the exporters chosen below, the installed "
                    "integrations instrumented, a summary on stderr at exit. The program gets "
                    "sys.argv, sys.path[0] and __main__ as with python script.py / python -m; "
                    "its exit status is the command's.",
        epilog=f"Each option can also be set by an environment variable ({env}); an option "
               "given on the command line wins.")
    p.add_argument("-m", dest="module", metavar="MODULE",
                   help="run a library module as a script (the rest are its arguments)")
    p.add_argument("--jsonl", metavar="PATH", help="write ATOF JSONL to PATH")
    p.add_argument("--chrome", metavar="PATH",
                   help="write a Chrome/Perfetto trace to PATH (at exit)")
    p.add_argument("--otlp", metavar="URL",
                   help="send OpenTelemetry spans to an OTLP/HTTP collector "
                   "(e.g. http://127.0.0.1:4318)")
    p.add_argument("--otlp-json", metavar="PATH", help="write OTLP/JSON lines to PATH")
    p.add_argument("--projection", choices=("full", "gen_ai", "openinference"),
                   help="OTLP span attributes (default: full)")
    p.add_argument("--service-name", metavar="NAME",
                   help="OTLP service.name (default: OTEL_SERVICE_NAME, else the program's "
                   "name)")
    p.add_argument("--atif", metavar="PATH", help="write the run's ATIF trajectory to PATH "
                   "(at exit)")
    p.add_argument("--summary", choices=("stats", "tree", "none"),
                   help="printed on stderr at exit: statistics per scope type and name "
                   "(default), the scope tree, or nothing")
    p.add_argument("--instrument", metavar="LIST",
                   help="integrations to instrument: comma-separated names among "
                   f"{', '.join(_LIBRARIES)}, 'auto' (default: every one installed) or 'none'")
    p.add_argument("--redact", action="store_const", const="1",
                   help="redact secrets and personal data in every payload")
    return p


_VALUED = frozenset(("--jsonl", "--chrome", "--otlp", "--otlp-json", "--projection",
                     "--service-name", "--atif", "--summary", "--instrument"))


def split(argv: list):
    """``(options, module, target, arguments)``: the command's options, then what to run."""
    options: list = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest = argv[i + 1:]
            return options, None, (rest[0] if rest else None), rest[1:]
        if arg == "-m":
            if i + 1 >= len(argv):
                raise UsageError("argument -m: expected a module name")
            return options, argv[i + 1], None, argv[i + 2:]
        if arg.startswith("-m") and not arg.startswith("--"):
            return options, arg[2:], None, argv[i + 1:]
        if arg.startswith("-") and arg != "-":
            options.append(arg)
            if arg in _VALUED and i + 1 < len(argv):
                options.append(argv[i + 1])
                i += 1
            i += 1
            continue
        return options, None, arg, argv[i + 1:]
    return options, None, None, []


def _setting(args, key: str):
    value = getattr(args, key)
    if value is None:
        value = os.environ.get(_ENV[key]) or None
    return value


# -- what the run writes -------------------------------------------------------------------

def _file_name(path: str):
    directory, name = os.path.split(os.path.abspath(path))
    if not name:
        raise UsageError(f"{path}: a file name is needed, not a directory")
    return directory, name.replace("{", "{{").replace("}", "}}")


class _Outputs:
    """The exporters of the run, and what to say about them at exit."""

    def __init__(self):
        self.written: list = []  # (what, where)
        self.atif = None
        self.atif_path = None

    def add_jsonl(self, nf, path):
        directory, name = _file_name(path)
        nf.AtofExporter(nf.AtofExporterConfig(directory, name, nf.AtofExporterMode.Overwrite)
                        ).register("nemoflow-run-jsonl")
        self.written.append(("ATOF JSONL", path))

    def add_chrome(self, path, program):
        from .exporters.chrome import ChromeTraceExporter

        ChromeTraceExporter(path, process_name=f"nemoflow run {program}").register(
            "nemoflow-run-chrome")
        self.written.append(("Chrome trace", path))

    def add_otlp(self, nf, projection, service_name, endpoint=None, path=None):
        options: dict = {"service_name": service_name}
        if path is not None:
            directory, name = _file_name(path)
            options.update(transport="otlp_json_file", output_directory=directory,
                           filename=name, mode="overwrite")
        exporter = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(projection, endpoint,
                                                                     **options))
        exporter.register("nemoflow-run-otlp-json" if path else "nemoflow-run-otlp")
        self.written.append(("OTLP/JSON", path) if path else ("OTLP spans", endpoint))

    def add_atif(self, nf, path, program):
        _file_name(path)
        self.atif = nf.AtifExporter("session", program, "0")  # collects; to_atif names it
        self.atif.register("nemoflow-run-atif")
        self.atif_path = path
        self.written.append(("ATIF trajectory", path))

    def finish(self):
        """Write what is written at exit by the command itself (the ATIF trajectory)."""
        if self.atif is None:
            return
        from .cli import to_atif

        try:
            events = [ev.to_dict() for ev in self.atif._events]
            text = to_atif(events)
            with open(self.atif_path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except Exception as exc:  # the program has run: say what was not written
            print(f"nemoflow: could not write the ATIF trajectory {self.atif_path}: {exc}",
                  file=sys.stderr)


# -- integrations ------------------------------------------------------------------------
# A library is instrumented when the program imports it, not before: importing every installed
# SDK up front would cost a program that uses none of them seconds of start-up.

class _Loader:
    """Runs a module, then the hook waiting for it."""

    def __init__(self, loader, hook):
        self._loader = loader
        self._hook = hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        loader = self._loader
        loader.exec_module(module)
        module.__loader__ = loader  # the module keeps its real loader
        if module.__spec__ is not None:
            module.__spec__.loader = loader
        _call(self._hook)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _call(hook) -> None:
    try:
        hook()
    except Exception as exc:  # tracing never breaks the traced program
        print(f"nemoflow: could not instrument: {type(exc).__name__}: {exc}", file=sys.stderr)


class _AfterImport:
    """A meta path finder that calls ``hooks[name]()`` once module ``name`` has been run."""

    def __init__(self, hooks: dict):
        self._hooks = hooks

    def find_spec(self, name, path, target=None):
        hook = self._hooks.pop(name, None)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, hook)
        return spec


def _after_import(hooks: dict) -> None:
    waiting = {}
    for name, hook in hooks.items():
        if name in sys.modules:
            _call(hook)
        else:
            waiting[name] = hook
    if waiting:
        sys.meta_path.insert(0, _AfterImport(waiting))


def _langchain_hooks() -> dict:
    """Every LangChain / LangGraph run gets nemoflow's callback handler, as if it were in the
    run's config: a configure hook, which LangChain applies to every callback manager."""
    var = contextvars.ContextVar("nemoflow_run_langchain", default=None)

    def langchain():
        from langchain_core.tracers.context import register_configure_hook

        from .integrations.langchain import NemoFlowCallbackHandler

        # The environment variable makes LangChain create a handler for a run in any thread
        # or task; one already in the run's callbacks is not added twice.
        os.environ[_LANGCHAIN_ENV] = "1"
        register_configure_hook(var, True, NemoFlowCallbackHandler, _LANGCHAIN_ENV)

    def langgraph():
        # Graphs get the subclass that also marks interrupts and resumes.
        from langchain_core.tracers import context

        from .integrations.langgraph import NemoFlowCallbackHandler

        hooks = context._configure_hooks
        for i, entry in enumerate(hooks):
            if entry[0] is var:
                hooks[i] = (var, True, NemoFlowCallbackHandler, _LANGCHAIN_ENV)

    return {"langchain_core": langchain, "langgraph.callbacks": langgraph}


def _sdk_hook(nf, name):
    return lambda: nf.instrument(name)


def _instrument(nf, spec) -> list:
    spec = (spec or "auto").strip()
    if spec == "none":
        return []
    if spec == "auto":
        names, asked = list(_LIBRARIES), False
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        names = ["langchain" if n == "langgraph" else n for n in names]
        unknown = sorted(set(names) - set(_LIBRARIES))
        if unknown:
            raise UsageError(f"--instrument: unknown integration(s) {', '.join(unknown)} "
                             f"(known: {', '.join(_LIBRARIES)}, langgraph, auto, none)")
        asked = True
    import importlib.util

    hooks: dict = {}
    for name in dict.fromkeys(names):
        module = "langchain_core" if name == "langchain" else name
        if importlib.util.find_spec(module) is None:
            if asked:
                print(f"nemoflow: --instrument {name}: the {module!r} package is not "
                      "installed; nothing to instrument", file=sys.stderr)
            continue
        if name == "langchain":
            hooks.update(_langchain_hooks())
        else:
            hooks[name] = _sdk_hook(nf, name)
    _after_import(hooks)
    return sorted(names)


# -- the summary ---------------------------------------------------------------------------

class _Summary:
    """A buffered subscriber that keeps what the summary needs (not the payloads)."""

    def __init__(self, mode):
        self.mode = mode
        self.lock = threading.Lock()
        self.events: list = []
        self.stats = None
        if mode == "stats":
            from ._cli_stats import Stats

            self.stats = Stats(int)

    def __call__(self, ev):
        kind = ev.kind
        d = {"kind": kind, "uuid": ev.uuid, "parent_uuid": ev.parent_uuid, "name": ev.name}
        if kind == "scope":
            phase = ev.scope_category
            d["scope_category"] = phase
            d["category"] = ev.category
            if phase == "end":
                d["metadata"] = ev.metadata
                if ev.category == "llm" and self.stats is not None:
                    d["data"] = ev.data
                    d["category_profile"] = ev.category_profile
        elif self.stats is None:
            d["data"] = ev.data
        with self.lock:
            if self.stats is not None:
                d["timestamp"] = ev.timestamp_ns
                self.stats.add(d)
            else:
                d["timestamp"] = ev.timestamp
                self.events.append(d)

    def render(self, stream) -> None:
        with self.lock:
            if self.stats is not None:
                result = self.stats.result("total")
                if not result["events"]:
                    stream.write("nemoflow: no events were recorded\n")
                    return
                from ._cli_stats import render

                render(result, 0, stream)
                return
            events = self.events
        if not events:
            stream.write("nemoflow: no events were recorded\n")
            return
        from .cli import summary

        stream.write(summary(events) + "\n")


def _at_exit(nf, summary, outputs, pid, timeout=5.0):
    if os.getpid() != pid:  # a forked child of the program exits: the summary is the parent's
        return
    with contextlib.suppress(Exception):  # what was delivered is still worth summarising
        nf.subscribers.flush(timeout)
    if summary is not None:
        nf.subscribers.deregister(_SUMMARY_NAME)
    outputs.finish()
    stream = sys.stderr
    try:
        if summary is not None:
            stream.write("\n")
            summary.render(stream)
        for what, where in outputs.written:
            stream.write(f"nemoflow: {what}: {where}\n")
        stream.flush()
    except (OSError, ValueError):  # stderr closed by the program
        pass


# -- running the program -----------------------------------------------------------------

def _trim(tb, files):
    """The traceback from the program's first frame on (not this command's, nor runpy's)."""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name not in files and not name.startswith("<frozen runpy"):
            break
        tb = tb.tb_next
    return tb


def _run_script(script: str, arguments: list) -> None:
    import importlib.machinery
    import types
    import zipfile

    path = os.path.abspath(script)
    if not os.path.isfile(path) or zipfile.is_zipfile(path):  # a directory or zip __main__.py
        import runpy

        sys.argv = [script, *arguments]
        sys.path[0] = path
        runpy._run_module_as_main("__main__", alter_argv=False)  # type: ignore[attr-defined]
        return
    with open(path, "rb") as f:
        source = f.read()
    sys.argv = [script, *arguments]
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    main = types.ModuleType("__main__")
    main.__dict__.update({"__file__": path, "__cached__": None, "__builtins__": __builtins__,
                          "__loader__": importlib.machinery.SourceFileLoader("__main__", path),
                          "__spec__": None, "__package__": None})
    sys.modules["__main__"] = main
    code = compile(source, path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _run_module(module: str, arguments: list) -> None:
    import runpy

    sys.argv = ["-m", *arguments]
    sys.path[0] = os.getcwd()
    runpy._run_module_as_main(module, alter_argv=True)  # type: ignore[attr-defined]


def main(argv: list):
    """Run ``nemoflow run ARGV``; the exit status (an int, or a ``SystemExit`` message)."""
    p = parser()
    try:
        options, module, script, arguments = split(argv)
        args = p.parse_args(options)  # -h prints the help and exits here
        if module is None and script is None:
            p.error("give a script to run (nemoflow run script.py ...) or a module (-m module)")
        if module is not None and not module:
            p.error("argument -m: expected a module name")
        if script is not None and not os.path.exists(script):
            print(f"nemoflow run: can't open file {os.path.abspath(script)!r}: [Errno 2] No "
                  "such file or directory", file=sys.stderr)
            return 2
        nf, summary, outputs = _setup(args, module or os.path.basename(script))
    except UsageError as exc:
        p.print_usage(sys.stderr)
        print(f"nemoflow run: error: {exc}", file=sys.stderr)
        return 2

    atexit.register(_at_exit, nf, summary, outputs, os.getpid())
    try:
        if module is not None:
            _run_module(module, arguments)
        else:
            _run_script(script, arguments)
    except SystemExit as exc:
        return exc.code
    except BaseException as exc:
        tb = _trim(exc.__traceback__, {__file__, _runpy_file()})
        exc.__traceback__ = tb  # the default hook prints the exception's own traceback
        sys.excepthook(type(exc), exc, tb)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def _runpy_file() -> str:
    import runpy

    return runpy.__file__


def _setup(args, program: str):
    import nemoflow as nf

    name = program[:-3] if program.endswith(".py") else program
    summary_mode = (_setting(args, "summary") or "stats").strip().lower()
    if summary_mode not in ("stats", "tree", "none"):
        raise UsageError(f"{_ENV['summary']}={summary_mode!r}: stats, tree or none")
    projection = (_setting(args, "projection") or "full").strip()
    if projection not in ("full", "gen_ai", "openinference"):
        raise UsageError(f"{_ENV['projection']}={projection!r}: full, gen_ai or openinference")
    service = (_setting(args, "service_name") or os.environ.get("OTEL_SERVICE_NAME")
               or name)
    if _setting(args, "redact") not in (None, "0", "false", "no"):
        nf.redaction.enable()
    outputs = _Outputs()
    try:
        jsonl = _setting(args, "jsonl")
        if jsonl:
            outputs.add_jsonl(nf, jsonl)
        chrome = _setting(args, "chrome")
        if chrome:
            outputs.add_chrome(chrome, program)
        otlp = _setting(args, "otlp")
        if otlp:
            outputs.add_otlp(nf, projection, service, endpoint=otlp)
        otlp_json = _setting(args, "otlp_json")
        if otlp_json:
            outputs.add_otlp(nf, projection, service, path=otlp_json)
        atif = _setting(args, "atif")
        if atif:
            outputs.add_atif(nf, atif, name)
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    _instrument(nf, _setting(args, "instrument"))
    summary = None
    if summary_mode != "none":
        summary = _Summary(summary_mode)
        nf.subscribers.register(_SUMMARY_NAME, summary, buffered=True)
    return nf, summary, outputs
