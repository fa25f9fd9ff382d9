"""Where idm writes a file a user named: checked before any work, never created silently.

`idm krl --output`, `idm export --output`, `idm enroll --csr` and the snapshot that
`idm refresh` writes name files to create or replace. A typo in the folder must not
scatter new folders over the disk (nor, for `--csr`, make a key on the card whose CSR then
cannot be written), so `check_output_path` refuses at once when the folder does not
exist or the path names something other than a regular file. Only idm's own default
locations (the default snapshot folder) are created, by their callers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class OutputPathError(ValueError):
    """An output path idm will not write (one line: ``cannot write <PATH>: <why>``)."""


def check_output_path(path: str | os.PathLike[str], *, special_ok: bool = False) -> Path:
    """``path`` as a Path when its folder exists and it is absent or a regular file.

    ``special_ok`` also accepts a FIFO or a device (``--csr /dev/stdout``): for outputs
    written in place, not through a temporary file renamed over the target."""
    target = Path(path)
    folder = target.absolute().parent
    try:
        folder_mode = os.stat(folder).st_mode
    except FileNotFoundError:
        raise OutputPathError(f"cannot write {target}: folder {folder} does not exist") from None
    except OSError as exc:
        raise OutputPathError(f"cannot write {target}: folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(folder_mode):
        raise OutputPathError(f"cannot write {target}: {folder} is not a folder")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputPathError(f"cannot write {target}: {exc.strerror}") from None
    if not stat.S_ISREG(mode) and not (special_ok and not stat.S_ISDIR(mode)):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise OutputPathError(f"cannot write {target}: it is {kind}")
    return target
