"""The files nemoflow writes: never another's file, whole lines only, every loss counted.

Failed rotation and closed sinks (never a descriptor number the application may own), rotation
across forked processes, partial writes on a full disk, and the file policy (private modes, no
symbolic links, no truncation of a file nemoflow was not told to truncate).
"""

from __future__ import annotations

import errno
import glob
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import pytest

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def read_lines(path):
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1] if text else []


def _backend_env(nf):
    env = dict(os.environ)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    return env


def _marks(nf, prefix, n, pad=40):
    for i in range(n):
        nf.mark(f"{prefix}-{i}", data={"pad": "x" * pad})


def _exporter(nf, directory, **config):
    ex = nf.AtofExporter(nf.AtofExporterConfig(output_directory=str(directory),
                                               filename="trace.jsonl", **config))
    ex.register("files")
    return ex


def _names_in(directory):
    names = []
    for path in glob.glob(os.path.join(directory, "trace.jsonl*")):
        names += [json.loads(line)["name"] for line in read_lines(path)]
    return names


def _take_number(fd, path):
    # The application's next open() gets the lowest free number; make sure it is ``fd``.
    app = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if app != fd:
        os.dup2(app, fd)
        os.close(app)
    return fd


# -- descriptors: never one the sink no longer owns --------------------------------------------

def test_failed_rotation_never_writes_into_the_applications_file(nf, tmp_path):
    logs = tmp_path / "logs"
    # each line is over half of max_bytes: every batch is due for rotation
    ex = _exporter(nf, logs, max_bytes=2000, backup_count=10)
    try:
        _marks(nf, "before", 10, pad=1000)
        nf.subscribers.flush()
        old_fd = ex._sink.fd
        shutil.rmtree(logs)  # log cleanup takes the file and its directory
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _marks(nf, "lost", 10, pad=1000)  # due for rotation: no file can be created
            nf.subscribers.flush()
            app = _take_number(old_fd, tmp_path / "app.txt")
            try:
                _marks(nf, "lost-too", 10, pad=1000)
                nf.subscribers.flush()
                os.write(app, b"the application's own data\n")  # its descriptor still works
            finally:
                os.close(app)
        assert (tmp_path / "app.txt").read_bytes() == b"the application's own data\n"
        assert sum("could not write" in str(w.message) for w in caught) == 1
        stats = nf.diagnostics()["exporters"]["files"]
        assert stats["events"] == 10 and stats["lost"] == 20 and stats["errors"] >= 2
        assert stats["lost_bytes"] > 0
        with pytest.raises(OSError) as info:
            ex.force_flush()
        assert info.value.errno == errno.ENOENT
        logs.mkdir()  # writable again: the trace takes up from the next batch
        _marks(nf, "resumed", 5, pad=1000)
        ex.force_flush()
        assert sorted(_names_in(logs)) == [f"resumed-{i}" for i in range(5)]
        assert ex.stats()["events"] == 15 and ex.stats()["lost"] == 20
    finally:
        ex.shutdown()


def test_rotation_after_the_file_was_removed_starts_a_new_file(nf, tmp_path):
    ex = _exporter(nf, tmp_path, max_bytes=2000, backup_count=20)
    try:
        _marks(nf, "before", 10, pad=1000)
        nf.subscribers.flush()
        os.unlink(tmp_path / "trace.jsonl")
        _marks(nf, "after", 10, pad=1000)
        ex.force_flush()
        after = sorted(name for name in _names_in(tmp_path) if name.startswith("after"))
        assert after == sorted(f"after-{i}" for i in range(10))
        assert ex.stats()["lost"] == 0 and ex.stats()["errors"] == 0
    finally:
        ex.shutdown()


def test_a_shut_down_exporter_holds_no_descriptor(nf, tmp_path):
    ex = _exporter(nf, tmp_path)
    _marks(nf, "kept", 3)
    ex.shutdown()
    assert ex._sink.fd == -1  # the number it closed may be the application's next file
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        ex.register("files")
    assert len(read_lines(tmp_path / "trace.jsonl")) == 3


def test_a_descriptor_closed_behind_the_sinks_back_is_let_go(nf, tmp_path):
    ex = _exporter(nf, tmp_path)
    try:
        fd = ex._sink.fd
        os.close(fd)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            _marks(nf, "lost", 2)
            nf.subscribers.flush()
        assert ex._sink.fd == -1  # the number may be the application's by now
        _marks(nf, "kept", 2)  # the exporter opens its own file again
        nf.subscribers.flush()
        assert ex.stats()["lost"] == 2 and ex.stats()["events"] == 2
        names = [json.loads(line)["name"] for line in read_lines(tmp_path / "trace.jsonl")]
        assert names == ["kept-0", "kept-1"]
    finally:
        ex.shutdown()


# -- rotation across forked processes ----------------------------------------------------------

