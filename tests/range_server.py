"""A loopback HTTP server with Range support, for tests of data read over the network.

    with RangeServer(folder) as server:     # serves folder's files at server.url + "/name"
        server.fail_next(path_suffix, count, status=500)   # the next COUNT requests for it answer 5xx
        server.requests                      # [(method, path, range header)] seen so far

Implements what object stores and CDNs do for reads: GET and HEAD, ``Range: bytes=a-b`` answered
with 206 and Content-Range, Content-Length always.
"""
from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Tuple


class RangeServer:
    def __init__(self, folder, latency: float = 0.0):
        self.folder, self.latency = Path(folder), float(latency)  # latency: seconds added to every answer
        self.requests: List[Tuple[str, str, str]] = []
        self._failures: Dict[str, List[int]] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                if server.latency:
                    time.sleep(server.latency)
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests.append((self.command, path, self.headers.get("Range", "")))
                    for suffix, plan in server._failures.items():
                        if path.endswith(suffix) and plan[0] > 0:
                            plan[0] -= 1
                            self.send_response(plan[1])
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                file = server.folder / path.lstrip("/")
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = file.stat().st_size
                start, end = 0, size - 1
                spec = self.headers.get("Range")
                if spec and spec.startswith("bytes="):
                    first, _, last = spec[len("bytes="):].partition("-")
                    start = int(first) if first else max(0, size - int(last))
                    end = min(int(last), size - 1) if (first and last) else end
                    if start >= size:  # a range past the end (of a truncated object): 416, as object stores answer
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    with open(file, "rb") as handle:
                        handle.seek(start)
                        self.wfile.write(handle.read(end - start + 1))

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many ranged reads in flight at once (the default backlog of 5 drops them)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def fail_next(self, path_suffix: str, count: int, status: int = 500) -> None:
        with self._lock:
            self._failures[path_suffix] = [count, status]

    def __enter__(self) -> "RangeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
