"""Benchmark: idm agent vs OpenSSH ssh-agent under held connections and unlock guessing.

Both agents run side by side (software keys only, no token needed):

1. ``--held N`` (default 1,000) connections are opened and left silent (every 100th
   stalled in the middle of a message), then ``ssh-add -l`` is run ``--runs`` times as a
   new client: its wall time (process start to exit) with N held, and without any held
   for comparison. Then the N connections are closed and the agent's open descriptors
   (/proc/PID/fd) are compared with their count before.
2. ``--guesses G`` (default 5) wrong UNLOCKs are sent at once on G connections to a
   locked agent; the time until all are answered is printed next to the sum of the
   per-failure delays (0.1 s, 0.2 s, ...) that a global delay implies.

    .venv/bin/python bench/agent_held.py [--held 1000] [--runs 20] [--guesses 5]

Run as a user allowed to read the agents' /proc/PID/fd (their owner or root).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent_sign import RawAgent, stop_processes, wait_socket  # noqa: E402

from idm.identity.agent import protocol as p  # noqa: E402

IDM_AGENT = [sys.executable, "-c", "from idm.cli.agent import agent; import sys; "
             "agent.main(sys.argv[1:], prog_name='idm agent')"]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def list_times(path: Path, runs: int) -> list[float]:
    env = dict(os.environ, SSH_AUTH_SOCK=str(path))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, timeout=60,
                           check=False)
        out.append(time.perf_counter() - t0)
        if r.returncode not in (0, 1):  # 1: no identities
            raise SystemExit(f"ssh-add -l failed on {path}: {r.stderr.decode().strip()}")
    return out


def settle(pid: int, target: int | None = None, timeout: float = 30.0) -> int:
    """The descriptor count once it stops changing (or reaches ``target``)."""
    deadline = time.monotonic() + timeout
    last = fds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = fds(pid)
        if now == last and (target is None or now == target):
            return now
        last = now
    return last


def held_run(name: str, path: Path, pid: int, held: int, runs: int) -> None:
    baseline = settle(pid)
    alone = list_times(path, runs)
    conns = []
    for i in range(held):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(path))
        if i % 100 == 0:
            s.sendall(b"\x00\x00\x00\x20\x0d")
        conns.append(s)
    holding = settle(pid) - baseline
    loaded = list_times(path, runs)
    for s in conns:
        s.close()
    after = settle(pid, baseline)
    ms = 1000
    print(f"| {name} | {holding} | {statistics.median(alone) * ms:.1f} ms | "
          f"{statistics.median(loaded) * ms:.1f} ms | {max(loaded) * ms:.1f} ms | "
          f"{baseline} → {baseline + holding} → {after} |")


def unlock_run(name: str, path: Path, guesses: int) -> None:
    with RawAgent(path) as agent:
        if agent.request(p.Lock(b"right").encode())[:1] != bytes([p.SSH_AGENT_SUCCESS]):
            raise SystemExit(f"{name}: LOCK failed")
    conns = [RawAgent(path) for _ in range(guesses)]
    barrier = threading.Barrier(guesses + 1)
    done: list[float] = []

    def guess(agent: RawAgent, i: int) -> None:
        barrier.wait()
        agent.request(p.Unlock(b"wrong %d" % i).encode())
        done.append(time.perf_counter())

    threads = [threading.Thread(target=guess, args=(c, i)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    took = max(done) - t0
    for c in conns:
        c.close()
    with RawAgent(path) as agent:
        agent.request(p.Unlock(b"right").encode())
    print(f"| {name} | {guesses} | {took:.2f} s | "
          f"{sum(0.1 * n for n in range(1, guesses + 1)):.2f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--guesses", type=int, default=5)
    args = ap.parse_args()
    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        raise SystemExit("OpenSSH's ssh-agent and ssh-add are needed")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.held + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))
    work = Path(tempfile.mkdtemp(prefix="idm-held-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ssh_sock, idm_sock = work / "ssh-agent.sock", work / "idm.sock"
        procs.append(subprocess.Popen(["ssh-agent", "-D", "-a", str(ssh_sock)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_socket(ssh_sock, procs[-1])
        procs.append(subprocess.Popen([*IDM_AGENT, "-D", "-a", str(idm_sock)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_socket(idm_sock, procs[-1])
        agents = [("OpenSSH ssh-agent", ssh_sock, procs[0].pid),
                  ("idm agent", idm_sock, procs[1].pid)]
        print(f"new client (ssh-add -l, {args.runs} runs) with {args.held} connections held "
              f"(every 100th stalled mid-message)")
        print("| agent | held | alone, median | held, median | held, max | fds before → "
              "held → after |")
        print("|---|---|---|---|---|---|")
        for name, path, pid in agents:
            held_run(name, path, pid, args.held, args.runs)
        print()
        print(f"{args.guesses} wrong UNLOCKs at once, each on its own connection")
        print("| agent | guesses | all answered after | sum of the global delays |")
        print("|---|---|---|---|")
        for name, path, _ in agents:
            unlock_run(name, path, args.guesses)
    finally:
        stop_processes(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