def _child_work(nf, ex, prefix, n):
    # The body of a forked child: write in many small batches (many rotations), then check the
    # child's own counts.
    for i in range(n):
        nf.mark(f"{prefix}-{i}", data={"pad": "x" * 60})
        if i % 20 == 19:
            nf.subscribers.flush()
    ex.force_flush()
    stats = ex.stats()
    if stats["events"] != n or stats.get("lost") or stats["errors"]:
        raise AssertionError(f"{prefix}: {stats}")


@needs_fork
def test_rotation_in_forked_processes_loses_nothing(nf, tmp_path):
    ex = _exporter(nf, tmp_path, max_bytes=2000, backup_count=10_000)
    n, pids, procs = 200, [], []
    try:
        for w in range(3):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    _child_work(nf, ex, f"fork{w}", n)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        ctx = multiprocessing.get_context("fork")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            for w in range(2):
                proc = ctx.Process(target=_child_work, args=(nf, ex, f"mp{w}", n))
                proc.start()
                procs.append(proc)
        _child_work(nf, ex, "parent", n)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
        ex.force_flush()
        assert ex.stats()["events"] == n and not ex.stats().get("lost")
    finally:
        ex.shutdown()
    files = glob.glob(str(tmp_path / "trace*.jsonl*"))
    names = []
    for path in files:
        names += [json.loads(line)["name"] for line in read_lines(path)]
    expected = [f"{p}-{i}" for p in ("fork0", "fork1", "fork2", "mp0", "mp1", "parent")
                for i in range(n)]
    assert sorted(names) == sorted(expected)  # every line present, exactly once
    children = {p for p in os.listdir(tmp_path) if p.startswith("trace.") and
                p.split(".")[1].isdigit()}
    assert {p.split(".")[1] for p in children} == {str(p) for p in pids + [p.pid for p in procs]}


# -- a full disk: whole lines only, and counted ------------------------------------------------

