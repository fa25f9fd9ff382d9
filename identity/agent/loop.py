"""The agent's connection loop: one thread, non-blocking sockets, framed messages.

Every client connection is a non-blocking UNIX socket watched by one selector (epoll on
Linux), as in OpenSSH's ssh-agent: a connection that is held open and silent, or that
sends a message one byte at a time, costs one descriptor and a few hundred bytes, never
a thread, and never keeps another client from being served. There is no connection
limit besides the process's open-file limit (which ``idm agent`` raises to the hard
limit at start).

Framing: a message is ``uint32 length`` + body. The length is checked as soon as its
four bytes are in (over :data:`~idm.identity.agent.protocol.MAX_MESSAGE_SIZE`: one
FAILURE, then the connection is closed, since the stream cannot be resynchronised). A
message that has started must be complete within :data:`BODY_TIMEOUT` seconds of its
first byte, or the connection is closed; an idle connection (ssh keeps one open for a
whole session) may wait forever.

Work: quick requests (listing, adding a software key, session-bind) are answered on the
loop. Requests that may block (a signature on a token, a confirmation dialog, loading a
provider, LOCK/UNLOCK) go to an executor chosen per message by the caller, so one slow
signature never stalls listing. One request per connection is in progress at a time, so
answers keep the order of the requests; a connection's further bytes wait in its buffer
(reading pauses past :data:`PAUSE_READING_AT` bytes). The worker sends the answer itself
when the socket takes it at once (the usual case: no hand-off back to the loop);
otherwise the loop sends it when the socket is writable.
"""

from __future__ import annotations

import collections
import errno
import heapq
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idm.identity.agent import protocol as p
from idm.identity.agent.agentlog import log

BODY_TIMEOUT = 30.0
RECV_SIZE = 65536
# Bytes a connection may have buffered while its request is in progress (pipelining).
PAUSE_READING_AT = 2 * (4 + p.MAX_MESSAGE_SIZE)
ACCEPT_BATCH = 64  # connections accepted per wake-up, so one listener cannot starve the rest
ACCEPT_PAUSE = 0.25  # seconds without accepting when the process is out of descriptors
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_FAILURE = p.Failure().encode()


@dataclass
class Listener:
    """A listening socket and the caller's data for connections accepted on it."""

    sock: socket.socket
    path: Path
    data: Any


class Connection:
    """One client: its socket, buffers, and whether a request of it is in progress.

    ``lock`` guards the buffers and flags the loop and a worker share (``outbuf``,
    ``inbuf``, ``busy``, ``peer_closed``); the socket is closed only by the loop, and
    never while a request of this connection is in progress.
    """

    __slots__ = ("sock", "state", "inbuf", "outbuf", "busy", "peer_closed", "closing",
                 "closed", "reading", "events", "deadline", "lock")

    def __init__(self, sock: socket.socket, state: Any) -> None:
        self.sock = sock
        self.state = state
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.busy = False  # a request is being handled off the loop
        self.peer_closed = False  # EOF or a send error: close when no longer busy
        self.closing = False  # close once outbuf is sent (after an oversize message)
        self.closed = False
        self.reading = True  # False while paused (too much buffered during a request)
        self.events = 0  # what the selector watches now
        self.deadline: float | None = None  # monotonic end of the started message
        self.lock = threading.Lock()


Admit = Callable[[socket.socket, Any], Any]
Handle = Callable[[bytes, Any], bytes]
Route = Callable[[bytes], Executor | None]


