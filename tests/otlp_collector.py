"""A loopback OTLP/HTTP collector for tests: a stdlib HTTP server that decodes every
``ExportTraceServiceRequest`` and answers from a script (200 by default)."""

from __future__ import annotations

import gzip
import http.server
import threading
import time


class Collector:
    """Records ``(path, headers, request, monotonic time)`` per POST."""

    def __init__(self, otlp_ok=True):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest as Request,
        )
        self.requests: list = []
        self.script: list = []  # (status, headers) answered before the default 200
        self.connections = 0
        self.silent_close = False
        self.lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with collector.lock:
                    collector.connections += 1

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with collector.lock:
                    collector.requests.append(
                        (self.path, dict(self.headers), Request.FromString(body),
                         time.monotonic()))
                    status, headers = collector.script.pop(0) if collector.script else (200, {})
                    silent_close = collector.silent_close
                out = b"" if status == 200 else b"try later"
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                if silent_close:  # as a server dropping an idle keep-alive connection
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def spans(self):
        with self.lock:
            return [s for _, _, req, _ in self.requests for rs in req.resource_spans
                    for ss in rs.scope_spans for s in ss.spans]

    def resource_spans(self):
        with self.lock:
            return [rs for _, _, req, _ in self.requests for rs in req.resource_spans]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
