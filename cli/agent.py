"""`idm agent`: an ssh-agent replacement serving approved identities (and ssh-add keys).

Behaves like ssh-agent: binds the socket, prints the shell lines that export
SSH_AUTH_SOCK and SSH_AGENT_PID, and detaches; ``-D`` stays in the foreground, ``-d``
also logs every decision to stderr; ``-k`` kills the agent named by SSH_AGENT_PID.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import shlex
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click

from idm.cli.output import UserError
from idm.identity.agent.hardening import HardeningError, disable_tracing, raise_open_file_limit
from idm.identity.agent.identities import IdentitySource, ProviderHook, SocketKind, SoftwareKeyring
from idm.identity.agent.server import AgentServer, AgentSocketError, default_socket_dir
from idm.identity.syslog_socket import SYSLOG_SOCKET, syslog_reachable

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_lifetime(text: str) -> int:
    """OpenSSH time format: ``600``, ``10m``, ``1h30m``, ``2d`` -> seconds."""
    spec = text.strip().lower()
    parts = re.findall(r"(\d+)([smhdw]?)", spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise UserError(f"invalid lifetime {text!r}: use seconds or e.g. 30m, 1h30m, 2d")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0 or seconds > 0xFFFFFFFF:
        raise UserError(f"lifetime {text!r} is out of range")
    return seconds


@dataclass
class AgentRunSettings:
    """What the identity sources need to know from the command line and configuration."""

    pin_cache: int = 300
    only: list[str] = field(default_factory=list)
    default_lifetime: int | None = None
    poll_interval: float = 2.0
    refresh_interval: float = 300.0


def build_sources(
    app: object, settings: AgentRunSettings
) -> tuple[list[IdentitySource], ProviderHook | None]:
    """Identity sources besides ssh-add'ed software keys, and the ssh-add -s/-e hook.

    The token-backed source: approved inventory certificates on present (or never seen)
    cards, gated by the validator. Nothing here touches a token or a thread: the source
    starts in the serving process (after the fork), see ``agent()``. Without a configured
    CA the agent serves software keys only (a warning says so).
    """
    from idm.identity.agent.gate import ValidationGate
    from idm.identity.agent.selection import Selection, SelectorError
    from idm.identity.agent.tokensource import TokenSource, TokenSourceSettings
    from idm.identity.checker import CertificateChecker

    log = logging.getLogger("idm.agent")
    try:
        Selection.parse(settings.only)
    except SelectorError as exc:
        raise UserError(str(exc)) from None
    config = getattr(app, "config", None)
    if config is None:
        return [], None
    if not config.validation.ca:
        log.warning("token identities are off: no trust anchors ([validation] ca) are "
                    "configured; serving software keys only (idm offers only validated "
                    "identities)")
        return [], None
    try:
        # The agent may start before the first enrollment: it creates the inventory
        # and picks up what is enrolled later.
        inventory = app.inventory(create=True)  # type: ignore[attr-defined]
    except UserError as exc:
        log.warning("token identities are off: %s; serving software keys only", exc)
        return [], None
    try:
        checker = CertificateChecker.from_config(config, inventory)
    except ValueError as exc:  # CheckerError, or a bundle that does not parse
        log.warning("token identities are off: %s; serving software keys only (idm offers "
                    "only validated identities, so it needs [validation] ca)", exc)
        return [], None
    gate = ValidationGate(checker, inventory, refresh_interval=settings.refresh_interval,
                          retry_interval=min(60.0, settings.refresh_interval))
    source = TokenSource(inventory, gate, TokenSourceSettings(
        providers=list(config.tokens.providers),
        pin_cache=settings.pin_cache,
        only=list(settings.only),
        poll_interval=settings.poll_interval,
        refresh_interval=settings.refresh_interval,
    ))
    return [source], source


def _start_sources(sources: list[IdentitySource]) -> None:
    """Start sources that run threads (in the serving process); SIGUSR1 refreshes them."""
    refreshers = []
    for source in sources:
        start = getattr(source, "start", None)
        if callable(start):
            start()
        refresh = getattr(source, "refresh_now", None)
        if callable(refresh):
            refreshers.append(refresh)
    if refreshers:
        signal.signal(signal.SIGUSR1, lambda *_: [r() for r in refreshers])


def _close_sources(sources: list[IdentitySource]) -> None:
    for source in sources:
        close = getattr(source, "close", None)
        if callable(close):
            close()


def _shell_lines(sock: Path, pid: int, pkix: Path | None) -> str:
    q = shlex.quote
    lines = [f"SSH_AUTH_SOCK={q(str(sock))}; export SSH_AUTH_SOCK;"]
    if pkix is not None:
        lines.append(f"IDM_PKIX_AUTH_SOCK={q(str(pkix))}; export IDM_PKIX_AUTH_SOCK;")
    lines.append(f"SSH_AGENT_PID={pid}; export SSH_AGENT_PID;")
    lines.append(f"echo Agent pid {pid};")
    return "\n".join(lines)


def _kill_agent() -> None:
    raw = os.environ.get("SSH_AGENT_PID", "")
    if not raw.isdigit() or int(raw) <= 1:
        raise UserError("SSH_AGENT_PID is not set to an agent's pid: cannot tell which to kill")
    pid = int(raw)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise UserError(f"no agent with pid {pid} is running") from None
    except PermissionError:
        raise UserError(f"not allowed to stop pid {pid}") from None
    click.echo(f"unset SSH_AUTH_SOCK;\nunset SSH_AGENT_PID;\necho Agent pid {pid} killed;")


def _log_to_stderr(debug: bool, *, quiet: bool) -> None:
    """Log to stderr: in the foreground, and in a detaching agent until it detaches (what
    goes wrong at start is said where the user is looking)."""
    logger = logging.getLogger("idm.agent")
    logger.handlers.clear()
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("idm agent: %(levelname)s: %(message)s"))
    logger.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger.addHandler(handler)


def _socket_dir() -> Path:
    """The folder of the default socket: $XDG_RUNTIME_DIR/idm, or, without a runtime
    directory (a login without systemd-logind, su, a container), a private temporary
    folder, said once."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(tempfile.mkdtemp(prefix="idm-agent-"))
        logging.getLogger("idm.agent").warning(
            "XDG_RUNTIME_DIR is not set: the socket is in the private folder %s "
            "(removed when the agent stops)", path)
        return path
    return default_socket_dir()


