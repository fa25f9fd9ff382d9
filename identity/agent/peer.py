"""Which SSH implementation a connected client process runs, to explain a failure it hides.

PKIX-SSH's ``ssh`` and ``ssh-add`` reject a whole identity list that holds an RFC 6187
blob ("error fetching identities: invalid format"); its ``ssh`` then goes on without the
agent, saying nothing. It sends the same requests as OpenSSH, so the protocol cannot tell
them apart: the agent looks at the client's executable (``/proc/PID/exe``, which carries
PKIX-SSH's version banner ``PKIX-SSH``) and logs a hint naming its PKIX-SSH socket.

Only a hint: the lists never depend on this guess (a client through agent forwarding, or
a renamed build, is not recognised).
"""

from __future__ import annotations

import mmap
import os
import threading

MARKER = b"PKIX-SSH"
MAX_PROGRAM_SIZE = 64 * 1024 * 1024  # a client binary larger than this is not scanned

_seen: dict[tuple[int, int, int, int], bool] = {}
_seen_lock = threading.Lock()


def pkixssh_program(pid: int) -> str | None:
    """The path of the PKIX-SSH program process ``pid`` runs, or None (not PKIX-SSH, gone,
    or not readable)."""
    link = f"/proc/{pid}/exe"
    try:
        fd = os.open(link, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _seen_lock:
            known = _seen.get(key)
        if known is None:
            known = 0 < st.st_size <= MAX_PROGRAM_SIZE and _holds_marker(fd)
            with _seen_lock:
                if len(_seen) > 64:
                    _seen.clear()
                _seen[key] = known
        if not known:
            return None
        try:
            return os.readlink(link)
        except OSError:
            return "?"
    finally:
        os.close(fd)


def _holds_marker(fd: int) -> bool:
    try:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
            return data.find(MARKER) >= 0
    except (OSError, ValueError):
        return False
