"""Clear an in-process Ray cluster's leftovers when its driver dies, however it dies.

`ray.init()` starts the head's processes (GCS, raylet, ...) so that they die
with the driver (PR_SET_PDEATHSIG), and the raylet's workers die with it. The
raylet's two agents (DashboardAgent, RuntimeEnvAgent) do not: they notice the
raylet is gone within ~2 s, then try to report it to the (dead) GCS with a
60-second timeout, so after a `kill -9` of the driver they linger for over a
minute, holding ports and memory.

`watch(raylet_pid)` starts this file as a small process holding the read end
of a pipe whose write end only the driver has. While the driver lives, the
watcher notes the raylet's children (pid and start time) once a second. When
the driver exits (normally, or killed with SIGKILL), the pipe reaches EOF and
the watcher kills

- every noted child still alive with the same start time (the agents: their
  environment cannot be used to find them, because `setproctitle` overwrites
  the memory /proc/PID/environ reads), and
- every process carrying `RAY_RAYLET_PID=<that raylet>` in its environment
  started after the raylet (workers started since the last note),

and repeats that until a second passes with nothing left (at most a few
seconds), to catch what was being forked at the time.
It ignores SIGINT (a Ctrl-C reaches the whole foreground process group) and
imports nothing but the standard library.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

NOTE_EVERY_S = 1.0
SWEEP_S = 5.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _pids() -> list[int]:
    return [
        int(d.name)
        for d in Path("/proc").iterdir()
        if d.name.isdigit() and int(d.name) != os.getpid()
    ]


def children(parent: int) -> dict[int, int]:
    """pid -> start time of the live children of `parent`."""
    out = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None and st[0] == parent:
            out[pid] = st[1]
    return out


def leftovers(raylet_pid: int, since: int, noted: dict[int, int] | None = None) -> list[int]:
    """Live processes of that raylet's cluster: the `noted` children still alive (same
    start time), and those tagged with the raylet's pid started at or after `since`."""
    tag = f"RAY_RAYLET_PID={raylet_pid}".encode()
    noted = noted or {}
    out = []
    for pid in _pids():
        st = _stat(pid)
        if st is None or st[1] < since:
            continue
        if noted.get(pid) == st[1]:
            out.append(pid)
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if tag in env:
            out.append(pid)
    return out


def watch(raylet_pid: int) -> subprocess.Popen | None:
    """Start the watcher for the in-process cluster whose raylet is `raylet_pid`. The
    driver keeps the returned Popen (its stdin is the pipe) for its whole life."""
    st = _stat(raylet_pid)
    if st is None or not sys.platform.startswith("linux"):
        return None
    return subprocess.Popen(
        [sys.executable, "-S", __file__, str(raylet_pid), str(st[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def _wait_for_eof(raylet_pid: int) -> dict[int, int]:
    """Block until the driver's pipe closes, noting the raylet's children meanwhile."""
    noted: dict[int, int] = {}
    fd = sys.stdin.fileno()
    while True:
        noted.update(children(raylet_pid))
        ready, _, _ = select.select([fd], [], [], NOTE_EVERY_S)
        if ready and not os.read(fd, 1 << 16):
            return noted  # EOF: the driver has exited (it never writes)


def _main(raylet_pid: int, since: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    noted = _wait_for_eof(raylet_pid)
    end, quiet = time.monotonic() + SWEEP_S, 0
    while time.monotonic() < end and quiet < 5:  # stop after 1 s with nothing left
        found = leftovers(raylet_pid, since, noted)
        quiet = 0 if found else quiet + 1
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]))
