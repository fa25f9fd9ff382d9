"""A command run on a pseudo-terminal: what a person at a terminal sees, types and presses.

    with Terminal([*IDM, "objects", uri], env=env) as term:
        term.expect("Enter PIN")        # waits for the text on the screen
        term.send(b"\\x03")              # Ctrl-C: the line discipline sends SIGINT
        code = term.wait()
    term.output                         # everything the command wrote (stdout and stderr)

The command is a session leader with the pty as its controlling terminal, so /dev/tty,
isatty(), the window size (``columns``) and Ctrl-C behave as they do for a user.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from types import TracebackType

# The idm command as a new process (the console entry point, without an installed script).
IDM = [sys.executable, "-c", "from idm.cli.entry import main; main()"]

# A ceiling so a broken command fails the test instead of hanging it (not an assertion
# about speed).
WAIT_CEILING = 120.0


def _make_controlling_tty() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """Run `argv` on a new pty of `columns` x `rows` (see the module docstring)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        columns: int = 80,
        rows: int = 24,
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environment = dict(os.environ if env is None else env)
        environment.pop("COLUMNS", None)
        environment.setdefault("TERM", "xterm")
        self.proc = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave, env=environment,
            start_new_session=True, preexec_fn=_make_controlling_tty, close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.raw = b""

    @property
    def output(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the command closed the terminal
            return False
        if not chunk:
            return False
        self.raw += chunk
        return True

    def expect(self, text: str, timeout: float = WAIT_CEILING) -> None:
        """Wait until `text` has been written to the terminal."""
        end = time.monotonic() + timeout
        while text not in self.output:
            left = end - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)) and text not in self.output:
                raise AssertionError(f"{text!r} never appeared; the terminal shows:\n{self.output}")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = WAIT_CEILING) -> int:
        """Read until the command exits; its exit status (-N for a signal)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self._read(0.2) and self.proc.poll() is not None:
                break
        else:
            self.proc.kill()
            raise AssertionError(f"the command did not finish; the terminal shows:\n{self.output}")
        return self.proc.wait()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
