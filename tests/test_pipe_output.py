"""Every command's output into a pipe (a script, a timer's journal, `| less`) carries no
terminal escape codes: colour, bold and self-rewriting progress lines are for terminals."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sample_ca_fixture import SampleCA

from idm.cli.main import COMMANDS
from tests.server.helpers import safe_folder, write_config
from tests.softhsm import SOFTHSM_MODULE, SoftHSM, softhsm  # noqa: F401  (fixture)
from tests.terminal import IDM

ESC = "\x1b"


def run_piped(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*IDM, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_every_command_into_a_pipe_is_plain(command: str) -> None:
    r = run_piped(command, "--help")
    assert r.returncode == 0, r.stderr
    assert ESC not in r.stdout + r.stderr


@pytest.mark.softhsm
def test_commands_into_a_pipe_are_plain(tmp_path: Path, served_sample_ca: SampleCA,
                                        softhsm: SoftHSM) -> None:  # noqa: F811
    """Each command run for real (answers, tables, reports, errors) with stdout and stderr
    going to pipes."""
    ca = served_sample_ca
    token = softhsm.init_token("pipe-card")
    state = safe_folder()  # the helper refuses a configuration or snapshot below /tmp
    config = write_config(state / "config.toml", ca=ca.ca_bundle, untrusted=ca.chain,
                          snapshot=state / "snapshot.sqlite",
                          db=f"sqlite:///{tmp_path / 'inventory.sqlite'}",
                          extra=f'[tokens]\nproviders = ["{SOFTHSM_MODULE}"]\n')
    cert = ca.user_cert("alice")

    def sha256(pem: bytes) -> str:
        return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(
            serialization.Encoding.DER)).hexdigest()
    export = tmp_path / "export.json"
    common = ["--config", str(config)]
    runs = [
        ["db", "upgrade"],
        ["tokens"],
        ["objects", token.uri_with_pin],
        ["verify", str(cert)],
        ["enroll", "--token", f"{token.uri};manufacturer=SoftHSM%20project;model=SoftHSM%20v2",
         "--cert", str(cert)],
        ["list"],
        ["show", "alice"],  # an error (exit 2): not a fingerprint
        ["events"],
        ["allow", "alice", "--principal", "alice@example.org"],
        ["refresh"],
        ["krl", "--output", str(tmp_path / "revoked.krl")],
        ["export", "--output", str(export)],
        ["import", str(export)],
        ["authorized-keys", "--snapshot", str(state / "snapshot.sqlite"), "alice"],
        ["agent", "-k"],  # an error (exit 2): no agent to stop
        ["status"],
        ["doctor"],  # exit 0 or 1, depending on this machine's sshd and agent
        ["token", "retire", "1", "--yes"],
        ["forget", sha256(cert.read_bytes()), "--yes"],
    ]
    try:
        for args in runs:
            r = run_piped(*common, *args, env=softhsm.env)
            assert ESC not in r.stdout + r.stderr, (args, r.stdout, r.stderr)
            expected = {"show": (2,), "agent": (2,), "doctor": (0, 1)}.get(args[0], (0,))
            assert r.returncode in expected, (args, r.stderr)
            assert r.stdout or r.stderr, args  # each said something
    finally:
        shutil.rmtree(state)
