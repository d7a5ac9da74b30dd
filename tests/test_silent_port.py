"""A port that accepts TCP connections and never answers: every command that dials a
cluster gives up within its probe's bound ($SELFPLAY_PROBE_TIMEOUT_S) in one line,
exit 2, instead of hanging in `ray.init` or the job SDK for minutes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELFPLAY = str(Path(sys.executable).with_name("selfplay"))


@pytest.fixture(scope="module")
def silent_port():
    """127.0.0.1:PORT: accepts every connection, reads nothing, answers nothing."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for c in held:
        c.close()


@pytest.mark.parametrize(
    "args, what",
    [
        (
            [
                "train",
                "conf/quickstart.yaml",
                "tracking.enabled=false",
                "runtime.address=127.0.0.1:{port}",
            ],
            "the Ray cluster at 127.0.0.1:{port}",
        ),
        (
            ["scale", "somerun", "--rollout-workers", "2", "--address", "127.0.0.1:{port}"],
            "the Ray cluster at 127.0.0.1:{port}",
        ),
        (
            ["status", "raysubmit_x", "--address", "http://127.0.0.1:{port}"],
            "the Ray job server at http://127.0.0.1:{port}",
        ),
    ],
    ids=["train", "scale", "status"],
)
def test_silent_port_is_one_line_exit_2(silent_port, args, what):
    env = {**os.environ, "SELFPLAY_PROBE_TIMEOUT_S": "1"}
    env.pop("RAY_ADDRESS", None)
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [SELFPLAY, *(a.format(port=silent_port) for a in args)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=90,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`selfplay {args[0]}` hung on a port that never answers")
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = r.stderr.splitlines()
    assert line == (
        f"error: {what.format(port=silent_port)} accepts connections but did not answer "
        f"within 1 s ($SELFPLAY_PROBE_TIMEOUT_S); is that the right address?"
    )
    assert time.monotonic() - t0 < 60  # start-up (imports, the task bound) and 1 s
