"""The agent's connection loop: one thread, non-blocking sockets, framed messages.

Every client connection is a non-blocking UNIX socket watched by one selector (epoll on
Linux), as in OpenSSH's ssh-agent: a connection that is held open and silent, or that
sends a message one byte at a time, costs one descriptor and a few hundred bytes, never
a thread, and never keeps another client from being served. There is no connection
limit besides the process's open-file limit (which ``idm agent`` raises to the hard
limit at start).

Framing
    A message is ``uint32 length`` + body. The length is checked as soon as its four
    bytes are in (over :data:`~idm.identity.agent.protocol.MAX_MESSAGE_SIZE`: one
    FAILURE, then the connection is closed, since the stream cannot be resynchronised).
    A message that has started must be complete within :data:`BODY_TIMEOUT` seconds of
    its first byte, or the connection is closed; an idle connection (ssh keeps one open
    for a whole session) may wait forever.

Where a request runs (``route(body)``, decided by the caller per message type)
    :attr:`Where.LOOP`: quick requests (listing, adding a software key, session-bind)
    are answered on the loop. :attr:`Where.WORKER`: requests that may block (a
    signature on a token, a confirmation dialog, loading a provider) go to a worker
    thread, so one slow signature never stalls listing. :attr:`Where.SERIAL`: requests
    that must run one at a time whoever sends them (UNLOCK, whose delay must hold off
    every guess) go to one thread, in arrival order.

    While a worker has a connection, the loop does not watch it (one request at a time
    per connection, so answers keep the order of the requests). A worker answers, sends
    what the socket takes at once, and keeps serving that same connection while it
    sends its next request within :data:`LINGER` seconds and no other connection waits
    for a worker: a client that signs in a tight loop is then served like by a thread of
    its own, without a hand-off per request. Anything else (a partial message, an answer
    the socket would not take, an idle client) goes back to the loop.
"""

from __future__ import annotations

import collections
import enum
import errno
import heapq
import os
import queue
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idm.identity.agent import protocol as p
from idm.identity.agent.agentlog import log

BODY_TIMEOUT = 30.0
RECV_SIZE = 65536
# Answers waiting for a client that does not read them: past this, its requests wait too.
OUTBUF_LIMIT = 1 << 20
LINGER = 0.02  # seconds a worker waits for a connection's next request before handing it back
ACCEPT_BATCH = 64  # connections accepted per wake-up, so one listener cannot starve the rest
ACCEPT_PAUSE = 0.25  # seconds without accepting when the process is out of descriptors
_LINGER_TIMEVAL = struct.pack("ll", 0, int(LINGER * 1_000_000))
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_FAILURE = p.Failure().encode()


class Where(enum.Enum):
    """Where a request is answered (see the module docstring)."""

    LOOP = "loop"
    WORKER = "worker"
    SERIAL = "serial"


@dataclass
class Listener:
    """A listening socket and the caller's data for connections accepted on it."""

    sock: socket.socket
    path: Path
    data: Any


class Connection:
    """One client: its socket, buffers, and who serves it now.

    While ``busy`` a worker (or the serial thread) owns the connection: the loop neither
    watches nor touches it until the worker hands it back (``_done``). The socket is
    closed only by the loop.
    """

    __slots__ = ("sock", "state", "inbuf", "outbuf", "busy", "peer_closed", "closing",
                 "closed", "events", "deadline")

    def __init__(self, sock: socket.socket, state: Any) -> None:
        self.sock = sock
        self.state = state
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.busy = False
        self.peer_closed = False  # EOF or a send error: close when handed back
        self.closing = False  # close once outbuf is sent (after an oversize message)
        self.closed = False
        self.events = 0  # what the selector watches now
        self.deadline: float | None = None  # monotonic end of the started message

    def next_message(self) -> tuple[int, int] | None:
        """``(length, total)`` of the message at the head of ``inbuf`` once all its bytes
        are in (the length alone once it exceeds the cap), else None."""
        buf = self.inbuf
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[:4], "big")
        if length > p.MAX_MESSAGE_SIZE or len(buf) >= 4 + length:
            return length, 4 + length
        return None


