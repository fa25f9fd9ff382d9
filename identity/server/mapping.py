"""Certificate → login user: the ordered mapping rules of ``[server] mapping``.

A certificate maps to the users named by the FIRST rule, in the configured order, that
names any user; later rules are not consulted. So with the default order
``["principals", "email", "upn", "cn"]`` an explicit authorization overrides the automatic
rules, and a certificate with an e-mail address is never mapped by its CN as well.

Rules:

``principals``
    Explicit authorizations: ``idm allow USER --subject DN`` / ``--principal NAME`` rows
    of the inventory, and one file per user in ``[server] principals_dir`` (the file's
    name is the user name; each line a subject DN — any line containing ``=`` — or a
    principal name; ``#`` starts a comment). A DN matches a certificate whose subject is
    the same distinguished name (attribute types and values compared, not spacing). A
    principal name matches the certificate's subject CN, any SAN e-mail address or any
    SAN UPN, compared exactly (e-mail and UPN domains case-insensitively).
``email``
    The local part of each SAN rfc822Name (``alice@example.org`` → ``alice``).
``upn``
    The local part of each SAN otherName UPN (1.3.6.1.4.1.311.20.2.3).
``cn``
    The subject's commonName.

Names that are not usable as a Unix user name (empty, with ``/``, whitespace or control
characters, or starting with ``-``) are ignored, never mapped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from idm.identity.certnames import (
    CertificateNames,
    MalformedNamesError,
    fold_domain,
)
from idm.validator.inputfile import InputFileError, read_input_file

if TYPE_CHECKING:
    from idm.validator.inputfile import FileCheck

RULES = ("principals", "email", "upn", "cn")
# What a Unix user name may look like here (POSIX portable set plus @ for AD-style names).
_USERNAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,255}")
MAX_PRINCIPALS_FILE = 1 << 20


class MappingError(ValueError):
    """A mapping rule or principals file cannot be used (one-line message)."""


def valid_username(name: str) -> bool:
    """True when ``name`` is acceptable as a login user name."""
    return bool(_USERNAME.fullmatch(name)) and not name.startswith("-")


@dataclass(frozen=True)
class Explicit:
    """One explicit authorization: USER may log in with certificates matching ``value``."""

    username: str
    kind: str  # "subject" or "principal"
    value: str


def _local_part(address: str) -> str | None:
    local, sep, _domain = address.rpartition("@")
    return local if sep and local else None


def _tidy_dn(text: str) -> str:
    """Drop blanks around unescaped RDN separators (``CN=a, O=b`` → ``CN=a,O=b``)."""
    out: list[str] = []
    escaped = False
    skip_blanks = False
    for c in text.strip():
        if escaped:
            out.append(c)
            escaped = False
            continue
        if c == "\\":
            escaped = True
            skip_blanks = False
            out.append(c)
            continue
        if c in ",+":
            while out and out[-1] == " " and not (len(out) > 1 and out[-2] == "\\"):
                out.pop()
            out.append(c)
            skip_blanks = True
            continue
        if skip_blanks and c == " ":
            continue
        skip_blanks = False
        out.append(c)
    return "".join(out)


def parse_dn(text: str) -> x509.Name:
    """An RFC 4514 DN (``CN=alice,O=Example,C=XX``); MappingError if it cannot be parsed."""
    try:
        name = x509.Name.from_rfc4514_string(_tidy_dn(text))
    except ValueError as exc:
        detail = str(exc) or "malformed"
        raise MappingError(f"{text!r} is not a distinguished name: {detail}") from None
    if not len(name):
        raise MappingError(f"{text!r} is not a distinguished name: it is empty")
    return name


def _same_dn(a: x509.Name, b: x509.Name) -> bool:
    # Attribute types and values in order; value case is significant except for domain-ish
    # types, which we do not try to guess: exact equality is the safe choice.
    return [(x.oid, x.value) for x in a] == [(y.oid, y.value) for y in b]


def read_principals_dir(
    directory: Path | None, check: FileCheck | None = None
) -> list[Explicit]:
    """The explicit authorizations in ``principals_dir`` (one file per user).

    ``check`` is applied to each file before it is read: the sshd helper and `idm refresh`
    pass sshd's StrictModes (idm.identity.server.strictmodes), since whoever can write a
    principals file grants logins."""
    if directory is None:
        return []
    try:
        files = sorted(p for p in Path(directory).iterdir() if p.is_file())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise MappingError(f"cannot read principals_dir {directory}: {exc.strerror}") from None
    found: list[Explicit] = []
    for path in files:
        user = path.name
        if user.startswith(".") or not valid_username(user):
            continue
        try:
            text = read_input_file(
                path, "principals file", MAX_PRINCIPALS_FILE, check
            ).decode("utf-8")
        except InputFileError as exc:
            raise MappingError(str(exc)) from None
        except UnicodeDecodeError:
            raise MappingError(f"principals file {path}: not UTF-8 text") from None
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "=" in line:
                parse_dn(line)  # reject a broken DN now, with its file and line
                found.append(Explicit(user, "subject", line))
            else:
                found.append(Explicit(user, "principal", line))
            if n > 100_000:
                break
    return found


@dataclass
class Mapper:
    """Applies the ordered rules to certificates.

    ``explicit`` holds the inventory's ``idm allow`` rows and the principals files.
    """

    rules: Sequence[str] = RULES
    explicit: Sequence[Explicit] = ()
    _subjects: list[tuple[x509.Name, str]] = field(default_factory=list, init=False)
    _principals: dict[str, set[str]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise MappingError(f"unknown mapping rule {unknown[0]!r} (rules: {', '.join(RULES)})")
        for e in self.explicit:
            if not valid_username(e.username):
                continue
            if e.kind == "subject":
                self._subjects.append((parse_dn(e.value), e.username))
            elif e.kind == "principal":
                self._principals.setdefault(fold_domain(e.value), set()).add(e.username)
            else:
                raise MappingError(f"unknown explicit authorization kind {e.kind!r}")

    def users_by_rule(self, names: CertificateNames, rule: str) -> set[str]:
        """The users one rule names for a certificate (possibly none)."""
        users: set[str] = set()
        if rule == "principals":
            for dn, user in self._subjects:
                if _same_dn(dn, names.subject):
                    users.add(user)
            for name in names.principal_names():
                users.update(self._principals.get(name, ()))
        elif rule == "email":
            users.update(u for u in map(_local_part, names.emails) if u)
        elif rule == "upn":
            users.update(u for u in map(_local_part, names.upns) if u)
        elif rule == "cn":
            users.update(names.common_names)
        return {u for u in users if valid_username(u)}

    def map(self, cert: x509.Certificate) -> tuple[str | None, set[str]]:
        """(deciding rule, users) for a certificate; (None, set()) when unmapped."""
        try:
            names = CertificateNames.of(cert)
        except MalformedNamesError as exc:  # map by nothing from a broken SAN
            raise MappingError(str(exc)) from None
        for rule in self.rules:
            users = self.users_by_rule(names, rule)
            if users:
                return rule, users
        return None, set()


def explicit_from_records(records: Iterable[object]) -> list[Explicit]:
    """Explicit authorizations from inventory ``PrincipalRecord`` rows."""
    out = []
    for r in records:
        out.append(Explicit(r.username, r.kind, r.value))  # type: ignore[attr-defined]
    return out
