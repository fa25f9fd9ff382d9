"""``idm authorized-keys``: sshd's AuthorizedKeysCommand.

    AuthorizedKeysCommand /usr/local/bin/idm authorized-keys --config /etc/idm/config.toml %u %t %k

sshd runs this at every login attempt, so the plain-key path imports only the standard
library (no SQLAlchemy, pyhanko-certvalidator, requests, click or cryptography) and
answers from the snapshot that ``idm refresh`` writes: one indexed lookup.

Fail closed: whatever goes wrong, nothing is printed, the exit status is non-zero, and
ONE line saying why goes to stderr and to syslog (facility auth, ident ``idm``).

Modes:

``USER KEYTYPE KEYBLOB`` with a plain key type (``ssh-rsa``, ``ecdsa-sha2-*``, ...)
    prints the authorized_keys line of that key when an approved, valid, fresh
    certificate holding it is mapped to USER.
``USER``
    prints every fresh line mapped to USER.
``USER x509v3-… PLAINKEYBLOB`` (PKIX-SSH's sshd)
    PKIX-SSH passes ``%t`` = the first X.509 algorithm it knows for the key's type (e.g.
    ``x509v3-rsa2048-sha256`` whatever the client used) and ``%k`` = the *plain* public
    key, never the certificate (auth2-pubkey.c, user_key_command_allowed2). The key is
    looked up in the snapshot as in the first mode, and the certificate's PKIX-SSH line
    is printed (``x509v3-sign-rsa`` / ``x509v3-ecdsa-sha2-*`` with the base64 DER): PKIX-SSH
    accepts it only for a certificate with that subject (and, since sshd asked for this
    key, that public key), then checks the certificate against its own CA store.
``USER x509v3-… CERTBLOB`` (a raw DER or RFC 6187 blob holding the certificate)
    validates the presented certificate now against the CA bundle and revocation policy
    (cheap when the revocation cache is warm), maps it with the configured rules and
    prints a line for exactly that certificate. No inventory entry is needed, but the
    snapshot must be fresh (it carries the denied certificates and ``idm allow`` rules).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import sys
import time

from idm.identity.display import printable

# Not `typing.TYPE_CHECKING`: importing typing would cost every login ~4 ms (mypy honours
# any name TYPE_CHECKING).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from idm.identity.config import Config
    from idm.identity.server.snapshot import KeyEntry, Snapshot

USAGE = """\
usage: idm authorized-keys [--config FILE] [--snapshot FILE] [--log-file FILE]
                           USER [KEYTYPE KEYBLOB]

sshd's AuthorizedKeysCommand. In sshd_config:
  AuthorizedKeysCommand /usr/local/bin/idm authorized-keys --config /etc/idm/config.toml %u %t %k
  AuthorizedKeysCommandUser nobody

