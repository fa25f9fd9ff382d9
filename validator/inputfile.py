"""Reading a local input file: regular files only, never blocking, never unbounded.

A FIFO named as a certificate would hang the reader until someone writes to it, and
``/dev/zero`` would fill memory. Every file idm reads because a user or a configuration
named it (certificates, CA bundles, CRLs, the configuration, PIN sources, principals
files) goes through `read_input_file`: it opens without blocking (``O_NONBLOCK``, so
opening a FIFO returns at once), checks with ``fstat`` that what it opened is a regular
file, and reads at most ``max_bytes``. Anything else is an `InputFileError` with one line
naming the file and what is wrong.

Standard library only, and cheap to import: the sshd helper reads its configuration and
its snapshot through here at every login attempt.
"""

from __future__ import annotations

import os
import stat
import sys

from idm.validator.errors import MalformedInputError

# The size caps (documented in docs/configuration.md, "Limits on input files"). CRL files
# share [revocation] crl_max_bytes with CRL downloads.
CERTIFICATE_MAX_BYTES = 1 << 20  # one certificate file: a leaf and its chain
BUNDLE_MAX_BYTES = 16 << 20  # one CA bundle file (a system bundle is ~0.2 MiB)
CONFIG_MAX_BYTES = 1 << 20  # the TOML configuration
PIN_SOURCE_MAX_BYTES = 4096  # a pin-source file: one line

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs every login ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable

    # Called with the path and the fstat of the opened file; raises to refuse it.
    FileCheck = Callable[[str, os.stat_result], None]

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class InputFileError(MalformedInputError):
    """A named input is missing, unreadable, not a regular file, or over its size cap.

    ``missing`` is True when the file does not exist (some callers treat that as "use
    the defaults").
    """

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"


def _label(what: str, path: str | os.PathLike[str]) -> str:
    return f"{what} {os.fspath(path)}" if what else os.fspath(path)


def open_regular_file(
    path: str | os.PathLike[str], what: str = "", check: FileCheck | None = None
) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking; (fd, its fstat) if it is a regular file.

    ``what`` names the input in messages ("CA bundle", "--crl", ...). ``check``, when
    given, is called with the path and the opened file's stat before anything is read.
    The caller closes the fd.
    """
    label = _label(what, path)
    try:
        # A stat first, so that a device or FIFO is refused without being opened at all;
        # the fstat below decides (the path may change in between).
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise InputFileError(f"{label}: {_kind(mode)}, not a regular file")
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise InputFileError(f"{label}: no such file", missing=True) from None
    except OSError as exc:
        raise InputFileError(f"{label}: cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputFileError(f"{label}: {_kind(st.st_mode)}, not a regular file")
        if check is not None:
            check(os.fspath(path), st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_input_file(
    path: str | os.PathLike[str],
    what: str,
    max_bytes: int,
    check: FileCheck | None = None,
    *,
    stdin: bool = False,
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see the module docstring).

    With ``stdin``, the path ``-`` means standard input (any kind of file: a pipe is the
    point), read up to the same cap."""
    if stdin and os.fspath(path) == "-":
        data = sys.stdin.buffer.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InputFileError(f"{_label(what, 'standard input')}: larger than the limit of "
                                 f"{max_bytes:,} bytes")
        return data
    fd, st = open_regular_file(path, what, check)
    label = _label(what, path)
    too_big = f"{label}: larger than the limit of {max_bytes:,} bytes"
    try:
        if st.st_size > max_bytes:
            raise InputFileError(too_big)
        chunks: list[bytes] = []
        total = 0
        while True:  # the file may grow while it is read: stop one byte past the cap
            try:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            except OSError as exc:
                raise InputFileError(f"{label}: cannot read ({exc.strerror or exc})") from None
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise InputFileError(too_big)
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
