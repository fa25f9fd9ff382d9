"""A scriptable HTTP server on 127.0.0.1 that misbehaves like real CRL/OCSP servers do."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """What the server answers: status, body, headers, and an optional delay first."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Responder:
    url: str
    requests: list[tuple[str, str, bytes]]
    set_reply: Callable[[Callable[[str, bytes], Reply]], None]


@contextmanager
def responder(answer: Callable[[str, bytes], Reply]) -> Iterator[Responder]:
    """Serve `answer(path, request_body) -> Reply` on a free 127.0.0.1 port."""
    seen: list[tuple[str, str, bytes]] = []
    box = {"answer": answer}
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self, method: str) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            seen.append((method, self.path, body))
            reply = box["answer"](self.path, body)
            if reply.delay:
                stop.wait(reply.delay)
            try:
                self.send_response(reply.status)
                for k, val in reply.headers.items():
                    self.send_header(k, val)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Responder(
            f"http://127.0.0.1:{server.server_address[1]}",
            seen,
            lambda a: box.__setitem__("answer", a),
        )
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()
        time.sleep(0)
