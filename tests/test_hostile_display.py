"""Terminal escapes and newlines in certificates and card labels, through every table.

A subject or a token label is the certificate's or card's maker's text: ESC sequences in
it cleared the screen and set the window title, a newline in it forged table rows and log
lines. Every human-readable line of the CLI passes it through the one filter
(idm.identity.display.printable); `--json` keeps the exact value.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.softhsm import SoftHSM, softhsm  # noqa: F401  (fixture)
from tests.validator.pki import make_cert, pem

IDM = str(Path(sys.executable).with_name("idm"))
# A window title, a screen clear, a forged log line and a bidirectional override.
HOSTILE_CN = "mallory\x1b]0;owned\x07\x1b[2J\nidm authorized-keys: ALLOW: user root"
HOSTILE_O = "x\r\n\u202eevil"
HOSTILE_LABEL = "card\x1b[2J\nfake"  # a token label (32 bytes at most)


def hostile_subject() -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, HOSTILE_CN),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, HOSTILE_O),
    ])


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDM, *args], capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


def assert_clean(proc: subprocess.CompletedProcess[str], *, names_subject: bool = True) -> None:
    """No control character reaches the terminal; each shown text stays on its line."""
    for stream in (proc.stdout, proc.stderr):
        assert "\x1b" not in stream and "\r" not in stream and "\u202e" not in stream, stream
        assert "\nidm authorized-keys: ALLOW" not in stream, stream
    if names_subject:
        shown = "mallory?]0\\;owned??[2J?idm authorized-keys: ALLOW: user root"
        assert shown in proc.stdout + proc.stderr, proc.stdout + proc.stderr


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    root = make_cert("Root", None, ca=True)
    leaf = make_cert("x", root, subject_name=hostile_subject(),
                     eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "mallory.pem",
             "key": tmp_path / "mallory.key"}
    files["ca"].write_bytes(pem(root.cert))
    files["cert"].write_bytes(pem(leaf.cert))
    files["key"].write_bytes(leaf.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert "\x1b" in leaf.cert.subject.rfc4514_string()  # cryptography kept it
    return files


def test_inventory_tables_show_hostile_subjects_on_one_line(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'inv.sqlite'}"]
    token = ("pkcs11:token=" + quote(HOSTILE_LABEL, safe="") +
             ";manufacturer=M;model=X;serial=0001")
    enrolled = run(*db, "enroll", "--token", token, "--cert", str(pki["cert"]),
                   "--ca", str(pki["ca"]), "--revocation", "off")
    assert enrolled.returncode == 0, enrolled.stderr
    assert_clean(enrolled)

    listed = run(*db, "list")
    assert_clean(listed)
    # "Tokens (1):", header, 1 row, "", "Certificates (1):", header, 1 row
    assert len(listed.stdout.splitlines()) == 7, listed.stdout
    assert "card?[2J?fake" in listed.stdout

    data = json.loads(run(*db, "list", "--json").stdout)
    [cert] = data["certificates"]
    assert cert["subject"] == hostile_subject().rfc4514_string()  # exact in JSON
    assert data["tokens"][0]["label"] == HOSTILE_LABEL

    shown = run(*db, "show", cert["sha256"])
    assert_clean(shown)
    assert "card?[2J?fake" in shown.stdout
    assert not [line for line in shown.stdout.splitlines() if line.startswith("idm ")]
    shown_json = json.loads(run(*db, "show", cert["sha256"], "--json").stdout)
    assert shown_json["subject"] == cert["subject"]

    events = run(*db, "events")
    assert_clean(events, names_subject=False)
    assert len(events.stdout.splitlines()) == 1 + len(run(*db, "events", "--json")
                                                      .stdout.splitlines())

    verified = run(*db, "verify", "--ca", str(pki["ca"]), "--revocation", "off",
                   str(pki["cert"]), "--json")
    assert json.loads(verified.stdout)["subject"] == hostile_subject().rfc4514_string()


def test_refresh_table_shows_hostile_subjects_on_one_line(
    tmp_path: Path, pki: dict[str, Path]
) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'inv.sqlite'}"]
    token = "pkcs11:token=t;manufacturer=M;model=X;serial=0002"
    assert run(*db, "enroll", "--token", token, "--cert", str(pki["cert"]),
               "--ca", str(pki["ca"]), "--revocation", "off").returncode == 0
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[validation]\nca = ["{pki["ca"]}"]\n[revocation]\npolicy = "off"\n'
                   f'[server]\nsnapshot = "{tmp_path / "snap.sqlite"}"\nmapping = ["email"]\n')
    refreshed = run(*db, "--config", str(cfg), "refresh")
    # no e-mail address: the certificate is left out, and the report names it
    assert_clean(refreshed)


@pytest.mark.softhsm
def test_hostile_card_label_and_objects(
    softhsm: SoftHSM, tmp_path: Path, pki: dict[str, Path]  # noqa: F811
) -> None:
    tok = softhsm.init_token(HOSTILE_LABEL)
    softhsm.import_private_key(tok, pki["key"], key_id=b"\x01", label="k\x1b[31m\nred")
    softhsm.import_certificate(tok, pki["cert"], key_id=b"\x01", label="c\x1b[31m\nred")
    env = softhsm.env
    db = ["--db", f"sqlite:///{tmp_path / 'inv.sqlite'}"]

    tokens = run(*db, "tokens", env=env)
    assert tokens.returncode == 0, tokens.stderr
    assert_clean(tokens, names_subject=False)
    assert "card?[2J?fake" in tokens.stdout and len(tokens.stdout.splitlines()) == 2
    [entry] = [json.loads(line) for line in run(*db, "tokens", "--json", env=env)
               .stdout.splitlines()]
    assert entry["label"] == HOSTILE_LABEL

    objects = run(*db, "objects", "--no-login", tok.uri, env=env)
    assert objects.returncode == 0, objects.stderr
    assert_clean(objects)
    assert "c?[31m?red" in objects.stdout
    # header + the certificate + its public key (private keys need a login)
    rows = objects.stdout.splitlines()
    assert len(rows) == 1 + len(run(*db, "objects", "--no-login", "--json", tok.uri, env=env)
                                .stdout.splitlines())
    for line in run(*db, "objects", "--no-login", "--json", tok.uri, env=env).stdout.splitlines():
        obj = json.loads(line)
        if obj["type"] == "cert":
            assert obj["label"] == "c\x1b[31m\nred"
            assert obj["subject"] == hostile_subject().rfc4514_string()

    enrolled = run(*db, "enroll", "--token", tok.uri_with_pin, "--ca", str(pki["ca"]),
                   "--revocation", "off", env=env)
    assert enrolled.returncode == 0, enrolled.stderr
    assert_clean(enrolled)
    assert enrolled.stdout.startswith("token 'card") and len(enrolled.stdout.splitlines()) == 3
