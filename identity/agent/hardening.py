"""Process-level defences of the agent and its PKCS#11 helpers, applied at start.

* :func:`disable_tracing`: ``prctl(PR_SET_DUMPABLE, 0)`` and ``RLIMIT_CORE`` 0, as
  OpenSSH's ``platform_disable_tracing()``. A process of the same user can then no
  longer ptrace the agent or read ``/proc/PID/mem`` (the kernel makes the process's
  /proc files root's), and a crash writes no core file holding keys or PINs. Called
  before the agent holds any key or accepts any client; inherited across ``fork``.
* :func:`die_with_parent`: a PKCS#11 helper process ends with the agent that started it.
* :func:`raise_open_file_limit`: the soft ``RLIMIT_NOFILE`` raised to the hard limit, so
  that the number of connections the agent can hold is the system's limit, not the
  login shell's usual soft 1,024 (every client connection is one descriptor).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4


class HardeningError(OSError):
    """A defence could not be applied (the agent refuses to run without it)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def disable_tracing() -> None:
    """Make this process non-dumpable and give it no core file size (Linux).

    Raises :class:`HardeningError` when ``prctl`` fails: an agent that cannot protect
    its memory does not start (fail closed). On other systems only the core limit is set.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise HardeningError(errno, "prctl(PR_SET_DUMPABLE, 0) failed")


def die_with_parent() -> None:
    """Be killed (SIGKILL) when the parent process ends (Linux; a no-op elsewhere).

    For the PKCS#11 helpers: a helper whose agent is gone must not live on holding a
    logged-in card, even if a module call hangs and never reads the closed socket.
    """
    if sys.platform.startswith("linux"):
        _libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit: Linux's default nr_open, the most the kernel accepts.
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft
