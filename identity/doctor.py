"""`idm doctor`: check the set-up of this host, one finding per line, each with the fix.

Checks, in order: the configuration; the trust anchors (configured, readable, holding
certificates); the PKCS#11 providers (each loads); the inventory (opens); sshd's
configuration as `sshd -T -f FILE` prints it (is idm its AuthorizedKeysCommand?); the
helper's path (absolute, and root-owned and not writable by group or others up to `/`,
as sshd's ``safe_path()`` demands); the AuthorizedKeysCommandUser (exists, and, when run
as root, really runs the helper and reads the snapshot); the snapshot (present, fresh);
syslog (/dev/log answers); the agent (SSH_AUTH_SOCK answers, and who serves it).

Server checks run only when sshd's AuthorizedKeysCommand runs idm. A finding is ``ok``,
``fail`` (the set-up is broken: the exit status of `idm doctor` is 1), ``warn`` (works,
but with a limit worth knowing) or ``skip`` (does not apply here).
"""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import struct
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idm.identity.agent.protocol import (
    SSH_AGENT_IDENTITIES_ANSWER,
    SSH_AGENTC_REQUEST_IDENTITIES,
    frame,
)
from idm.identity.agent.server import peer_credentials
from idm.identity.config import Config
from idm.identity.server.strictmodes import check_strict_modes
from idm.identity.syslog_socket import SYSLOG_SOCKET, syslog_reachable
from idm.validator.inputfile import InputFileError

if TYPE_CHECKING:
    from idm.identity.inventory.store import Inventory

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"
SSHD = "/usr/sbin/sshd"
SSHD_CONFIG = "/etc/ssh/sshd_config"
PROBE_USER = "idm-doctor-probe"  # the user name the helper is asked about (never exists)
# sshd's %-tokens that carry a key or certificate: a probe passes none.
_KEY_TOKENS = {"%t", "%k", "%f", "%h", "%i", "%s", "%T"}


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, how it went, and what to do."""

    check: str
    status: str
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "detail": self.detail,
                "fix": self.fix}


def _anchors(config: Config) -> list[Finding]:
    from idm.validator.bundle import load_bundle
    from idm.validator.errors import MalformedInputError

    paths = list(config.validation.ca)
    if not paths:
        return [Finding("trust anchors", FAIL, "none configured",
                        'set [validation] ca = ["/etc/idm/ca.pem"] (your CA\'s certificate)')]
    found = []
    for label, group in (("trust anchors", paths), ("intermediates", config.validation.untrusted)):
        for path in group:
            try:
                count = len(load_bundle([path]))
            except (MalformedInputError, OSError, ValueError) as exc:
                said = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
                found.append(Finding(label, FAIL, said,
                                     "fix the path or the file (PEM or DER certificates)"))
                continue
            if count == 0:
                found.append(Finding(label, FAIL, f"{path}: no certificates in it",
                                     "point it at your CA's certificate(s)"))
            else:
                found.append(Finding(label, OK, f"{path} ({count} certificate(s))"))
    return found


def _providers(config: Config) -> list[Finding]:
    from idm.identity.tokens.errors import TokenError
    from idm.identity.tokens.session import ProviderSet

    if not config.tokens.providers:
        return [Finding("PKCS#11 providers", WARN, "none configured: no card can be used here",
                        'set [tokens] providers = ["/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"]'
                        " on a host with a card reader")]
    found = []
    for path in config.tokens.providers:
        try:
            tokens = ProviderSet([path]).tokens(rescan=True)
        except TokenError as exc:
            found.append(Finding("PKCS#11 provider", FAIL, str(exc),
                                 "install the module or fix [tokens] providers"))
            continue
        found.append(Finding("PKCS#11 provider", OK,
                             f"{path} loads ({len(tokens)} token(s) present)"))
    return found


def _inventory(open_inventory: Callable[[], Inventory]) -> Finding:
    from idm.identity.inventory.store import InventoryError

    try:
        inventory = open_inventory()
    except InventoryError as exc:
        return Finding("inventory", FAIL, str(exc),
                       "correct the URL, or create the inventory: `idm db upgrade`")
    try:
        approved = len(inventory.certificates(status="approved"))
        where = inventory.display_url
    except InventoryError as exc:
        return Finding("inventory", FAIL, str(exc), "check that the database server answers")
    finally:
        inventory.close()
    return Finding("inventory", OK, f"{where} ({approved} approved certificate(s))")


def sshd_settings(sshd_config: str, sshd: str = SSHD) -> dict[str, str]:
    """sshd's effective settings (`sshd -T -f FILE`), lower-case keys; RuntimeError with
    sshd's own message when it refuses."""
    try:
        done = subprocess.run([sshd, "-T", "-f", sshd_config], capture_output=True, text=True,
                              check=False, timeout=30)
    except OSError as exc:
        raise RuntimeError(f"cannot run {sshd}: {exc.strerror}") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise RuntimeError(f"`{sshd} -T -f {sshd_config}` failed: {message}")
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key.lower(), value)
    return settings


def unsafe_component(path: str) -> str | None:
    """Why sshd's safe_path() refuses `path` as a root-run program, or None.

    The resolved file must be a regular file owned by root and not writable by group or
    others, and so must every folder above it up to `/`: the helper's StrictModes rule for
    uid 0, applied to the resolved path as sshd does.
    """
    real = os.path.realpath(path)
    try:
        check_strict_modes(real, os.stat(real), uid=0)
    except OSError as exc:
        return f"{real}: {exc.strerror}"
    except InputFileError as exc:
        return str(exc)
    return None


def _probe_command(argv: list[str]) -> list[str]:
    """sshd's AuthorizedKeysCommand asking about PROBE_USER, without a key."""
    return [PROBE_USER if a == "%u" else a for a in argv if a not in _KEY_TOKENS]


def _probe_helper(argv: list[str], user: pwd.struct_passwd) -> Finding:
    """Run the helper as sshd would (as `user`, sshd's small environment) for a user that
    does not exist: reaching "no fresh certificate is mapped" proves it ran, read its
    configuration and opened a fresh snapshot."""
    command = _probe_command(argv)
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "USER": user.pw_name,
           "LOGNAME": user.pw_name, "HOME": user.pw_dir}
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60,
                              env=env, user=user.pw_uid, group=user.pw_gid,
                              extra_groups=groups, cwd="/")
    except OSError as exc:
        return Finding("helper as AuthorizedKeysCommandUser", FAIL,
                       f"{user.pw_name} cannot run {command[0]}: {exc.strerror}",
                       f"make {command[0]} and its folders readable and executable by "
                       f"{user.pw_name}")
    said = " ".join(done.stderr.split())
    if done.returncode == 1 and "no fresh certificate is mapped" in said:
        return Finding("helper as AuthorizedKeysCommandUser", OK,
                       f"{user.pw_name} runs it and it reads a fresh snapshot")
    fix = ("run `idm refresh` (and enable its timer)" if "snapshot" in said
           else f"make the helper, its configuration and the snapshot readable by {user.pw_name}")
    return Finding("helper as AuthorizedKeysCommandUser", FAIL,
                   f"as {user.pw_name}: {said or f'exit status {done.returncode}'}", fix)


def _server(config: Config, sshd_config: str, sshd: str) -> list[Finding]:
    if not os.path.exists(sshd):
        return [Finding("sshd", SKIP, f"{sshd} is not installed: server checks skipped")]
    try:
        settings = sshd_settings(sshd_config, sshd)
    except RuntimeError as exc:
        fix = ("create it: `mkdir -p -m 0755 /run/sshd` (ssh.service does this at start)"
               if "privilege separation directory" in str(exc) else
               "fix sshd's configuration (or give --sshd-config FILE); run idm doctor as root")
        return [Finding("sshd", FAIL, str(exc), fix)]
    command = settings.get("authorizedkeyscommand", "none")
    argv = shlex.split(command) if command != "none" else []
    if not argv or not (os.path.basename(argv[0]).startswith("idm") or "authorized-keys" in argv):
        return [Finding("sshd", SKIP, f"{sshd_config}: AuthorizedKeysCommand is {command!r}, "
                        "not idm: server checks skipped")]
    found = [Finding("sshd", OK, f"{sshd_config}: AuthorizedKeysCommand {command}")]
    why = (f"{argv[0]} is not an absolute path" if not os.path.isabs(argv[0])
           else unsafe_component(argv[0]))
    if why is None:
        found.append(Finding("helper path", OK,
                             f"{argv[0]}: root's and not writable by others up to /"))
    else:
        found.append(Finding("helper path", FAIL, f"sshd refuses to run it: {why}",
                             "install idm under a root-owned folder, e.g. "
                             "`make install PREFIX=/opt/idm`"))
    name = settings.get("authorizedkeyscommanduser", "none")
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        found.append(Finding("AuthorizedKeysCommandUser", FAIL, f"no such user {name!r}",
                             "AuthorizedKeysCommandUser nobody (an unprivileged user)"))
        user = None
    if user is not None and user.pw_uid == 0:
        found.append(Finding("AuthorizedKeysCommandUser", WARN, "root runs the helper",
                             "AuthorizedKeysCommandUser nobody: the helper needs no privilege"))
    if user is not None and why is None:
        if os.geteuid() == 0:
            found.append(_probe_helper(argv, user))
        else:
            found.append(Finding("helper as AuthorizedKeysCommandUser", SKIP,
                                 f"not root: cannot run the helper as {user.pw_name}",
                                 "run idm doctor as root"))
    found.append(_helper_snapshot(argv, 0 if user is None else user.pw_uid))
    return found


def _helper_snapshot(argv: list[str], uid: int) -> Finding:
    """The snapshot the helper named by sshd's ``argv`` opens, checked as it checks it
    (StrictModes for ``uid``, the AuthorizedKeysCommandUser's). What a wrapper script adds
    to the helper's command line is not visible here."""
    from idm.identity.config import ConfigError, load_config
    from idm.identity.server.authorized_keys import (
        Denied,
        config_path,
        parse_arguments,
        snapshot_path,
    )

    def check(path: str, st: os.stat_result) -> None:
        check_strict_modes(path, st, uid=uid)

    command = _probe_command(argv)
    words = command[command.index("authorized-keys") + 1:] if "authorized-keys" in command \
        else command[1:]
    try:
        args = parse_arguments(words)
    except Denied as exc:
        return Finding("snapshot", FAIL, f"AuthorizedKeysCommand: {exc}",
                       "AuthorizedKeysCommand /usr/local/bin/idm authorized-keys %u %t %k")
    config = None
    if args.snapshot is None:
        path = config_path(args, {})  # sshd passes no IDM_CONFIG to the command
        try:
            config = load_config(path, check=check) if path else Config()
        except ConfigError as exc:
            return Finding("snapshot", FAIL, f"the helper's configuration: {exc}",
                           "correct the file the helper reads (--config, else "
                           "/etc/idm/config.toml)")
    return _snapshot(Path(snapshot_path(args, config)), required=True, check=check)


def _snapshot(path: Path, *, required: bool,
              check: Callable[[str, os.stat_result], None] | None = None) -> Finding:
    from idm.identity.server.snapshot import SnapshotError, inspect_snapshot

    if not path.exists() and not required:
        return Finding("snapshot", SKIP, f"{path} does not exist (not a server)")
    try:
        info, not_fresh = inspect_snapshot(path, check=check)
    except SnapshotError as exc:
        not_fresh = str(exc)
    if not_fresh is not None:
        return Finding("snapshot", FAIL, not_fresh,
                       "run `idm refresh`, and its timer: `systemctl enable --now "
                       "idm-refresh.timer`")
    return Finding("snapshot", OK, f"{path}: fresh, {info.entries} key line(s)")