Prints the authorized_keys line(s) for USER from the snapshot written by `idm refresh`:
for the key KEYBLOB of type KEYTYPE, or every key of USER when only USER is given.
Prints nothing and exits 1 when the key is not authorized; the reason goes to stderr and
syslog. Options: --config (default IDM_CONFIG, else /etc/idm/config.toml if it exists,
else the user's config), --snapshot (instead of [server] snapshot), --log-file (also
append the log line to FILE).
"""

DEFAULT_SYSTEM_CONFIG = "/etc/idm/config.toml"
MAX_KEYBLOB_CHARS = 64 * 1024
EXIT_DENIED = 1
EXIT_USAGE = 2

# PKIX-SSH's X.509 key types (ssh-xkalg.c, add_default_xkalg) and the plain key type of
# the same key: what its sshd passes as %t, and the type of the key it passes as %k.
X509_PLAIN_KEY_TYPES = {
    "x509v3-sign-rsa": "ssh-rsa",
    "x509v3-ssh-rsa": "ssh-rsa",
    "x509v3-rsa2048-sha256": "ssh-rsa",
    "x509v3-ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "x509v3-ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "x509v3-ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
}


class Denied(Exception):
    """The login is refused; the message is the one log line that says why."""


class _Help(Denied):
    pass


class HelperArguments:
    """What the helper's command line asks: its options and sshd's %u [%t %k]."""

    __slots__ = ("config", "snapshot", "log_file", "user", "key_type", "key_blob")

    def __init__(self) -> None:
        self.config: str | None = None
        self.snapshot: str | None = None
        self.log_file: str | None = None
        self.user = ""
        self.key_type: str | None = None
        self.key_blob: str | None = None


def parse_arguments(argv: list[str]) -> HelperArguments:
    """The helper's command line (the words after ``authorized-keys``); Denied when it is
    not one sshd could have sent."""
    args = HelperArguments()
    positional: list[str] = []
    if argv in (["-h"], ["--help"]):
        # Only alone: anything sshd passes (%u, %k) must never turn into help text on
        # stdout, which sshd would read as authorized_keys lines.
        raise _Help("usage: --help alone prints the usage, no key lines")
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--snapshot", "--log-file") and not positional:
            if i + 1 >= len(argv):
                raise Denied(f"usage: {a} needs a value")
            setattr(args, a[2:].replace("-", "_"), argv[i + 1])
            i += 2
            continue
        if a.startswith("--") and not positional and "=" in a:
            name, value = a[2:].split("=", 1)
            if name in ("config", "snapshot", "log-file"):
                setattr(args, name.replace("-", "_"), value)
                i += 1
                continue
        if a == "--" and not positional:
            positional.extend(argv[i + 1 :])
            break
        positional.append(a)
        i += 1
    if len(positional) not in (1, 3):
        raise Denied(
            f"usage: expected USER or USER KEYTYPE KEYBLOB, got {len(positional)} arguments"
        )
    args.user = positional[0]
    if not args.user or len(args.user) > 256 or not args.user.isprintable() or " " in args.user:
        raise Denied("usage: invalid user name")
    if len(positional) == 3:
        args.key_type, args.key_blob = positional[1], positional[2]
        if (
            not args.key_type
            or len(args.key_type) > 64
            or not args.key_type.isascii()
            or not args.key_type.isprintable()
            or " " in args.key_type
        ):
            raise Denied("malformed key type from sshd (%t)")
    return args


# -- logging ---------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return printable(" ".join(str(text).split()))[:900]


def _log(message: str, log_file: str | None, *, denied: bool) -> None:
    line = f"idm authorized-keys: {'DENY' if denied else 'ALLOW'}: {_clean(message)}"
    if denied:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    try:
        import syslog

        syslog.openlog("idm", syslog.LOG_PID, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_WARNING if denied else syslog.LOG_INFO, line)
    except Exception:  # noqa: BLE001 - logging must never turn a denial into a crash
        pass
    if log_file:
        try:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            # O_NONBLOCK: a FIFO without a reader must not hold the login (ENXIO instead).
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY
            fd = os.open(log_file, flags, 0o640)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.write(fd, f"{stamp} [{os.getpid()}] {line}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            pass


def _ssh_fingerprint(blob: bytes) -> str:
    # The same text as sshwire.fingerprint_sha256 (what sshd logs), computed here because
    # importing sshwire pulls in `cryptography`, which this path must not pay for.
    from idm.identity.server.snapshot import key_digest  # SHA-256 of the blob

    return "SHA256:" + base64.b64encode(key_digest(blob)).decode().rstrip("=")


# -- configuration -------------------------------------------------------------------------


def config_path(args: HelperArguments, env: Mapping[str, str]) -> str | None:
    """The configuration file the helper reads: --config, else IDM_CONFIG of ``env``, else
    /etc/idm/config.toml when it exists; None leaves it to `load_config`'s default."""
    explicit = args.config or env.get("IDM_CONFIG")
    if not explicit and os.path.exists(DEFAULT_SYSTEM_CONFIG):
        explicit = DEFAULT_SYSTEM_CONFIG
    return explicit


def snapshot_path(args: HelperArguments, config: Config | None) -> str:
    """The snapshot the helper opens: --snapshot, else the configuration's."""
    if args.snapshot:
        return args.snapshot
    assert config is not None  # loaded whenever --snapshot is not given
    return str(config.server.snapshot)


def _config(args: HelperArguments) -> Config:
    from idm.identity.config import ConfigError, load_config
    from idm.identity.server.strictmodes import check_strict_modes

    try:
        return load_config(config_path(args, os.environ), check=check_strict_modes)
    except ConfigError as exc:
        raise Denied(f"configuration: {exc}") from None


def _open_snapshot(args: HelperArguments, config: Config | None) -> Snapshot:
    from idm.identity.server.snapshot import Snapshot, SnapshotError
    from idm.identity.server.strictmodes import check_strict_modes

    path = snapshot_path(args, config)
    try:
        snap = Snapshot(path, check=check_strict_modes)
        snap.check_fresh()
    except SnapshotError as exc:
        raise Denied(str(exc)) from None
    return snap


# -- the three modes -------------------------------------------------------------------------


def _decode_blob(text: str) -> bytes:
    if len(text) > MAX_KEYBLOB_CHARS:
        raise Denied(f"malformed key from sshd (%k): {len(text)} characters is too long")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise Denied("malformed key from sshd (%k): not base64") from None
    if not raw:
        raise Denied("malformed key from sshd (%k): empty")
    return raw


def _blob_key_type(raw: bytes) -> str | None:
    """The name a plain or RFC 6187 blob starts with (None for raw DER or garbage)."""
    size = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 or not 0 < size <= 64 or len(raw) < 4 + size:
        return None
    try:
        return raw[4 : 4 + size].decode("ascii")
    except UnicodeDecodeError:
        return None


