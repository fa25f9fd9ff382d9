"""`make demo`: the whole idm story, end to end, on 127.0.0.1 and in ./demo-run/.

1. a sample CA serving CRL and OCSP;
2. a SoftHSM2 "card" with a key generated on it, a CSR, a certificate from the sample CA,
   enrolled; `idm verify` shows it valid;
3. `idm agent` and a private sshd that asks `idm authorized-keys`; `ssh` logs in;
4. the card is replaced: new token, new key, new certificate, `idm enroll --token`; the
   login works again with no change on the server;
5. the old certificate is revoked, `idm refresh` runs, and the old card is refused.

Every step prints a heading and the real command. Everything started is stopped at the
end (or on Ctrl-C); running it again starts from scratch. Run it as root (sshd needs it):
it is what `make demo` does after installing the packages and the virtualenv.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.server.helpers installs the sshd helper
SAMPLE_CA = REPO / "sample-ca" / "sample_ca.py"
VENV_BIN = Path(sys.executable).parent
IDM = VENV_BIN / "idm"
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "246810"
SO_PIN = "13579111"


class DemoError(Exception):
    pass


def bold(text: str) -> str:
    """Bold on a terminal; plain text into a pipe or a log (no escape codes there)."""
    return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else text


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.work = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.step_no = 0
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.install: Any = None  # tests.server.helpers.HelperInstall
        self.card_dirs: dict[str, Path] = {}

    # -- printing and running ---------------------------------------------------------------

    def heading(self, title: str) -> None:
        self.step_no += 1
        print(f"\n{bold(f'== {self.step_no}. {title}')}", flush=True)

    def say(self, text: str) -> None:
        print(textwrap.fill(text, 90, initial_indent="   ", subsequent_indent="   "), flush=True)

    def show(self, args: list[str]) -> str:
        shown = [str(a) for a in args]
        for full, short in ((str(IDM), "idm"), (sys.executable, "python3"),
                            (str(self.work) + "/", "")):
            shown = [s.replace(full, short) for s in shown]
        # PINs are never printed, not even the demo's.
        shown = ["****" if i and shown[i - 1] in ("--pin", "--so-pin") else s
                 for i, s in enumerate(shown)]
        return " ".join(shlex.quote(s) for s in shown)

    def run(self, args: list[str | Path], *, ok: bool = True, quiet: bool = False,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        print(f"   $ {self.show(argv)}", flush=True)
        if args[0] == IDM and sys.stdout.isatty() and not quiet and input_text is None:
            # idm's tables fit the terminal only when they are written to it
            r = subprocess.run(argv, text=True, env=self.env, cwd=self.work, timeout=120)
            self.check(argv, r.returncode, ok)
            return r
        r = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                           cwd=self.work, input=input_text, timeout=120)
        out = (r.stdout + r.stderr).rstrip()
        if out and not quiet:
            print(textwrap.indent(out, "     "), flush=True)
        self.check(argv, r.returncode, ok)
        return r

    def check(self, argv: list[str], returncode: int, ok: bool) -> None:
        if ok and returncode != 0:
            raise DemoError(f"step failed (exit {returncode}): {self.show(argv)}")
        if not ok and returncode == 0:
            raise DemoError(f"expected a refusal, but this succeeded: {self.show(argv)}")

    def start(self, args: list[str | Path], ready: str, log: Path) -> subprocess.Popen[bytes]:
        argv = [str(a) for a in args]
        print(f"   $ {self.show(argv)} &", flush=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=self.work, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"{argv[0]} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()
        if self.install is not None:
            self.install.remove()

    # -- the set-up pieces --------------------------------------------------------------------

    def prepare(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        (self.work / "tokens").mkdir()
        softhsm_conf = self.work / "softhsm2.conf"
        softhsm_conf.write_text(f"directories.tokendir = {self.work / 'tokens'}\n"
                                "objectstore.backend = file\nlog.level = ERROR\n")
        pin_file = self.work / "pin"
        pin_file.write_text(PIN + "\n")
        pin_file.chmod(0o600)
        askpass = self.work / "askpass"
        askpass.write_text(f"#!/bin/sh\ncat {shlex.quote(str(pin_file))}\n")
        askpass.chmod(0o700)
        from tests.ports import free_port

        self.port = free_port()
        self.ssh_port = free_port()
        self.env.update(
            SOFTHSM2_CONF=str(softhsm_conf),
            IDM_CONFIG=str(self.work / "config.toml"),
            SSH_ASKPASS=str(askpass),
            SSH_ASKPASS_REQUIRE="force",
            XDG_RUNTIME_DIR=str(self.work / "run"),
            PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        )
        for var in ("IDM_DB", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "DISPLAY"):
            self.env.pop(var, None)
        (self.work / "run").mkdir(mode=0o700)

    def write_config(self) -> None:
        ca = self.work / "ca"
        # The server-side files live where sshd's AuthorizedKeysCommandUser can read them.
        (self.work / "config.toml").write_text(textwrap.dedent(f"""\
            db = "sqlite:///{self.work / 'inventory.sqlite'}"

            [validation]
            ca = ["{ca / 'ca-bundle.pem'}"]
            untrusted = ["{ca / 'chain.pem'}"]

            [revocation]
            policy = "hard-fail"

            [tokens]
            providers = ["{SOFTHSM_MODULE}"]

            [server]
            snapshot = "{self.install.snapshot}"
            mapping = ["principals", "email"]
            """))
        shutil.copy(self.work / "config.toml", self.install.config)
        self.install.config.chmod(0o644)

    def install_helper(self) -> None:
        """Install `idm authorized-keys` as sshd requires: root-owned, not writable by others,
        runnable by the AuthorizedKeysCommandUser (nobody). The test suite's installer is
        used, so the demo and the tests set up sshd the same way."""
        from tests.server.helpers import HelperInstall

        self.install = HelperInstall.create()
        self.helper = self.install.wrapper
        self.helper_state = self.install.state
        self.helper_log = self.install.log

    def start_sshd(self) -> None:
        d = self.work / "sshd"
        d.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(d / "host_key")], check=True)
        (d / "sshd_config").write_text(textwrap.dedent(f"""\
            ListenAddress 127.0.0.1:{self.ssh_port}
            HostKey {d / 'host_key'}
            PidFile {d / 'sshd.pid'}
            AuthorizedKeysFile none
            AuthorizedKeysCommand {self.helper} %u %t %k
            AuthorizedKeysCommandUser nobody
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            UsePAM no
            StrictModes no
            LogLevel VERBOSE
            """))
        print("   sshd_config (the server's whole idm set-up):")
        for line in ("AuthorizedKeysFile none",
                     f"AuthorizedKeysCommand {self.show([str(self.helper)])} %u %t %k",
                     "AuthorizedKeysCommandUser nobody"):
            print(f"     {line}")
        # On a machine where the ssh service never ran, sshd's privilege separation
        # directory does not exist yet; the demo makes it as the service would.
        from tests.sshd import ensure_privsep_dir

        ensure_privsep_dir()
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.start([sshd, "-D", "-e", "-f", d / "sshd_config"],
                   f"listening on 127.0.0.1 port {self.ssh_port}", d / "sshd.log")

    def ssh(self, *, ok: bool, options: Sequence[str] = ("-o", "BatchMode=yes")) -> None:
        known = self.work / "known_hosts"
        self.run(["ssh", "-F", "/dev/null", "-p", str(self.ssh_port), *options,
                  "-o", "StrictHostKeyChecking=accept-new",
                  "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10",
                  f"{self.user}@127.0.0.1", "echo logged in as $(whoami) on $(hostname)"],
                 ok=ok)

    def new_card(self, label: str, subject: str) -> Path:
        """A SoftHSM2 token with a key generated on it, certified by the sample CA."""
        before = set((self.work / "tokens").iterdir())
        self.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                  "--so-pin", SO_PIN, "--pin", PIN], quiet=True)
        (self.card_dirs[label],) = set((self.work / "tokens").iterdir()) - before
        uri = f"pkcs11:token={label}?pin-source=file:{self.work / 'pin'}"
        csr = self.work / f"{label}.csr"
        self.run([IDM, "enroll", "--token", uri, "--new-key", "ec-p256", "--subject", subject,
                  "--label", "ssh", "--csr", csr])
        cert = self.work / f"{label}.pem"
        self.run([sys.executable, SAMPLE_CA, "issue", self.work / "ca", "--csr", csr,
                  "--out", cert, "--email", "alice@example.org"])
        self.run([IDM, "enroll", "--token", uri, "--import-cert", cert])
        return cert

    # -- the story ------------------------------------------------------------------------------

    def story(self) -> None:
        started = time.monotonic()
        self.prepare()
        self.install_helper()

        self.heading("A sample CA that serves its CRL and OCSP on 127.0.0.1")
        self.run([sys.executable, SAMPLE_CA, "init", self.work / "ca", "--port", str(self.port)],
                 quiet=True)
        self.say("Root and intermediate CA, an OCSP responder; every user certificate names "
                 f"http://127.0.0.1:{self.port}/crl/intermediate.crl and the OCSP URL.")
        self.start([sys.executable, SAMPLE_CA, "serve", self.work / "ca"], "serving http://",
                   self.work / "ca-server.log")
        self.write_config()
        self.say("idm's configuration (demo-run/config.toml) trusts the sample root CA, "
                 "checks revocation in hard-fail mode and uses the SoftHSM2 module.")

        self.heading("Alice's first card: a key generated on the token, a CSR, a certificate")
        self.new_card("alice-card-1", "CN=alice,O=idm demo,C=XX")
        self.run([IDM, "tokens"])
        self.run([IDM, "verify", "pkcs11:token=alice-card-1;type=cert"])
        self.run([IDM, "list"])

        self.heading("The server: sshd asks `idm authorized-keys`; `idm refresh` feeds it")
        self.run([IDM, "allow", self.user, "--principal", "alice@example.org"])
        self.run([IDM, "refresh"])
        self.start_sshd()

        self.heading("Alice logs in through `idm agent`")
        sock = self.work / "run" / "agent.sock"
        self.start([IDM, "agent", "-D", "-a", sock], "", self.work / "agent.log")
        self.env["SSH_AUTH_SOCK"] = str(sock)
        self._wait_for(sock)
        self.run(["ssh-add", "-l"])
        self.ssh(ok=True)

        self.heading("The card is replaced: a new token, a new key, a new certificate")
        self.say("Alice's first card is lost: it leaves the reader (its SoftHSM2 token folder "
                 "is moved away). The agent withdraws its identity.")
        (self.work / "drawer").mkdir()
        self.run(["mv", self.card_dirs["alice-card-1"], self.work / "drawer"])
        self.wait_for_agent(lambda listing: "alice-card-1" not in listing)
        old_cert = self.work / "alice-card-1.pem"
        self.new_card("alice-card-2", "CN=alice,O=idm demo,C=XX")
        self.run([IDM, "list"])
        self.run([IDM, "refresh"])
        self.say("No file on the server changed. The running agent offers the new card's key:")
        self.wait_for_agent(lambda listing: "alice-card-2" in listing)
        self.run(["ssh-add", "-l"])
        self.ssh(ok=True)

        self.heading("The old card is revoked; `idm refresh` picks it up; the old card is refused")
        self.run([sys.executable, SAMPLE_CA, "revoke", self.work / "ca", old_cert,
                  "--reason", "superseded"])
        self.run([IDM, "refresh"])
        self.run([IDM, "verify", old_cert], ok=False)
        self.say("The old card turns up again and someone tries it with plain OpenSSH "
                 "(its own PKCS#11 support, no idm agent). sshd asks `idm authorized-keys`, "
                 "which refuses, and says why in its log:")
        self.run(["mv", self.work / "drawer" / self.card_dirs["alice-card-1"].name,
                  self.work / "tokens"])
        old_pub = self.work / "alice-card-1.pub"
        old_pub.write_text(self.run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", "/dev/stdin"],
                                    quiet=True, input_text=self._public_pem(old_cert)).stdout)
        self.ssh(ok=False, options=["-o", "IdentityAgent=none", "-o", "BatchMode=no",
                                    "-o", f"PKCS11Provider={SOFTHSM_MODULE}",
                                    "-o", "IdentitiesOnly=yes", "-i", str(old_pub)])
        self.run(["tail", "-n", "1", self.helper_log])
        self.run([IDM, "events"])

        print(f"\n{bold(f'The story ran to the end in {time.monotonic() - started:.0f} s.')}")

    def wait_for_agent(self, condition: Callable[[str], bool], timeout: float = 30) -> None:
        """Wait until the agent's identity list (ssh-add -l) satisfies `condition`: it
        notices cards and inventory changes within its poll interval."""
        deadline = time.monotonic() + timeout
        while True:
            listing = subprocess.run(["ssh-add", "-l"], capture_output=True, text=True,
                                     env=self.env).stdout
            if condition(listing):
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the agent did not get there in {timeout:.0f} s: {listing}")
            time.sleep(0.25)

    def _public_pem(self, cert: Path) -> str:
        r = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                           capture_output=True, text=True, check=True)
        return r.stdout

    def _wait_for(self, path: Path) -> None:
        deadline = time.monotonic() + 20
        while not path.exists():
            if time.monotonic() > deadline:
                raise DemoError(f"{path} did not appear: {(self.work / 'agent.log').read_text()}")
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "demo-run",
                        help="where the demo's files go (emptied first; default ./demo-run)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: sshd and its AuthorizedKeysCommand need root: run `make demo` as root",
              file=sys.stderr)
        return 2
    demo = Demo(args.workdir.resolve())

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        demo.story()
        return 0
    except DemoError as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130
    finally:
        demo.stop_all()
        print("   (stopped everything the demo started)")


if __name__ == "__main__":
    sys.exit(main())
