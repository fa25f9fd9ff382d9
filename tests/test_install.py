"""`make install` into a temporary root: the venv and entry point as sshd requires them,
the systemd units (checked by systemd-analyze), man pages, bash completion, and a real sshd
login through the installed `idm authorized-keys`.

Everything goes under one root-owned 0755 folder in /run (not /tmp, which is
world-writable: sshd would refuse a helper below it), removed at the end.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sample_ca_fixture import make_sample_ca, serving

from idm.cli.main import COMMANDS
from tests.server.helpers import write_config
from tests.sshd import SshdUnavailable, start_sshd

REPO = Path(__file__).resolve().parent.parent
BASE = Path("/run/idm-install-tests")


@dataclass(frozen=True)
class Installed:
    root: Path
    prefix: Path
    bindir: Path
    mandir: Path
    bashcompdir: Path
    systemddir: Path
    systemduserdir: Path
    output: str

    @property
    def idm(self) -> Path:
        return self.bindir / "idm"

    def make_install(self, target: str = "install") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-C", str(REPO), target, f"PREFIX={self.prefix}", f"BINDIR={self.bindir}",
             f"MANDIR={self.mandir}", f"BASHCOMPDIR={self.bashcompdir}",
             f"SYSTEMDDIR={self.systemddir}", f"SYSTEMDUSERDIR={self.systemduserdir}"],
            capture_output=True, text=True, timeout=900, check=False,
        )


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if os.geteuid() != 0:
        pytest.skip("make install for sshd's helper makes root-owned files: it needs root")
    BASE.mkdir(mode=0o755, exist_ok=True)
    os.chmod(BASE, 0o755)
    root = Path(tempfile.mkdtemp(prefix="i-", dir=BASE))
    os.chmod(root, 0o755)
    layout = Installed(root, root / "opt" / "idm", root / "bin", root / "man",
                       root / "bash-completion", root / "systemd-system",
                       root / "systemd-user", "")
    try:
        r = layout.make_install()
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        yield Installed(**{**layout.__dict__, "output": r.stdout + r.stderr})
    finally:
        shutil.rmtree(root, ignore_errors=True)


def unsafe_components(path: Path) -> list[str]:
    """What sshd's check of an AuthorizedKeysCommand would refuse: the resolved file and
    every folder above it must be root-owned and not group- or world-writable."""
    problems = []
    current = path.resolve()
    while True:
        st = current.stat()
        if st.st_uid != 0:
            problems.append(f"{current} is owned by uid {st.st_uid}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"{current} is group/world-writable ({oct(st.st_mode & 0o777)})")
        if current == current.parent:
            return problems
        current = current.parent


def test_install_makes_a_root_owned_idm_that_anyone_can_run(installed: Installed) -> None:
    assert installed.idm.is_symlink()
    assert installed.idm.resolve() == (installed.prefix / "bin" / "idm").resolve()
    assert unsafe_components(installed.idm) == []
    # a private tree of the package is world-readable (AuthorizedKeysCommandUser nobody)
    for path in installed.prefix.rglob("*"):
        if not path.is_symlink():
            mode = path.stat().st_mode
            assert mode & stat.S_IROTH, path
            assert not mode & (stat.S_IWGRP | stat.S_IWOTH), path
    r = subprocess.run(["runuser", "-u", "nobody", "--", str(installed.idm), "--version"],
                       capture_output=True, text=True, check=False, cwd="/")
    assert r.returncode == 0 and "idm, version" in r.stdout, r.stderr
    # the install is quiet: no setuptools deprecation banner, no sudo
    assert "deprecated" not in installed.output and "BuildBackendWarning" not in installed.output
    assert "sudo" not in installed.output


def test_installed_units_run_the_installed_idm_and_pass_systemd_analyze(
    installed: Installed, tmp_path: Path
) -> None:
    units = {
        installed.systemddir / "idm-refresh.service": "refresh",
        installed.systemddir / "idm-refresh.timer": None,
        installed.systemduserdir / "idm-agent.service": "agent -D",
    }
    for unit, command in units.items():
        text = unit.read_text()
        assert text == (REPO / "systemd" / unit.name).read_text().replace(
            "/usr/local/bin/idm", str(installed.idm))
        if command:
            assert f"ExecStart={installed.idm} " in text and command in text
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # MANPATH: the Documentation=man:… lines must name pages the install wrote.
    env = dict(os.environ, MANPATH=str(installed.mandir), XDG_RUNTIME_DIR=str(tmp_path))
    system = subprocess.run(
        [analyze, "verify", *(str(u) for u in units if u.parent == installed.systemddir)],
        capture_output=True, text=True, env=env, check=False)
    assert system.returncode == 0 and system.stderr == "", system.stderr
    user = subprocess.run(
        [analyze, "--user", "verify", str(installed.systemduserdir / "idm-agent.service")],
        capture_output=True, text=True, env=env, check=False)
    assert user.returncode == 0 and user.stderr == "", user.stderr


def test_man_pages_for_every_command_say_what_help_says(installed: Installed) -> None:
    man1 = installed.mandir / "man1"
    expected = {"idm.1", *(f"idm-{c}.1" for c in COMMANDS), "idm-db-upgrade.1"}
    assert expected <= {p.name for p in man1.iterdir()}
    for page in sorted(man1.iterdir()):
        # groff's warnings (-ww) on, no output: the roff is clean
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0 and r.stderr == "", (page, r.stderr)
    rendered = subprocess.run(["man", "-l", str(man1 / "idm-export.1")], capture_output=True,
                              text=True, env=dict(os.environ, MANWIDTH="200"), check=True)
    help_text = subprocess.run([str(installed.idm), "export", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for option in ("-o, --output FILE", "Write the export document here (default: stdout)."):
        assert option in help_text and option in rendered.stdout
    assert "idm export [OPTIONS] [FINGERPRINT]..." in rendered.stdout


def test_bash_completion_is_installed_and_completes(installed: Installed) -> None:
    script = installed.bashcompdir / "idm"
    r = subprocess.run(
        ["bash", "-c",
         f'PATH={installed.bindir}:$PATH; source {script}; '
         'COMP_WORDS=(idm exp); COMP_CWORD=1; _idm_completion idm; echo "${COMPREPLY[@]}"; '
         'COMP_WORDS=(idm export --); COMP_CWORD=2; COMPREPLY=(); _idm_completion idm; '
         'echo "${COMPREPLY[@]}"'],
        capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["export", "--output --help"]


def test_sshd_runs_the_installed_helper(installed: Installed, tmp_path: Path) -> None:
    """The installed idm on a server: a certificate registered by hand (`idm enroll --cert`
    for a card that is not there), `idm allow`, `idm refresh`, and an sshd login whose
    AuthorizedKeysCommand is BINDIR/idm, run as nobody."""
    ca = make_sample_ca(tmp_path)
    state = installed.root / "state"
    state.mkdir(mode=0o755, exist_ok=True)
    shutil.copy(ca.ca_bundle, state / "ca.pem")
    shutil.copy(ca.chain, state / "chain.pem")
    config = write_config(state / "config.toml", ca=state / "ca.pem", untrusted=state / "chain.pem",
                          snapshot=state / "snapshot.sqlite",
                          db=f"sqlite:///{tmp_path / 'server.sqlite'}", mapping=("principals",))
    cert = ca.user("olga")
    other = ca.user("pete")

    def idm(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(installed.idm), "--config", str(config), *args],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, (args, r.stderr)
        return r

    with serving(ca):
        idm("enroll", "--token",
            "pkcs11:token=olga-card;manufacturer=Example;model=Card;serial=0042", "--cert",
            str(cert))
        try:
            sshd = start_sshd(tmp_path / "sshd", extra_config=[
                f"AuthorizedKeysCommand {installed.idm} authorized-keys --config {config} "
                "%u %t %k",
                "AuthorizedKeysCommandUser nobody",
            ])
        except SshdUnavailable as exc:
            pytest.skip(str(exc))
        try:
            idm("allow", sshd.user, "--principal", "olga@example.org")
            idm("refresh")

            def login(c: Path) -> subprocess.CompletedProcess[str]:
                key = str(c)[: -len(".pem")] + ".key"
                return subprocess.run(
                    sshd.ssh_command("echo", "logged-in", options=[
                        f"IdentityFile={key}", "IdentitiesOnly=yes", "IdentityAgent=none"]),
                    capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                    check=False)

            r = login(cert)
            assert r.returncode == 0 and r.stdout.strip() == "logged-in", (
                r.stderr + sshd.log_text()[-3000:])
            assert login(other).returncode == 255
            log = sshd.log_text()
            assert "Unsafe AuthorizedKeysCommand" not in log
            assert f"Accepted publickey for {sshd.user}" in log
        finally:
            sshd.stop()


def test_uninstall_removes_it_and_install_runs_again(installed: Installed) -> None:
    gone = installed.make_install("uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not installed.idm.exists() and not installed.prefix.exists()
    assert not (installed.systemddir / "idm-refresh.service").exists()
    assert not (installed.systemduserdir / "idm-agent.service").exists()
    assert not list((installed.mandir / "man1").glob("idm*.1"))
    assert not (installed.bashcompdir / "idm").exists()
    again = installed.make_install()  # into the folders the first install left
    assert again.returncode == 0, again.stderr[-3000:]
    r = subprocess.run([str(installed.idm), "--version"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0 and "idm, version" in r.stdout


def test_the_units_shown_in_the_docs_are_the_shipped_files() -> None:
    """docs/agent.md shows the whole user unit, docs/server.md the refresh service's
    [Service] lines: both as in systemd/, comments aside."""
    def settings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    agent_doc = (REPO / "docs" / "agent.md").read_text()
    agent_unit = settings((REPO / "systemd" / "idm-agent.service").read_text())
    shown = agent_doc.split("```ini\n", 1)[1].split("```", 1)[0]
    assert settings(shown) == agent_unit
    server_doc = (REPO / "docs" / "server.md").read_text()
    refresh_unit = settings((REPO / "systemd" / "idm-refresh.service").read_text())
    shown = server_doc.split("## 4. The refresh timer", 1)[1].split("```ini\n", 1)[1]
    lines = settings(shown.split("```", 1)[0])
    assert lines and all(line in refresh_unit for line in lines), lines
