"""A loopback HTTP proxy that injects faults, for tests of data read over the network.

    with FaultProxy(upstream.url) as proxy:            # proxy.url stands for the upstream (RangeServer, moto)
        proxy.inject(path_suffix, "reset", count)       # the next COUNT requests for it: RST before any byte
        proxy.inject(path_suffix, "reset_mid", count)   # headers and half the body, then RST
        proxy.inject(path_suffix, "status", count, status=503)   # an empty 5xx, the connection kept
        proxy.inject(path_suffix, "stall", count, seconds=5)     # no answer for 5 s, then close
        proxy.inject(path_suffix, "stall_mid", count, seconds=5) # headers and half the body, then 5 s of nothing
        proxy.inject(path_suffix, "truncate", count)    # the whole Content-Length announced, half the body sent
        proxy.delete_after(path_suffix, count, delete)  # delete() once COUNT answers for it have gone out
        proxy.latency = 0.05                            # seconds before each request goes upstream
        proxy.requests, proxy.bytes_sent                # [(method, path, range)] and body bytes sent so far

``GET /__fault_proxy__/stats`` answers {"requests": n, "bytes_sent": b} as JSON (not counted), for a
proxy in another process (``benches/remote_servers.py``).

It parses each request of a keep-alive connection (request line, headers, a Content-Length body:
reads send none), forwards it upstream over a connection of its own and sends the answer back with
its Content-Length, so faults hit one request, not a connection's worth. COUNT may be large: a
fault that never stops. Stalls end early when the proxy closes.
"""
from __future__ import annotations

import http.client
import json
import socket
import socketserver
import struct
import threading
from typing import Callable, Dict, List, Tuple
from urllib.parse import urlsplit

STATS_PATH = "/__fault_proxy__/stats"
FAULTS = ("reset", "reset_mid", "status", "stall", "stall_mid", "truncate")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class FaultProxy:
    def __init__(self, upstream: str, latency: float = 0.0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port or 80)
        self.latency = float(latency)
        self.requests: List[Tuple[str, str, str]] = []
        self.bytes_sent = 0  # response body bytes sent to clients (not counting faulted answers' halves)
        self._faults: Dict[str, list] = {}  # suffix -> [count left, kind, status, seconds]
        self._deletions: Dict[str, list] = {}  # suffix -> [answers left before deleting, delete]
        self._lock = threading.Lock()
        self._closing = threading.Event()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256  # many ranged reads in flight at once

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ what tests set

    def inject(self, path_suffix: str, kind: str, count: int = 1, *, status: int = 500, seconds: float = 5.0) -> None:
        """The next ``count`` requests whose path ends with ``path_suffix`` get fault ``kind`` (``FAULTS``)."""
        if kind not in FAULTS:
            raise ValueError(f"FaultProxy.inject: kind must be one of {FAULTS}, not {kind!r}")
        with self._lock:
            self._faults[path_suffix] = [int(count), kind, int(status), float(seconds)]

    def delete_after(self, path_suffix: str, count: int, delete: Callable[[], None]) -> None:
        """Call ``delete()`` (remove the object upstream) right after the ``count``-th answer for ``path_suffix``."""
        with self._lock:
            self._deletions[path_suffix] = [int(count), delete]

    def clear(self) -> None:
        """No more faults or deletions pending."""
        with self._lock:
            self._faults.clear()
            self._deletions.clear()

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ serving

    def _take_fault(self, path: str):
        with self._lock:
            for suffix, plan in self._faults.items():
                if path.endswith(suffix) and plan[0] > 0:
                    plan[0] -= 1
                    return plan[1:]
        return None

    def _answered(self, path: str) -> None:
        delete = None
        with self._lock:
            for suffix, plan in self._deletions.items():
                if path.endswith(suffix) and plan[0] > 0:
                    plan[0] -= 1
                    if plan[0] == 0:
                        delete = plan[1]
        if delete is not None:
            delete()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            while not self._closing.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                method, target, headers, body = request
                path = urlsplit(target).path
                if path == STATS_PATH:
                    with self._lock:
                        answer = json.dumps({"requests": len(self.requests), "bytes_sent": self.bytes_sent}).encode()
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                   + str(len(answer)).encode() + b"\r\n\r\n" + answer)
                    continue
                range_header = next((value for name, value in headers if name.lower() == "range"), "")
                with self._lock:
                    self.requests.append((method, path, range_header))
                if self.latency:
                    self._closing.wait(self.latency)
                fault = self._take_fault(path)
                kind, status, seconds = fault if fault else (None, 0, 0.0)
                if kind == "status":
                    client.sendall(f"HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\n\r\n".encode())
                    continue
                if kind == "reset":
                    return _reset(client)
                if kind == "stall":
                    self._closing.wait(seconds)
                    return
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    upstream.putheader(name, value)
                upstream.endheaders(body or None)
                response = upstream.getresponse()
                data = response.read()
                length = response.getheader("Content-Length", "0") if method == "HEAD" else str(len(data))
                head = [f"HTTP/1.1 {response.status} {response.reason}"]
                head += [f"{name}: {value}" for name, value in response.getheaders() if name.lower() not in _HOP_HEADERS]
                head += [f"Content-Length: {length}", "", ""]
                client.sendall("\r\n".join(head).encode("latin-1"))
                if kind in ("reset_mid", "truncate", "stall_mid"):
                    client.sendall(data[: len(data) // 2])
                    if kind == "reset_mid":
                        return _reset(client)
                    if kind == "stall_mid":
                        self._closing.wait(seconds)
                    return  # truncate: close after half the body
                client.sendall(data)
                with self._lock:
                    self.bytes_sent += len(data)
                self._answered(path)
        except OSError:  # the client went away
            return
        finally:
            upstream.close()
            reader.close()


def _read_request(reader):
    """(method, target, [(name, value)], body) of the next request on the connection; None at its end."""
    line = reader.readline(65537)
    while line in (b"\r\n", b"\n"):
        line = reader.readline(65537)
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers, length = [], 0
    while True:
        header = reader.readline(65537)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
        if name.strip().lower() == "content-length":
            length = int(value)
    return method, target, headers, reader.read(length) if length else b""


def _reset(client: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed server or a middlebox does."""
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