def default_log_file() -> Path:
    """Where a detached agent logs when there is no syslog to log to."""
    from idm.identity.config import default_state_dir

    return default_state_dir() / "agent.log"


def _daemon_log_handler(log_file: str | None) -> tuple[logging.Handler, str | None]:
    """The handler of a detached agent, and the file it writes if not syslog.

    syslog when /dev/log answers (``journalctl -t idm-agent``); else, or with --log-file,
    a file (appended, 0600; reopened when logrotate moves it). Raises OSError when that
    file cannot be opened."""
    if log_file is None and syslog_reachable():
        handler: logging.Handler = logging.handlers.SysLogHandler(SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter("idm-agent[%(process)d]: %(message)s"))
        return handler, None
    path = Path(log_file) if log_file is not None else default_log_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.close(fd)
    handler = logging.handlers.WatchedFileHandler(path)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s idm-agent[%(process)d]: %(levelname)s: %(message)s"))
    return handler, str(path)


def _detach() -> None:
    """Second half of daemonizing, in the child: own session, no terminal, stdio closed."""
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


@click.command("agent")
@click.option("-a", "socket_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="Bind the agent socket here (default: $XDG_RUNTIME_DIR/idm/agent.sock).")
@click.option("-D", "foreground", is_flag=True, help="Stay in the foreground.")
@click.option("-d", "debug", is_flag=True, help="Debug: foreground, log every decision.")
@click.option("-k", "kill", is_flag=True, help="Kill the agent named by SSH_AGENT_PID.")
@click.option("-t", "lifetime", metavar="LIFE",
              help="Default lifetime of added identities (seconds, or e.g. 1h30m).")
@click.option("--pin-cache", type=click.IntRange(min=0), metavar="SECONDS",
              help="Keep token logins this long (0: ask the PIN for every signature).")
@click.option("--pkix-socket", metavar="PATH", type=click.Path(dir_okay=False),
              help="Also serve PKIX-SSH clients (raw-DER X.509 identities) on this socket.")
@click.option("--only", "only", multiple=True, metavar="SELECTOR",
              help="Offer only identities matching this pkcs11: URI, label or subject.")
@click.option("--poll-interval", type=click.FloatRange(min=0.1), default=2.0,
              show_default=True, metavar="SECONDS",
              help="How often to look for removed and inserted cards.")
@click.option("--allow-remote-pkcs11", "allow_remote_pkcs11", is_flag=True, default=None,
              help="Let forwarded (session-bound) connections load PKCS#11 providers with "
                   "ssh-add -s (off by default, like ssh-agent's -O allow-remote-pkcs11).")
@click.option("--refresh-interval", type=click.FloatRange(min=1.0), default=300.0,
              show_default=True, metavar="SECONDS",
              help="Re-validate each certificate at least this often (SIGUSR1: now).")
@click.option("--log-file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also append the log to FILE. A detached agent logs to syslog, or to "
              "$XDG_STATE_HOME/idm/agent.log when there is no syslog (/dev/log).")
@click.pass_context
def agent(
    ctx: click.Context,
    socket_path: str | None,
    foreground: bool,
    debug: bool,
    kill: bool,
    lifetime: str | None,
    pin_cache: int | None,
    pkix_socket: str | None,
    only: tuple[str, ...],
    poll_interval: float,
    refresh_interval: float,
    log_file: str | None,
    allow_remote_pkcs11: bool | None,
) -> None:
    """Run an SSH agent that serves validated identities (a drop-in for ssh-agent).

    Like ssh-agent it prints the shell lines that set SSH_AUTH_SOCK and SSH_AGENT_PID and
    detaches: use it as eval "$(idm agent)". Why it refuses a request is in its log:
    stderr with -D or -d, else syslog, or a file it names on start when there is no syslog.
    """
    if kill:
        _kill_agent()
        return
    # Before anything is read or bound: no key, PIN or client is ever in a dumpable
    # process (the fork below inherits both settings).
    try:
        disable_tracing()
    except HardeningError as exc:
        raise UserError(f"cannot protect the agent's memory ({exc.strerror}): not starting") \
            from None
    fd_limit = raise_open_file_limit()
    detach = not (foreground or debug)
    # Until it detaches, a daemon says only warnings, on the terminal it was started from.
    _log_to_stderr(debug, quiet=detach)
    log = logging.getLogger("idm.agent")
    log.debug("not dumpable, no core files; open-file limit %d (each client is one)", fd_limit)
    handler: logging.Handler | None = None
    if detach or log_file is not None:
        try:
            handler, written = _daemon_log_handler(log_file)
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise UserError(f"cannot open the agent's log{where}: {exc.strerror or exc}") \
                from None
        if detach and written is not None and log_file is None:
            log.warning("no syslog (%s): logging to %s", SYSLOG_SOCKET, written)
        if not detach:
            log.addHandler(handler)  # -D/-d with --log-file: stderr and the file
    config = getattr(ctx.obj, "config", None) if ctx.obj is not None else None
    agent_cfg = config.agent if config is not None else None
    settings = AgentRunSettings(
        pin_cache=pin_cache if pin_cache is not None
        else (config.tokens.pin_cache if config is not None else 300),
        only=list(only) or (list(agent_cfg.only) if agent_cfg is not None else []),
        default_lifetime=parse_lifetime(lifetime) if lifetime is not None else None,
        poll_interval=poll_interval,
        refresh_interval=refresh_interval,
    )
    created_dir: Path | None = None
    if socket_path is not None:
        sock = Path(socket_path)
    elif agent_cfg is not None and agent_cfg.socket is not None:
        sock = Path(agent_cfg.socket)
    else:
        created_dir = _socket_dir()
        sock = created_dir / "agent.sock"
    pkix = Path(pkix_socket) if pkix_socket else (
        Path(agent_cfg.pkix_socket) if agent_cfg is not None and agent_cfg.pkix_socket else None
    )

    sources, hook = build_sources(ctx.obj, settings)
    if allow_remote_pkcs11 is None:
        allow_remote_pkcs11 = agent_cfg.allow_remote_pkcs11 if agent_cfg is not None else False
    server = AgentServer(SoftwareKeyring(settings.default_lifetime), sources, hook,
                         allow_remote_providers=allow_remote_pkcs11)
    try:
        sock = server.listen(sock, SocketKind.STANDARD)
        if pkix is not None:
            pkix = server.listen(pkix, SocketKind.PKIX)
    except AgentSocketError as exc:
        server.close()
        raise UserError(str(exc)) from None

    # Before the fork, so that a TERM arriving right after the parent printed the pid
    # still ends the child cleanly (socket and folder removed).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: server.shutdown())
    if detach:
        sys.stdout.flush()
        child = os.fork()
        if child:
            # The parent only reports; the sockets now belong to the child.
            click.echo(_shell_lines(sock, child, pkix))
            sys.stdout.flush()
            os._exit(0)
        _detach()
        log.handlers.clear()
        if handler is not None:
            log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.info("started (pid %d), listening on %s", os.getpid(), sock)
    else:
        click.echo(_shell_lines(sock, os.getpid(), pkix))
        sys.stdout.flush()

    try:
        _start_sources(sources)
        server.serve_forever()
    finally:
        server.close()
        _close_sources(sources)
        if created_dir is not None and created_dir.name.startswith("idm-agent-"):
            try:
                created_dir.rmdir()
            except OSError:
                pass
