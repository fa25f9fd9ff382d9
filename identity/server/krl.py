"""``idm krl``: an OpenSSH Key Revocation List of revoked and superseded certificates' keys.

Format per OpenSSH's PROTOCOL.krl: the header (magic ``SSHKRL\\n\\0``, format version 1,
KRL version, generation date, flags, reserved, comment) followed by one
``KRL_SECTION_EXPLICIT_KEY`` section listing the plain public key blobs. Explicit keys
(rather than SHA-256 fingerprints) are understood by every OpenSSH since 6.2.

For sshd's ``RevokedKeys``: a second line of defence that works on servers where the
helper is not installed (keys listed in plain authorized_keys files).

A superseded certificate's key is left out while an approved certificate still holds the
same key (a renewed certificate on the same card must keep working); a revoked
certificate's key is always listed, since the key itself may be compromised.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from idm.identity import sshwire as w
from idm.identity.checker import plain_key_blob
from idm.identity.inventory.store import Inventory

KRL_MAGIC = 0x5353484B524C0A00
KRL_FORMAT_VERSION = 1
KRL_SECTION_EXPLICIT_KEY = 2


def build_krl(
    blobs: Iterable[bytes], *, version: int | None = None, generated: int | None = None,
    comment: str = "idm",
) -> bytes:
    """A KRL revoking exactly these plain key blobs."""
    when = int(time.time()) if generated is None else generated
    keys = sorted(set(blobs))
    out = [
        w.pack_uint64(KRL_MAGIC),
        w.pack_uint32(KRL_FORMAT_VERSION),
        w.pack_uint64(when if version is None else version),
        w.pack_uint64(when),
        w.pack_uint64(0),
        w.pack_string(b""),
        w.pack_string(comment),
    ]
    if keys:
        section = b"".join(w.pack_string(k) for k in keys)
        out += [w.pack_byte(KRL_SECTION_EXPLICIT_KEY), w.pack_string(section)]
    return b"".join(out)


def revoked_blobs(inventory: Inventory) -> list[bytes]:
    """The plain key blobs a KRL of this inventory lists (see the module docstring)."""
    approved = {plain_key_blob(r) for r in inventory.certificates(status="approved")}
    out: set[bytes] = set()
    for rec in inventory.certificates(status=("revoked", "superseded")):
        blob = plain_key_blob(rec)
        if rec.status == "revoked" or blob not in approved:
            out.add(blob)
    return sorted(out)


def write_krl(path: str | os.PathLike[str], data: bytes) -> None:
    """Write atomically (temporary file, then rename), world-readable like sshd needs.

    The folder must exist (`idm.identity.outputpath.check_output_path`)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
