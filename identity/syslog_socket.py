"""Whether a syslog daemon listens on /dev/log.

Python's SysLogHandler (and the syslog module) drop every line without a word when nothing
listens there, so the agent picks a log file instead, and `idm doctor` says so.
"""

from __future__ import annotations

import socket

SYSLOG_SOCKET = "/dev/log"


def syslog_reachable(path: str = SYSLOG_SOCKET) -> bool:
    """True when a datagram or stream connection to `path` succeeds."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        probe = socket.socket(socket.AF_UNIX, kind)
        try:
            probe.connect(path)
            return True
        except OSError:
            continue
        finally:
            probe.close()
    return False
