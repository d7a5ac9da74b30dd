"""Clear an in-process Ray cluster's leftovers when its driver dies, however it dies.

`ray.init()` starts the head's processes (GCS, raylet, ...) so that they die
with the driver (PR_SET_PDEATHSIG), and the raylet's workers die with it. The
raylet's two agents (DashboardAgent, RuntimeEnvAgent) do not: they notice the
raylet is gone within ~2 s, then try to report it to the (dead) GCS with a
60-second timeout, so after a `kill -9` of the driver they linger for over a
minute, holding ports and memory.

`watch(raylet_pid)` starts this file as a small process holding the read end
of a pipe whose write end only the driver has. When the driver exits (normally,
or killed with SIGKILL), the pipe reaches EOF and every process still carrying
`RAY_RAYLET_PID=<that raylet>` in its environment (the agents and any worker)
and started after the raylet is killed. It ignores SIGINT (a Ctrl-C reaches the
whole foreground process group) and imports nothing but the standard library.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def leftovers(raylet_pid: int, since: int) -> list[int]:
    """Live processes of that raylet's cluster, started at or after `since` (clock ticks)."""
    tag = f"RAY_RAYLET_PID={raylet_pid}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        t = _start_time(int(d.name))
        if tag in env and t is not None and t >= since:
            out.append(int(d.name))
    return out


def watch(raylet_pid: int) -> subprocess.Popen | None:
    """Start the watcher for the in-process cluster whose raylet is `raylet_pid`. The
    driver keeps the returned Popen (its stdin is the pipe) for its whole life."""
    since = _start_time(raylet_pid)
    if since is None or not sys.platform.startswith("linux"):
        return None
    return subprocess.Popen(
        [sys.executable, "-S", __file__, str(raylet_pid), str(since)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def _main(raylet_pid: int, since: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(1 << 16):
        pass  # the driver never writes: this returns at EOF, when it has exited
    for pid in leftovers(raylet_pid, since):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]))