class _Workers:
    """Threads for requests that may block, started as needed up to ``limit``.

    ``_free``: threads waiting for work; ``_backlog``: work queued that no thread is
    free for (it waits for one to finish, once ``limit`` threads run).
    """

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._threads = 0
        self._free = 0
        self._backlog = 0

    @property
    def waiting(self) -> bool:
        """Whether work waits for a thread to finish."""
        return self._backlog > 0

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` in a free thread, a new one, or the next to finish."""
        with self._lock:
            if self._free:
                self._free -= 1
            elif self._threads < self.limit:
                self._threads += 1
                threading.Thread(target=self._run, daemon=True,
                                 name=f"{self.name}-{self._threads}").start()
            else:
                self._backlog += 1
        self._queue.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # a bug must cost one connection, not the worker
                log.exception("agent worker failed")
            with self._lock:
                if self._backlog:
                    self._backlog -= 1  # take the oldest waiting work next
                else:
                    self._free += 1

    def shutdown(self) -> None:
        """Let every thread end once the work queued before this is done."""
        with self._lock:
            count = self._threads
        for _ in range(count):
            self._queue.put(None)


Admit = Callable[[socket.socket, Any], Any]
Handle = Callable[[bytes, Any], bytes]
Route = Callable[[bytes], Where]


class ConnectionLoop:
    """Serve framed messages on listening sockets until :meth:`stop`.

    ``admit(sock, listener_data)`` returns the per-connection state, or None to refuse
    (close) it; ``handle(body, state)`` returns the framed answer and never raises (it
    is called from the loop and from worker threads); ``route(body)`` says where a
    request runs; ``workers`` caps the worker threads.
    """

    def __init__(self, admit: Admit, handle: Handle, route: Route, workers: int = 64) -> None:
        self.admit = admit
        self.handle = handle
        self.route = route
        self.listeners: list[Listener] = []
        self._workers = _Workers(workers, "idm-agent-worker")
        self._serial = _Workers(1, "idm-agent-serial")
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
                                if self._held_back(target):
                                    self._process(target)
                            if mask & selectors.EVENT_READ and not target.closed \
                                    and not target.busy:
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
        """Close every client connection, the workers and the wake-up pipe (after run)."""
        self._workers.shutdown()
        self._serial.shutdown()
        for conn in list(self._connections):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.sock.close()  # a worker still using it gets an error and lets go
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
        wait: float | None = None
        while self._deadlines:
            deadline, _, conn = self._deadlines[0]
            if conn.closed or conn.deadline != deadline:
                heapq.heappop(self._deadlines)  # stale entry
                continue
            wait = deadline - time.monotonic()
            break
        if self._accept_paused_until:
            pause = self._accept_paused_until - time.monotonic()
            wait = pause if wait is None else min(wait, pause)
        return None if wait is None else max(wait, 0.0)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # a full pipe wakes the loop just as well; a closed one: we are done

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
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
            self._close(conn)
            return
        conn.inbuf += data
        self._process(conn)

    def _process(self, conn: Connection) -> None:
        """Answer the complete messages in the buffer, or hand the connection to a worker."""
        while not (conn.busy or conn.closing or conn.closed) and len(conn.outbuf) < OUTBUF_LIMIT:
            head = conn.next_message()
            if head is None:
                self._arm(conn, bool(conn.inbuf))
                break
            length, total = head
            if length > p.MAX_MESSAGE_SIZE:
                # As OpenSSH: the stream cannot be resynchronised.
                log.warning("%s sent a %d-byte message (limit %d): closing", conn.state,
                            length, p.MAX_MESSAGE_SIZE)
                conn.outbuf += _FAILURE
                conn.closing = True
                conn.inbuf.clear()
                self._arm(conn, False)
                break
            body = bytes(conn.inbuf[4:total])
            del conn.inbuf[:total]
            conn.deadline = None
            where = self.route(body)
            if where is Where.LOOP:
                conn.outbuf += self.handle(body, conn.state)
                continue
            conn.busy = True
            self._update_events(conn)  # not watched while a worker has it
            pool = self._workers if where is Where.WORKER else self._serial
            pool.submit(self._serve, conn, body, where is Where.WORKER)
            return
        self._flush(conn)

    @staticmethod
    def _held_back(conn: Connection) -> bool:
        """A complete request waited while the client did not read its answers."""
        return (not (conn.busy or conn.closed) and len(conn.outbuf) < OUTBUF_LIMIT
                and conn.next_message() is not None)

    def _arm(self, conn: Connection, partial: bool) -> None:
        """Start (or keep) the deadline of a started message; clear it when idle."""
        if not partial:
            conn.deadline = None
        elif conn.deadline is None:
            conn.deadline = time.monotonic() + BODY_TIMEOUT
            heapq.heappush(self._deadlines, (conn.deadline, id(conn), conn))

    # -- in a worker thread ----------------------------------------------------------------

    def _serve(self, conn: Connection, body: bytes, linger: bool) -> None:
        """Answer ``body``; with ``linger``, go on with the connection's next requests."""
        try:
            if linger:
                # Blocking reads that give up after LINGER: one system call per request.
                conn.sock.setblocking(True)
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _LINGER_TIMEVAL)
            while True:
                conn.outbuf += self.handle(body, conn.state)
                if not self._send(conn) or not linger:
                    return
                next_body = self._next_request(conn)
                if next_body is None:
                    return
                body = next_body
        except OSError:
            conn.peer_closed = True
        finally:
            if linger and not conn.closed:
                try:
                    conn.sock.setblocking(False)
                except OSError:
                    conn.peer_closed = True
            self._done.append(conn)  # back to the loop, which watches it again
            self._wake()

    @staticmethod
    def _send(conn: Connection) -> bool:
        """Send the buffered answers without blocking; True when all went out."""
        try:
            sent = conn.sock.send(conn.outbuf, socket.MSG_DONTWAIT)
            del conn.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            conn.peer_closed = True
            return False
        return not conn.outbuf

    def _next_request(self, conn: Connection) -> bytes | None:
        """The connection's next request if it comes within LINGER and no other
        connection waits for a worker; None hands the connection back to the loop."""
        deadline = time.monotonic() + LINGER
        while True:
            head = conn.next_message()
            if head is not None:
                length, total = head
                if length > p.MAX_MESSAGE_SIZE:
                    return None  # the loop refuses it
                body = bytes(conn.inbuf[4:total])
                if self.route(body) is Where.SERIAL:
                    return None  # it must run one at a time (UNLOCK): the loop routes it
                del conn.inbuf[:total]
                return body
            if self._workers.waiting or time.monotonic() >= deadline:
                return None
            try:
                data = conn.sock.recv(RECV_SIZE)  # waits at most LINGER (SO_RCVTIMEO)
            except (BlockingIOError, InterruptedError):
                return None
            if not data:
                conn.peer_closed = True
                return None
            conn.inbuf += data

    # -- back on the loop ------------------------------------------------------------------

    def _finish_done(self) -> None:
        while self._done:
            conn = self._done.popleft()
            conn.busy = False
            if conn.closed:
                continue
            if conn.peer_closed:
                self._close(conn)
                continue
            self._process(conn)

    def _flush(self, conn: Connection) -> None:
        if conn.outbuf and not conn.peer_closed:
            try:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                conn.peer_closed = True
        if conn.peer_closed or (conn.closing and not conn.outbuf):
            self._close(conn)
            return
        self._update_events(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, conn = heapq.heappop(self._deadlines)
            if conn.closed or conn.deadline != deadline:
                continue
            log.warning("%s closed or stalled in the middle of a message: closing", conn.state)
            self._close(conn)

    def _update_events(self, conn: Connection) -> None:
        if conn.closed or self._sel is None:
            return
        events = 0
        if not conn.busy:
            if not conn.closing and len(conn.outbuf) < OUTBUF_LIMIT:
                events |= selectors.EVENT_READ
            if conn.outbuf:
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
        if conn.closed or conn.busy:
            return
        if conn.events and self._sel is not None:
            self._sel.unregister(conn.sock)
            conn.events = 0
        conn.closed = True
        conn.deadline = None
        self._connections.discard(conn)
        conn.sock.close()
        log.debug("%s disconnected", conn.state)