def _fresh_entries(user: str, key_type: str, raw: bytes, what: str,
                   snap: Snapshot) -> list[KeyEntry]:
    """The fresh entries of the plain key ``raw`` mapped to ``user``, or Denied."""
    from idm.identity.server.snapshot import key_digest

    digest = key_digest(raw)
    entries = snap.keys_for_digest(digest)
    if not entries:
        denials = snap.denied_for_digest(digest)
        if denials:
            d = denials[0]
            why = f": {d.reason}" if d.reason else ""
            raise Denied(f"{what}: certificate {d.certificate[:16]} is {d.status}{why}")
        raise Denied(f"{what}: no approved, valid certificate holds this key")
    mine = [e for e in entries if e.username == user]
    if not mine:
        others = ", ".join(sorted({e.username for e in entries}))
        raise Denied(
            f"{what}: certificate {entries[0].certificate[:16]} ({entries[0].subject}) is "
            f"mapped to {others}, not to {user}"
        )
    if any(e.key_type != key_type for e in mine):
        raise Denied(f"{what}: key type does not match the key ({mine[0].key_type})")
    fresh = [e for e in mine if e.valid_until > snap.now]
    if not fresh:
        e = mine[0]
        raise Denied(
            f"{what}: certificate {e.certificate[:16]} ({e.subject}) is no longer fresh "
            f"(until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(e.valid_until))}); "
            "run `idm refresh`"
        )
    return fresh


def _allowed(what: str, entry: KeyEntry, log_file: str | None) -> None:
    _log(f"{what}: certificate {entry.certificate[:16]} ({entry.subject}) by rule "
         f"{entry.rule}", log_file, denied=False)


def _plain(args: HelperArguments, raw: bytes, snap: Snapshot) -> list[str]:
    assert args.key_type is not None
    what = f"user {args.user} key {args.key_type} {_ssh_fingerprint(raw)}"
    fresh = _fresh_entries(args.user, args.key_type, raw, what, snap)
    _allowed(what, fresh[0], args.log_file)
    return sorted({e.line for e in fresh})


def _pkix_plain_key(args: HelperArguments, raw: bytes, snap: Snapshot) -> list[str]:
    """PKIX-SSH's sshd: %t an X.509 key type, %k the plain key of the certificate."""
    assert args.key_type is not None
    key_type = _blob_key_type(raw) or "?"
    what = f"user {args.user} key {key_type} {_ssh_fingerprint(raw)} (sshd asked for " \
           f"{args.key_type})"
    if X509_PLAIN_KEY_TYPES.get(args.key_type) != key_type:
        raise Denied(f"{what}: {args.key_type} is not an X.509 key type of a {key_type} key")
    fresh = [e for e in _fresh_entries(args.user, key_type, raw, what, snap) if e.x509_line]
    if not fresh:
        raise Denied(f"{what}: the snapshot has no X.509 line for this key; run `idm refresh`")
    _allowed(what, fresh[0], args.log_file)
    return sorted({e.x509_line for e in fresh})


def _all_for_user(args: HelperArguments, snap: Snapshot) -> list[str]:
    fresh = [e for e in snap.keys_for_user(args.user) if e.valid_until > snap.now]
    if not fresh:
        raise Denied(f"user {args.user}: no fresh certificate is mapped to this user")
    return sorted({e.line for e in fresh})


def main(argv: list[str]) -> int:
    """Run the helper; returns the exit status (0: lines printed)."""
    log_file: str | None = None
    try:
        try:
            args = parse_arguments(argv)
        except _Help:
            sys.stdout.write(USAGE)
            return 0
        log_file = args.log_file
        # A certificate from sshd is validated now (x509_login, needs the configuration);
        # PKIX-SSH's sshd sends an X.509 key type with the plain key, answered from the
        # snapshot like a plain key.
        raw = _decode_blob(args.key_blob) if args.key_blob is not None else b""
        certificate = (args.key_type or "").startswith("x509v3-") and (
            _blob_key_type(raw) or "x509v3-").startswith("x509v3-")
        # With --snapshot, the snapshot paths need nothing from the configuration, and
        # skipping it saves reading TOML at every login.
        config = None
        if args.snapshot is None or certificate:
            config = _config(args)
        snap = _open_snapshot(args, config)
        try:
            if args.key_type is None:
                lines = _all_for_user(args, snap)
            elif certificate:
                from idm.identity.server.x509_login import authorize_x509

                assert config is not None  # loaded above for a certificate
                lines = authorize_x509(args.user, args.key_type, raw, config, snap,
                                       args.log_file)
            elif args.key_type.startswith("x509v3-"):
                lines = _pkix_plain_key(args, raw, snap)
            else:
                lines = _plain(args, raw, snap)
        finally:
            snap.close()
        out = "".join(line + "\n" for line in lines)
        try:
            sys.stdout.write(out)
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            return EXIT_DENIED
        return 0
    except Denied as exc:
        _log(str(exc), log_file, denied=True)
        return EXIT_USAGE if str(exc).startswith("usage:") else EXIT_DENIED
    except Exception as exc:  # noqa: BLE001 - fail closed, one line, never a traceback
        _log(f"internal error: {type(exc).__name__}: {exc}", log_file, denied=True)
        return EXIT_DENIED
    except KeyboardInterrupt:
        _log("interrupted", log_file, denied=True)
        return EXIT_DENIED
