"""Where encoded requests go: OTLP/HTTP protobuf to a collector, or OTLP/JSON lines to a file.

A transport is used by one exporter's export thread only. ``send(body, deadline, cancel)``
returns when the request was accepted and raises ``ExportFailure`` when it was not by
``deadline`` (a ``time.monotonic()`` value) or when ``cancel`` (a ``threading.Event``) is set.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import http.client
import os
import random
import threading
import time
import urllib.parse

from .._files import check_mode, make_dirs, open_for_writing
from ..atof import AtofExporterMode
from ._json import JsonEncoder
from ._model import InstrumentationScope, Resource
from ._wire import WireEncoder

__all__ = ["ExportFailure", "HttpBinaryTransport", "OtlpJsonFileTransport", "resolve_endpoint",
           "validate_headers"]

RETRYABLE_STATUS = frozenset((429, 502, 503, 504))
_OWN_HEADERS = frozenset(("content-type", "content-length", "content-encoding", "host"))


class ExportFailure(Exception):
    """A request that was not accepted; ``retryable`` says whether trying later may help."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def resolve_endpoint(endpoint: str) -> str:
    """The URL requests are sent to: a bare ``http(s)`` authority gets ``/v1/traces``, a
    trailing ``/`` means the collector root, any other path is used as given."""
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ValueError("endpoint is required and must be nonblank")
    cut = len(endpoint)
    for sep in "?#":
        i = endpoint.find(sep)
        if i != -1:
            cut = min(cut, i)
    head, tail = endpoint[:cut], endpoint[cut:]
    try:
        parts = urllib.parse.urlsplit(head)
    except ValueError:
        return endpoint
    if parts.scheme.lower() in ("http", "https") and parts.netloc and not parts.path:
        return head + "/v1/traces" + tail
    return endpoint


