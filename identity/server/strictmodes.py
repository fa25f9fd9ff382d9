"""sshd's StrictModes for the files the sshd helper trusts: its snapshot and configuration.

Whoever can write the snapshot, the configuration or any folder above them decides who
logs in. So, as sshd's ``safe_path()`` (OpenSSH misc.c) does for authorized_keys files,
the helper refuses a file unless it is a regular file and it and every folder from it up
to ``/`` are owned by root or by the helper's own uid and writable by neither group nor
others. OpenSSH checks the folders of the resolved path (``realpath``); when the path
given is a symlink, the folders the symlink lives in are checked too, since whoever can
write them can point it elsewhere.

Standard library only: the helper runs this at every login attempt.
"""

from __future__ import annotations

import os
import stat

from idm.validator.inputfile import InputFileError

RULE = "StrictModes"


def unsafe_owner_or_mode(st: os.stat_result, uid: int) -> str | None:
    """Why a file or folder with stat ``st`` fails the owner/mode rule for ``uid`` (owned
    by root or ``uid``, writable by neither group nor others), or None."""
    owners = "root" if uid == 0 else f"root or uid {uid}"
    if st.st_uid not in (0, uid):
        return f"owned by uid {st.st_uid}, not {owners}"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _folders(path: str) -> list[str]:
    out = []
    folder = path
    while folder != "/":
        folder = os.path.dirname(folder)
        out.append(folder)
    return out


def check_strict_modes(path: str, st: os.stat_result, uid: int | None = None) -> None:
    """Raise InputFileError (naming the rule and the culprit) unless ``path``, whose opened
    file has stat ``st``, and its folders pass sshd's StrictModes rules for ``uid`` (default:
    this process's effective uid)."""
    uid = os.geteuid() if uid is None else uid
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{path}: not a regular file ({RULE})")
    problem = unsafe_owner_or_mode(st, uid)
    if problem:
        raise InputFileError(f"{path}: refused by {RULE}: the file is {problem}")
    given = os.path.abspath(path)
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot resolve ({exc.strerror})") from None
    seen: set[str] = set()
    for folder in [*_folders(given), *_folders(real)]:
        if folder in seen:
            continue
        seen.add(folder)
        try:
            fst = os.stat(folder)
        except OSError as exc:
            raise InputFileError(f"{path}: cannot check folder {folder} ({exc.strerror})") from None
        problem = unsafe_owner_or_mode(fst, uid)
        if problem:
            raise InputFileError(f"{path}: refused by {RULE}: folder {folder} is {problem}")