def test_a_full_disk_leaves_whole_lines_and_counts_the_rest(nf, tmp_path):
    limit = 6000
    script = textwrap.dedent(f"""
        import json, resource, signal
        import nemoflow as nf
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() says EFBIG
        ex = nf.AtofExporter(nf.AtofExporterConfig(output_directory={str(tmp_path)!r},
                                                   filename="trace.jsonl"))
        ex.register("jsonl")
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        for batch in range(4):
            for i in range(25):
                nf.mark(f"m-{{batch}}-{{i}}", data={{"pad": "y" * (i * 7)}})
            nf.subscribers.flush()
        stats = nf.diagnostics()["exporters"]["jsonl"]
        try:
            ex.force_flush()
            stats["raised"] = None
        except OSError as exc:
            stats["raised"] = exc.errno
        print(json.dumps(stats))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_backend_env(nf),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    path = tmp_path / "trace.jsonl"
    raw = path.read_bytes()
    assert len(raw) <= limit and raw.endswith(b"\n")
    lines = read_lines(path)
    for line in lines:
        json.loads(line)  # every line valid: no half line left behind
    assert stats["events"] == len(lines) > 0
    assert stats["bytes"] == len(raw)
    assert stats["lost"] == 100 - len(lines)
    assert stats["lost_bytes"] > 0 and stats["errors"] >= 1
    assert stats["raised"] == errno.EFBIG
    assert proc.stderr.count("RuntimeWarning: nemoflow: exporter 'jsonl' could not write") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sets a pipe's size")
def test_a_cut_line_that_cannot_be_taken_back_is_ended_before_the_next_batch(nf):
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)  # a full pipe answers EAGAIN after a partial write
    sink = nf._core.LineSink("pipe", write_end)
    nf._core.attach(sink)
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            _marks(nf, "first", 40)  # more than the pipe holds: the last line is cut
            nf.subscribers.flush()
            first = os.read(read_end, 1 << 16)
            _marks(nf, "second", 3)
            nf.subscribers.flush()
        second = os.read(read_end, 1 << 16)
    finally:
        nf._core.detach(sink)
        os.close(read_end)
        os.close(write_end)
    assert not first.endswith(b"\n")  # a pipe cannot be truncated
    lines = (first + second).split(b"\n")[:-1]
    whole = [json.loads(line)["name"] for line in lines[:-4]]
    assert whole == [f"first-{i}" for i in range(len(whole))]
    with pytest.raises(ValueError):
        json.loads(lines[-4])  # the cut line, ended by a newline of its own
    assert [json.loads(line)["name"] for line in lines[-3:]] == ["second-0", "second-1",
                                                                  "second-2"]
    stats = sink.stats()
    assert stats["events"] == len(whole) + 3 and stats["lost"] == 40 - len(whole)
    assert stats["errors"] >= 1


# -- the file policy ---------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_files_are_private_by_default(nf, tmp_path, umask_022):
    ex = _exporter(nf, tmp_path / "a" / "b")
    chrome = nf.exporters.ChromeTraceExporter(tmp_path / "c" / "run.json")
    try:
        chrome.register("chrome")
        nf.mark("m")
        ex.force_flush()
        chrome.force_flush()
        assert _mode(ex.path) == 0o600
        assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "b") == 0o700
        assert _mode(chrome.path) == 0o600 and _mode(tmp_path / "c") == 0o700
    finally:
        ex.shutdown()
        chrome.shutdown()


def test_modes_are_configurable(nf, tmp_path, umask_022):
    ex = _exporter(nf, tmp_path / "shared", file_mode=0o640, dir_mode=0o750, max_bytes=500)
    chrome = nf.exporters.ChromeTraceExporter(tmp_path / "c" / "run.json", file_mode=0o644,
                                              dir_mode=0o755)
    try:
        _marks(nf, "m", 5, pad=300)  # two lines are over max_bytes
        nf.subscribers.flush()
        _marks(nf, "m", 5, pad=300)
        ex.force_flush()
        chrome.force_flush()
        assert _mode(ex.path) == 0o640 and _mode(tmp_path / "shared") == 0o750
        assert _mode(ex.path + ".1") == 0o640  # rotation creates files by the same rule
        assert _mode(chrome.path) == 0o644 and _mode(tmp_path / "c") == 0o755
    finally:
        ex.shutdown()
        chrome.shutdown()
    with pytest.raises(TypeError):
        nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), file_mode="0600"))
    with pytest.raises(ValueError):
        nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), dir_mode=0o10000))
    with pytest.raises(ValueError):
        nf.exporters.ChromeTraceExporter(tmp_path / "x.json", file_mode=-1)


@pytest.mark.parametrize("mode", ["Append", "Overwrite"])
def test_a_symlink_at_the_path_is_refused(nf, tmp_path, mode):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (tmp_path / "trace.jsonl").symlink_to(victim)
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "nowhere")
    for name in ("trace.jsonl", "dangling.jsonl"):
        config = nf.AtofExporterConfig(str(tmp_path), name, getattr(nf.AtofExporterMode, mode))
        with pytest.raises(nf.exporters.UnsafeFileError) as info:
            nf.AtofExporter(config)
        assert isinstance(info.value, OSError) and isinstance(info.value, nf.NemoFlowError)
        assert info.value.errno == errno.ELOOP and "symbolic link" in str(info.value)
    assert victim.read_bytes() == b"precious\n"
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(nf.exporters.UnsafeFileError):
        nf.exporters.ChromeTraceExporter(tmp_path / "trace.jsonl")


def test_what_is_not_a_regular_file_is_refused(nf, tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that a plain open does not block
    try:
        for name in ("dir.jsonl", "fifo.jsonl"):
            with pytest.raises(nf.exporters.UnsafeFileError, match="not a regular file"):
                nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), name))
            with pytest.raises(nf.exporters.UnsafeFileError):
                nf.exporters.ChromeTraceExporter(tmp_path / name)
    finally:
        os.close(reader)


def test_existing_files_are_truncated_only_under_overwrite(nf, tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_bytes(b'{"earlier":1}\n')
    os.chmod(path, 0o644)
    ex = nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), "trace.jsonl"))
    ex.shutdown()
    assert path.read_bytes() == b'{"earlier":1}\n'
    assert _mode(path) == 0o644  # not ours to change
    ex = nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), "trace.jsonl",
                                               nf.AtofExporterMode.Overwrite))
    ex.shutdown()
    assert path.read_bytes() == b""


def test_rotation_never_writes_through_a_link_planted_at_the_path(nf, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    ex = _exporter(nf, tmp_path, max_bytes=1500)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _marks(nf, "a", 1, pad=800)
            nf.subscribers.flush()
            os.unlink(ex.path)
            os.symlink(victim, ex.path)
            _marks(nf, "b", 10, pad=800)  # every batch is due for rotation
            nf.subscribers.flush()
        assert victim.read_bytes() == b"precious\n"
        assert os.path.islink(ex.path)
        assert ex.stats()["lost"] == 10
        assert any("did not create" in str(w.message) for w in caught)
    finally:
        ex.shutdown()


def test_chrome_refuses_a_link_planted_after_construction(nf, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    chrome = nf.exporters.ChromeTraceExporter(tmp_path / "run.json")
    chrome.register("chrome")
    try:
        nf.mark("m")
        os.symlink(victim, chrome.path)
        with pytest.raises(nf.exporters.UnsafeFileError):
            chrome.force_flush()
        assert victim.read_bytes() == b"precious\n"
        assert chrome.stats()["errors"] == 1
        assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
        os.unlink(chrome.path)
    finally:
        chrome.shutdown()
    assert _mode(chrome.path) == 0o600
