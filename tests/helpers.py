"""Small helpers shared by test modules (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_server(proc: subprocess.Popen, *, group: bool, timeout: float) -> None:
    """SIGTERM a server started with `start_new_session=True` (its whole process group
    when `group`, else the process, which then stops its own children); SIGKILL the
    group if it is not gone within `timeout` seconds."""
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
