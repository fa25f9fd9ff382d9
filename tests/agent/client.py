"""A minimal raw ssh-agent protocol client for tests, built on idm's own codec."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from idm.identity.agent import protocol as p

# Guards against a hung agent; not a performance expectation.
IO_GUARD_SECONDS = 30.0


class AgentClient:
    """One connection to an agent socket."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_GUARD_SECONDS)
        self.sock.connect(str(path))

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:  # closed by the agent with our bytes unread
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def recv_body(self) -> bytes | None:
        """The next response body, or None if the agent closed the connection."""
        header = self._recv_exact(4)
        if header is None:
            return None
        (length,) = struct.unpack(">I", header)
        assert length <= p.MAX_MESSAGE_SIZE
        return self._recv_exact(length)

    def recv(self) -> p.Response:
        body = self.recv_body()
        assert body is not None, "agent closed the connection"
        return p.parse_response(body)

    def request(self, req: p.Request) -> p.Response:
        assert not isinstance(req, p.UnknownRequest)
        self.send_raw(req.encode())
        return self.recv()

    def identities(self) -> list[tuple[bytes, str]]:
        resp = self.request(p.RequestIdentities())
        assert isinstance(resp, p.IdentitiesAnswer)
        return list(resp.identities)