def _syslog() -> Finding:
    if syslog_reachable():
        return Finding("syslog", OK, f"{SYSLOG_SOCKET} answers")
    return Finding("syslog", WARN, f"nothing listens on {SYSLOG_SOCKET}: the agent logs to "
                   "$XDG_STATE_HOME/idm/agent.log, the helper's lines reach sshd's log only",
                   "install a syslog daemon (rsyslog) or run under systemd-journald")


def _agent(env: Mapping[str, str], config: Config) -> Finding:
    path = env.get("SSH_AUTH_SOCK")
    if not path:
        return Finding("agent", WARN, "SSH_AUTH_SOCK is not set: ssh in this shell uses no agent",
                       'eval "$(idm agent)"')
    wanted = config.agent.socket
    if wanted is not None and os.path.realpath(path) != os.path.realpath(wanted):
        return Finding("agent", WARN, f"SSH_AUTH_SOCK is {path}, not idm's [agent] socket "
                       f"{wanted}: ssh talks to another agent", f"export SSH_AUTH_SOCK={wanted}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        try:
            conn.connect(path)
            pid = peer_credentials(conn)[0]
            conn.sendall(frame(bytes([SSH_AGENTC_REQUEST_IDENTITIES])))
            head = conn.recv(9)
        except OSError as exc:
            return Finding("agent", FAIL, f"SSH_AUTH_SOCK={path}: no agent answers "
                           f"({exc.strerror or exc})", 'start one: eval "$(idm agent)"')
    if len(head) < 9 or head[4] != SSH_AGENT_IDENTITIES_ANSWER:
        return Finding("agent", FAIL, f"SSH_AUTH_SOCK={path}: not an SSH agent's answer",
                       'eval "$(idm agent)"')
    count = struct.unpack(">I", head[5:9])[0]
    pid = _listener_pid(path) or pid
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        program = "?"
    if "idm" in program and "agent" in program:
        return Finding("agent", OK, f"SSH_AUTH_SOCK={path}: idm agent (pid {pid}), "
                       f"{count} identit{'y' if count == 1 else 'ies'}")
    return Finding("agent", WARN, f"SSH_AUTH_SOCK={path}: served by pid {pid} "
                   f"({program.strip() or '?'}), not idm agent: it does not check certificates",
                   'eval "$(idm agent)"')


def _listener_pid(path: str) -> int | None:
    """The process that holds the listening socket at `path` now (/proc/net/unix, then
    the /proc/PID/fd links). SO_PEERCRED would name the process that called listen(),
    which for a daemon that forked afterwards (ssh-agent, idm agent) is gone."""
    real = os.path.realpath(path)
    inodes = set()
    try:
        with open("/proc/net/unix") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == real and int(fields[3], 16) & 0x10000:
                    inodes.add(f"socket:[{fields[6]}]")
    except (OSError, ValueError):
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            links = os.scandir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        with links:
            for fd in links:
                try:
                    if os.readlink(fd.path) in inodes:
                        return int(entry.name)
                except OSError:
                    continue
    return None


def run_checks(
    config: Config,
    open_inventory: Callable[[], Inventory],
    *,
    env: Mapping[str, str],
    sshd_config: str = SSHD_CONFIG,
    sshd: str = SSHD,
) -> list[Finding]:
    """Every check (see the module docstring), in order."""
    where = str(config.path) if config.path else "none (built-in defaults)"
    found = [Finding("configuration", OK, where)]
    found += _anchors(config)
    found += _providers(config)
    found.append(_inventory(open_inventory))
    server = _server(config, sshd_config, sshd)
    found += server
    if not any(f.check == "snapshot" for f in server):
        found.append(_snapshot(config.server.snapshot, required=False))
    found.append(_syslog())
    found.append(_agent(env, config))
    return found