def validate_headers(headers) -> dict:
    """A copy of ``headers`` after checking it is a ``dict[str, str]`` of HTTP-safe, unique
    (ignoring ASCII case) names and values."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict[str, str], not {type(headers).__name__}")
    seen: set = set()
    out = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"headers must be a dict[str, str]; {name!r}: {value!r} is not")
        if not name or any(c in name for c in " \t\r\n:") or not name.isascii():
            raise ValueError(f"invalid header name {name!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} has a line break in its value")
        try:
            value.encode("latin-1")  # what HTTP/1.1 sends: bytes, Latin-1 at most
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r} has a value HTTP cannot carry (text beyond "
                             "Latin-1, e.g. a typographic quote or ellipsis); use ASCII, or "
                             "percent-encode it") from None
        low = name.lower()
        if low in seen:
            raise ValueError(f"header {name!r} is given twice: header names must be unique "
                             "ignoring ASCII case")
        if low in _OWN_HEADERS:
            raise ValueError(f"header {name!r} is set by the transport")
        seen.add(low)
        out[name] = value
    return out


def _version() -> str:
    from ... import __version__

    return __version__


def _retry_after(value, now_wall: float):
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_wall)


class HttpBinaryTransport:
    """OTLP/HTTP protobuf ``POST`` s to a collector over one kept-alive connection.

    Retries 429, 502, 503, 504 and connection errors with exponential backoff and jitter
    (``Retry-After`` honoured) until the deadline; other statuses fail at once.
    """

    wire = "protobuf"

    def __init__(self, endpoint: str, *, headers: dict | None = None,
                 compression: str | None = None, retry_initial_millis: int = 100,
                 retry_max_millis: int = 5000):
        url = resolve_endpoint(endpoint)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http:// or https:// URL, not {endpoint!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"endpoint has an invalid port: {endpoint!r}") from None
        if compression not in (None, "none", "gzip"):
            raise ValueError('compression must be None, "none" or "gzip"')
        for name, value in (("retry_initial_millis", retry_initial_millis),
                            ("retry_max_millis", retry_max_millis)):
            if type(value) is not int or value <= 0:
                raise ValueError(f"{name} must be an int > 0")
        self.endpoint = url
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname
        self._port = port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._gzip = compression == "gzip"
        self._headers = validate_headers(headers)
        self._headers["Content-Type"] = "application/x-protobuf"
        if not any(name.lower() == "user-agent" for name in self._headers):
            self._headers["User-Agent"] = f"nemoflow/{_version()}"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._backoff = (retry_initial_millis / 1000.0, retry_max_millis / 1000.0)
        self._conn: http.client.HTTPConnection | None = None
        self.requests = 0
        self.retries = 0

    def make_encoder(self, resource: Resource, scope: InstrumentationScope):
        return WireEncoder(resource, scope)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is None:
            if self._https:
                import ssl  # only for https endpoints: it is slow to import

                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._conn = conn
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        return conn

    def _drop_connection(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _exchange(self, body: bytes, timeout: float):
        """One request: the response (status, reason, Retry-After, text), or None when a
        kept-alive connection turned out to be closed by the server before answering."""
        conn = self._connection(max(timeout, 0.001))
        reused = conn.sock is not None
        self.requests += 1
        try:
            conn.request("POST", self._target, body=body, headers=self._headers)
            resp = conn.getresponse()
            data = resp.read()  # read in full so the connection can be reused
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            if reused and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                           ConnectionResetError)):
                return None  # the server dropped an idle connection: not a failure
            raise ExportFailure(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if resp.will_close:
            self._drop_connection()
        return resp.status, resp.reason, resp.getheader("Retry-After"), data

    def _post(self, body: bytes, deadline: float) -> None:
        answer = self._exchange(body, deadline - time.monotonic())
        if answer is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExportFailure("timed out before the request could be sent")
            answer = self._exchange(body, left)  # a fresh connection: never None
        status, reason, retry_after, data = answer
        if 200 <= status < 300:
            return
        text = data[:200].decode("utf-8", "replace")
        failure = ExportFailure(f"HTTP {status} {reason}: {text}".rstrip(": "),
                                retryable=status in RETRYABLE_STATUS)
        failure.retry_after = _retry_after(retry_after, time.time())  # type: ignore[attr-defined]
        raise failure

    def send(self, body: bytes, deadline: float, cancel: threading.Event | None = None) -> None:
        """POST ``body``, retrying what can be retried until ``deadline``."""
        if self._gzip:
            body = gzip.compress(body, compresslevel=6)
        backoff, cap = self._backoff
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExportFailure("timed out before the request could be sent")
            try:
                self._post(body, deadline)
                return
            except ExportFailure as failure:
                if not failure.retryable:
                    raise
                wait = getattr(failure, "retry_after", None)
                if wait is None:
                    wait = backoff * random.uniform(0.5, 1.0)
                    backoff = min(backoff * 2, cap)
                if time.monotonic() + wait >= deadline:
                    raise ExportFailure(f"{failure} (gave up: timeout reached)") from None
                self.retries += 1
                if cancel is not None:
                    if cancel.wait(wait):
                        raise ExportFailure(f"{failure} (cancelled at shutdown)") from None
                else:
                    time.sleep(wait)

    def reset_after_fork(self) -> None:
        # The parent's connection is the parent's: forget it without touching its socket.
        self._conn = None

    def close(self) -> None:
        self._drop_connection()

    def __repr__(self):
        return f"<HttpBinaryTransport {self.endpoint}>"


class OtlpJsonFileTransport:
    """Appends one OTLP/JSON line per exported batch to a file.

    ``output_directory``, ``filename`` (with ``{timestamp}`` and ``{pid}``) and ``mode`` work as
    in ``AtofExporterConfig``; the default filename is ``otlp-{timestamp}-{pid}.jsonl``. New
    files get ``file_mode`` and new directories ``dir_mode``; a symbolic link or anything but
    a regular file at the path is refused.
    """

    wire = "json"

    def __init__(self, output_directory: str = ".", filename: str = "",
                 mode: AtofExporterMode | str = AtofExporterMode.Append, *,
                 file_mode: int = 0o600, dir_mode: int = 0o700):
        if isinstance(mode, str):
            try:
                mode = AtofExporterMode(mode)
            except ValueError:
                raise ValueError('mode must be "append" or "overwrite"') from None
        if not isinstance(mode, AtofExporterMode):
            raise TypeError("mode must be an AtofExporterMode")
        if not isinstance(filename, str):
            raise TypeError("filename must be str")
        file_mode = check_mode(file_mode, "file_mode")
        dir_mode = check_mode(dir_mode, "dir_mode")
        pattern = filename or "otlp-{timestamp}-{pid}.jsonl"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = pattern.format(timestamp=stamp, pid=os.getpid())
        self.path = os.path.abspath(os.path.join(os.fspath(output_directory), name))
        make_dirs(os.path.dirname(self.path), dir_mode)
        self._fd: int | None = open_for_writing(self.path, file_mode,
                                                truncate=mode is AtofExporterMode.Overwrite)
        self.requests = 0
        self.retries = 0

    def make_encoder(self, resource: Resource, scope: InstrumentationScope):
        return JsonEncoder(resource, scope)

    def send(self, body: bytes, deadline: float, cancel: threading.Event | None = None) -> None:
        """Write ``body`` and a newline as one line."""
        if self._fd is None:
            raise ExportFailure("the file was closed")
        self.requests += 1
        view = memoryview(body + b"\n")
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise ExportFailure(f"could not write {self.path}: {exc}") from None

    def reset_after_fork(self) -> None:
        pass  # the descriptor is shared with the parent; O_APPEND keeps lines whole

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self):
        return f"<OtlpJsonFileTransport {self.path}>"