class ConnectionLoop:
    """Serve framed messages on listening sockets until :meth:`stop`.

    ``admit(sock, listener_data)`` returns the per-connection state, or None to refuse
    (close) it; ``handle(body, state)`` returns the framed answer and never raises;
    ``route(body)`` returns the executor for a request that may block, or None to answer
    it on the loop.
    """

    def __init__(self, admit: Admit, handle: Handle, route: Route) -> None:
        self.admit = admit
        self.handle = handle
        self.route = route
        self.listeners: list[Listener] = []
        self._connections: set[Connection] = set()
        self._sel: selectors.BaseSelector | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._done: collections.deque[Connection] = collections.deque()
        self._deadlines: list[tuple[float, int, Connection]] = []
        self._accept_paused_until = 0.0
        self._out_of_fds_logged = 0.0

    # -- life cycle --------------------------------------------------------------------

    def add_listener(self, sock: socket.socket, path: Path, data: Any) -> None:
        """Watch a listening socket (before :meth:`run`)."""
        sock.setblocking(False)
        self.listeners.append(Listener(sock, path, data))

    @property
    def connection_count(self) -> int:
        """Client connections open now."""
        return len(self._connections)

    def run(self) -> None:
        """Serve until :meth:`stop` is called."""
        with selectors.DefaultSelector() as sel:
            self._sel = sel
            self._watch_listeners(True)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            try:
                while not self._stopping.is_set():
                    for key, mask in sel.select(self._timeout()):
                        target = key.data
                        if target is None:
                            self._drain_wake()
                        elif isinstance(target, Listener):
                            self._accept(target)
                        else:
                            if mask & selectors.EVENT_WRITE:
                                self._flush(target)
                            if mask & selectors.EVENT_READ and not target.closed:
                                self._read(target)
                    self._finish_done()
                    self._expire()
                    if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
                        self._accept_paused_until = 0.0
                        self._watch_listeners(True)
            finally:
                self._sel = None

    def stop(self) -> None:
        """Make :meth:`run` return (safe from a signal handler or another thread)."""
        self._stopping.set()
        self._wake()

    def close(self) -> None:
        """Close every client connection and the wake-up pipe (after :meth:`run`)."""
        for conn in list(self._connections):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.sock.close()
            conn.closed = True
        self._connections.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the loop's steps ------------------------------------------------------------------

    def _watch_listeners(self, on: bool) -> None:
        assert self._sel is not None
        for listener in self.listeners:
            if on:
                self._sel.register(listener.sock, selectors.EVENT_READ, listener)
            else:
                self._sel.unregister(listener.sock)

    def _timeout(self) -> float | None:
        while self._deadlines:
            deadline, _, conn = self._deadlines[0]
            if conn.closed or conn.deadline != deadline:
                heapq.heappop(self._deadlines)  # stale entry
                continue
            wait = deadline - time.monotonic()
            break
        else:
            wait = None
        if self._accept_paused_until:
            pause = self._accept_paused_until - time.monotonic()
            wait = pause if wait is None else min(wait, pause)
        return None if wait is None else max(wait, 0.0)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe wakes the loop just as well; a closed one: we are done

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self, listener: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    now = time.monotonic()
                    if now - self._out_of_fds_logged > 10.0:
                        self._out_of_fds_logged = now
                        log.warning("cannot accept a client on %s: %s (%d connections open); "
                                    "waiting for some to close", listener.path, exc.strerror,
                                    len(self._connections))
                    # The listener stays readable: stop watching it a moment, or spin.
                    self._watch_listeners(False)
                    self._accept_paused_until = now + ACCEPT_PAUSE
                else:
                    log.warning("accept on %s failed: %s", listener.path, exc)
                return
            sock.setblocking(False)
            state = self.admit(sock, listener.data)
            if state is None:
                sock.close()
                continue
            conn = Connection(sock, state)
            self._connections.add(conn)
            self._update_events(conn)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._hang_up(conn)
            return
        with conn.lock:
            conn.inbuf += data
            if conn.busy:
                if len(conn.inbuf) >= PAUSE_READING_AT:
                    conn.reading = False
                else:
                    return
        if not conn.reading:
            self._update_events(conn)
            return
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        """Answer every complete message in the buffer, or hand one to a worker."""
        while True:
            with conn.lock:
                if conn.busy or conn.closing or conn.peer_closed:
                    break
                buf = conn.inbuf
                if len(buf) < 4:
                    self._arm(conn, bool(buf))
                    break
                length = int.from_bytes(buf[:4], "big")
                if length > p.MAX_MESSAGE_SIZE:
                    # As OpenSSH: the stream cannot be resynchronised.
                    log.warning("%s sent a %d-byte message (limit %d): closing", conn.state,
                                length, p.MAX_MESSAGE_SIZE)
                    conn.outbuf += _FAILURE
                    conn.closing = True
                    buf.clear()
                    self._arm(conn, False)
                    break
                if len(buf) < 4 + length:
                    self._arm(conn, True)
                    break
                body = bytes(buf[4 : 4 + length])
                del buf[: 4 + length]
                conn.deadline = None
                executor = self.route(body)
                if executor is not None:
                    conn.busy = True
            if executor is not None:
                executor.submit(self._work, conn, body)
                break
            answer = self.handle(body, conn.state)
            with conn.lock:
                conn.outbuf += answer
        self._flush(conn)

    def _arm(self, conn: Connection, partial: bool) -> None:
        """Start (or keep) the deadline of a started message; clear it when idle."""
        if not partial:
            conn.deadline = None
        elif conn.deadline is None:
            conn.deadline = time.monotonic() + BODY_TIMEOUT
            heapq.heappush(self._deadlines, (conn.deadline, id(conn), conn))

    def _work(self, conn: Connection, body: bytes) -> None:
        """In a worker: answer, send what the socket takes, hand back to the loop if needed."""
        answer = self.handle(body, conn.state)
        with conn.lock:
            conn.outbuf += answer
            if not conn.peer_closed:
                try:
                    sent = conn.sock.send(conn.outbuf)
                    del conn.outbuf[:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    conn.peer_closed = True
            conn.busy = False
            needs_loop = (bool(conn.outbuf) or bool(conn.inbuf) or conn.peer_closed
                          or not conn.reading or conn.closing)
        if needs_loop:
            self._done.append(conn)
            self._wake()

    def _finish_done(self) -> None:
        while self._done:
            conn = self._done.popleft()
            if conn.closed:
                continue
            if conn.peer_closed:
                self._close(conn)
                continue
            conn.reading = True
            self._process(conn)

    def _flush(self, conn: Connection) -> None:
        with conn.lock:
            if conn.outbuf and not conn.peer_closed:
                try:
                    sent = conn.sock.send(conn.outbuf)
                    del conn.outbuf[:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    conn.peer_closed = True
                    conn.outbuf.clear()
            finished = conn.peer_closed or (conn.closing and not conn.outbuf)
            busy = conn.busy
        if finished and not busy:
            self._close(conn)
        else:
            self._update_events(conn)

    def _hang_up(self, conn: Connection) -> None:
        with conn.lock:
            conn.peer_closed = True
            busy = conn.busy
        if busy:
            self._update_events(conn)  # stop watching; the worker hands it back
        else:
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, conn = heapq.heappop(self._deadlines)
            if conn.closed or conn.deadline != deadline:
                continue
            if conn.busy:  # its buffer waits for the request in progress: re-armed after
                conn.deadline = None
                continue
            log.warning("%s closed or stalled in the middle of a message: closing", conn.state)
            self._close(conn)

    def _update_events(self, conn: Connection) -> None:
        if conn.closed or self._sel is None:
            return
        events = 0
        if conn.reading and not conn.peer_closed and not conn.closing:
            events |= selectors.EVENT_READ
        if conn.outbuf and not conn.peer_closed:
            events |= selectors.EVENT_WRITE
        if events == conn.events:
            return
        if conn.events == 0:
            self._sel.register(conn.sock, events, conn)
        elif events == 0:
            self._sel.unregister(conn.sock)
        else:
            self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        if conn.events and self._sel is not None:
            self._sel.unregister(conn.sock)
            conn.events = 0
        conn.closed = True
        conn.deadline = None
        self._connections.discard(conn)
        conn.sock.close()
        log.debug("%s disconnected", conn.state)
