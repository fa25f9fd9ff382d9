"""SoftHSM2 tokens for tests (stable API: agent, server, demo and token tests import it).

Every test gets its own SoftHSM2 configuration and token folder under ``tmp_path``::

    from tests.softhsm import SoftHSM, softhsm, softhsm_second  # fixtures are imported too

    def test_something(softhsm):                     # env SOFTHSM2_CONF points at it
        tok = softhsm.init_token("alice-card")       # pin "1234", so_pin "12345678"
        softhsm.generate_key(tok, "rsa2048", key_id=b"\\x01", label="k1")
        softhsm.import_certificate(tok, cert, key_id=b"\\x01", label="k1")
        softhsm.import_private_key(tok, key, key_id=b"\\x02", label="k2")  # e.g. sample-ca's
        tok.uri            # "pkcs11:token=alice-card;serial=..."  (no PIN)
        tok.uri_with_pin   # same + "?pin-value=1234"
        softhsm.remove(tok); softhsm.reinsert(tok)   # card out / card in
        softhsm.env        # {"SOFTHSM2_CONF": ...} for subprocesses (already in os.environ)

API (keep it stable):

- ``SOFTHSM_MODULE``: the Debian SoftHSM2 module path. ``SPY_MODULE``: OpenSC's
  pkcs11-spy (logs every PKCS#11 call; env ``PKCS11SPY`` = real module,
  ``PKCS11SPY_OUTPUT`` = log file), or None if not installed.
- ``SoftHSM(root, module=SOFTHSM_MODULE, conf_env="SOFTHSM2_CONF")``: one SoftHSM2 "box":
  ``root``, ``tokendir``, ``conf``, ``module``, ``conf_env``, ``env``; methods
  ``init_token(label, pin="1234", so_pin="12345678", serial=None) -> SoftHSMToken``
  (``serial``: up to 16 hex digits; SoftHSM2 2.6 derives the slot id from it),
  ``remove(token)`` (moves the token's folder out: the card is pulled),
  ``reinsert(token, into=None)`` (moves it back, or into another SoftHSM's token folder:
  the card goes into another reader), ``present(token) -> bool``,
  ``generate_key(token, kind, key_id, label)`` (kind rsa2048|rsa3072|ec-p256|ec-p384|ec-p521,
  with pkcs11-tool), ``import_certificate(token, cert, key_id, label)``,
  ``import_private_key(token, key, key_id, label)`` (cert/key: `cryptography` objects,
  DER/PEM bytes or a path), ``pkcs11_tool(*args, token=None, login=False)``,
  ``reinitialize()`` (makes a module already loaded in this process re-read the config
  and token list; the fixtures do this for you).
- ``SoftHSMToken`` (frozen): ``label``, ``pin``, ``so_pin``, ``serial``, ``dirname``,
  ``module``; properties ``uri``, ``uri_with_pin``.
- ``second_module(directory) -> str``: a copy of libsofthsm2.so that reads its
  configuration from ``SOFTHSM2_CON2`` instead of ``SOFTHSM2_CONF`` (one byte of the
  variable name is changed in the copy), so two module paths with *different* tokens
  are loaded at once, like two vendors' modules. (A symlink to the same file would be
  the same module instance: PKCS#11 modules are per file, see
  idm.identity.tokens.session.)
- ``CountingPin(pin)``: a PIN provider that answers ``pin`` and keeps every request in
  ``.requests``.
- pytest fixtures: ``softhsm`` (a fresh SoftHSM, SOFTHSM2_CONF set) and
  ``softhsm_second`` (a fresh SoftHSM on the second module, SOFTHSM2_CON2 set); import
  them into a test module (or conftest) to use them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
_SPY_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so",
    "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so",
    "/usr/lib/pkcs11/pkcs11-spy.so",
)
SPY_MODULE: str | None = next((p for p in _SPY_CANDIDATES if os.path.exists(p)), None)
SECOND_CONF_ENV = "SOFTHSM2_CON2"

_KEY_TYPES = {
    "rsa2048": "rsa:2048",
    "rsa3072": "rsa:3072",
    "ec-p256": "EC:prime256v1",
    "ec-p384": "EC:secp384r1",
    "ec-p521": "EC:secp521r1",
}


class SoftHSMError(RuntimeError):
    """A SoftHSM2 or pkcs11-tool command failed; the message carries its stderr."""


def _run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SoftHSMError(
            f"{' '.join(cmd[:3])}... exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


@dataclass(frozen=True)
class SoftHSMToken:
    label: str
    pin: str
    so_pin: str
    serial: str
    dirname: str  # the token's folder name inside a token directory
    module: str

    @property
    def uri(self) -> str:
        from idm.identity.tokens.uri import Pkcs11Uri

        return str(Pkcs11Uri(token=self.label, serial=self.serial))

    @property
    def uri_with_pin(self) -> str:
        return f"{self.uri}?pin-value={self.pin}"


class SoftHSM:
    """One SoftHSM2 configuration and token folder (see the module docstring)."""

    def __init__(
        self, root: Path, *, module: str = SOFTHSM_MODULE, conf_env: str = "SOFTHSM2_CONF"
    ) -> None:
        self.root = Path(root)
        self.tokendir = self.root / "tokens"
        self.removed_dir = self.root / "removed"
        self.tokendir.mkdir(parents=True, exist_ok=True)
        self.removed_dir.mkdir(exist_ok=True)
        self.conf = self.root / "softhsm2.conf"
        self.conf.write_text(
            f"directories.tokendir = {self.tokendir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = true\n"
        )
        self.module = module
        self.conf_env = conf_env
        self._tokens: dict[str, SoftHSMToken] = {}

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (os.environ plus this SoftHSM's config variable)."""
        env = dict(os.environ)
        env[self.conf_env] = str(self.conf)
        return env

    def _util_env(self) -> dict[str, str]:
        # softhsm2-util is linked against the stock library: always SOFTHSM2_CONF.
        env = dict(os.environ)
        env["SOFTHSM2_CONF"] = str(self.conf)
        return env

    def init_token(
        self, label: str, pin: str = "1234", so_pin: str = "12345678", serial: str | None = None
    ) -> SoftHSMToken:
        before = set(os.listdir(self.tokendir))
        cmd = [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            so_pin,
            "--pin",
            pin,
        ]
        if serial is not None:
            cmd += ["--serial", serial]
        _run(cmd, self._util_env())
        new = sorted(set(os.listdir(self.tokendir)) - before)
        if len(new) != 1:
            raise SoftHSMError(f"expected one new token folder, found {new}")
        dirname = new[0]
        # SoftHSM2 names the folder after a UUID whose last 16 hex digits are the serial.
        token_serial = serial if serial is not None else dirname.replace("-", "")[-16:]
        token = SoftHSMToken(label, pin, so_pin, token_serial, dirname, self.module)
        self._tokens[dirname] = token
        return token

    def _where(self, token: SoftHSMToken) -> Path | None:
        for base in (self.tokendir, self.removed_dir):
            if (base / token.dirname).exists():
                return base / token.dirname
        return None

    def present(self, token: SoftHSMToken) -> bool:
        return (self.tokendir / token.dirname).exists()

    def remove(self, token: SoftHSMToken) -> None:
        """Pull the card: move its folder out of the token directory."""
        shutil.move(str(self.tokendir / token.dirname), str(self.removed_dir / token.dirname))

    def reinsert(self, token: SoftHSMToken, into: SoftHSM | None = None) -> None:
        """Put the card back (or into another SoftHSM, i.e. another module/reader)."""
        target = (into or self).tokendir / token.dirname
        shutil.move(str(self.removed_dir / token.dirname), str(target))

    def reinitialize(self) -> None:
        """Make an already loaded module re-read config and tokens (C_Finalize/C_Initialize)."""
        from idm.identity.tokens.session import reinitialize_loaded

        reinitialize_loaded(self.module)

    def pkcs11_tool(
        self,
        *args: str,
        token: SoftHSMToken | None = None,
        login: bool = False,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        cmd = ["pkcs11-tool", "--module", self.module]
        if token is not None:
            cmd += ["--token-label", token.label]
            if login:
                cmd += ["--login", "--pin", token.pin]
        cmd += list(args)
        return _run(cmd, self.env, check=check)

    def generate_key(self, token: SoftHSMToken, kind: str, key_id: bytes, label: str) -> None:
        if kind not in _KEY_TYPES:
            raise ValueError(f"kind must be one of {', '.join(_KEY_TYPES)}")
        self.pkcs11_tool(
            "--keypairgen",
            "--key-type",
            _KEY_TYPES[kind],
            "--id",
            key_id.hex(),
            "--label",
            label,
            "--usage-sign",
            token=token,
            login=True,
        )

    def _write_object(
        self, token: SoftHSMToken, der: bytes, kind: str, key_id: bytes, label: str
    ) -> None:
        path = self.root / f"object-{os.getpid()}-{key_id.hex()}.der"
        path.write_bytes(der)
        try:
            self.pkcs11_tool(
                "--write-object",
                str(path),
                "--type",
                kind,
                "--id",
                key_id.hex(),
                "--label",
                label,
                token=token,
                login=True,
            )
        finally:
            path.unlink()

    def import_certificate(
        self,
        token: SoftHSMToken,
        cert: x509.Certificate | bytes | Path,
        key_id: bytes,
        label: str,
    ) -> None:
        if isinstance(cert, Path):
            cert = cert.read_bytes()
        if isinstance(cert, bytes):
            cert = (
                x509.load_pem_x509_certificate(cert)
                if b"-----BEGIN" in cert
                else x509.load_der_x509_certificate(cert)
            )
        self._write_object(
            token, cert.public_bytes(serialization.Encoding.DER), "cert", key_id, label
        )

    def import_private_key(
        self,
        token: SoftHSMToken,
        key: Any,
        key_id: bytes,
        label: str,
        password: bytes | None = None,
    ) -> None:
        if isinstance(key, Path):
            key = key.read_bytes()
        if isinstance(key, bytes):
            key = (
                serialization.load_pem_private_key(key, password)
                if b"-----BEGIN" in key
                else serialization.load_der_private_key(key, password)
            )
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._write_object(token, der, "privkey", key_id, label)
        # pkcs11-tool writes no public key object for an imported private key; EC
        # pairing needs the point, so store the public key too.
        pub = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._write_object(token, pub, "pubkey", key_id, label)


def second_module(directory: Path) -> str:
    """A copy of libsofthsm2.so that reads SOFTHSM2_CON2 (see the module docstring)."""
    target = Path(directory) / "libsofthsm2-second.so"
    if not target.exists():
        data = Path(SOFTHSM_MODULE).read_bytes()
        old, new = b"SOFTHSM2_CONF\x00", SECOND_CONF_ENV.encode() + b"\x00"
        if data.count(old) != 1:
            raise SoftHSMError("cannot make a second SoftHSM2 module: unexpected library layout")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data.replace(old, new))
        tmp.chmod(0o755)
        tmp.rename(target)
    return str(target)


@pytest.fixture
def softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHSM]:
    """A fresh SoftHSM2 box on the stock module; SOFTHSM2_CONF points at it."""
    box = SoftHSM(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(box.conf))
    box.reinitialize()
    yield box


@pytest.fixture
def softhsm_second(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SoftHSM]:
    """A fresh SoftHSM2 box on the second module path; SOFTHSM2_CON2 points at it."""
    # One copy per test session: a module is loaded once per process and file.
    module = second_module(tmp_path_factory.getbasetemp())
    box = SoftHSM(tmp_path / "softhsm-second", module=module, conf_env=SECOND_CONF_ENV)
    monkeypatch.setenv(SECOND_CONF_ENV, str(box.conf))
    box.reinitialize()
    yield box


class CountingPin:
    """A PIN provider that records every request (to prove how often a PIN was asked)."""

    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.requests: list[Any] = []  # idm.identity.tokens.pin.PinRequest

    def __call__(self, request: Any) -> str:
        self.requests.append(request)
        return self.pin
