"""The reaper finds a dead raylet's children by what it noted while the raylet lived,
not only by their environment (setproctitle can overwrite what /proc/PID/environ shows)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from selfplay.runtime.driver import reaper

# A stand-in "raylet": it starts a child with a clean environment (no RAY_RAYLET_PID
# tag, like an agent whose environ was overwritten), prints its pid, then waits.
PARENT = """
import subprocess, sys, time
c = subprocess.Popen(["sleep", "120"], env={})
print(c.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (or an init) to reap it."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_noted_children_are_found_after_their_parent_dies():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        since = reaper._stat(parent.pid)[1]
        assert reaper.leftovers(parent.pid, since) == []  # no tag: the environment alone misses it
        noted = reaper.children(parent.pid)
        assert child in noted
        parent.kill()
        parent.wait()
        assert reaper.leftovers(parent.pid, since, noted) == [child]
        # a pid reused by another process (another start time) is not taken for the child
        assert reaper.leftovers(parent.pid, since, {child: noted[child] + 1}) == []
    finally:
        parent.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_the_watcher_kills_the_noted_children_when_the_driver_dies():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        w = reaper.watch(parent.pid)
        time.sleep(2 * reaper.NOTE_EVERY_S)  # let it note the child
        parent.kill()
        parent.wait()
        assert _alive(child)
        w.stdin.close()  # what the driver's death does to the pipe
        assert w.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        parent.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
