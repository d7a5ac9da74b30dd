"""Joining Ray as a user does, beside a `ray start --head` on the same machine.

The head is `ray start --head --block` from this venv, loopback-only, on free ports,
under its own HOME (no token: no token authentication) and its own RAY_TMPDIR, so the
address file it records (RAY_TMPDIR/ray/ray_current_cluster, where a bare `ray.init()`
looks) is private to the processes given that RAY_TMPDIR. Teardown signals only the
process this fixture started. The CLI runs as a subprocess, so exit statuses and
stderr lines are the real ones.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import stop_server
from test_jobs import BIN, TINY, _env, free_port, selfplay

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plain_head():
    """(GCS address, its RAY_TMPDIR) of a head without token authentication."""
    tmp = tempfile.mkdtemp(prefix="sp-j-", dir="/tmp")  # short: unix socket paths
    home = Path(tmp) / "home"
    home.mkdir()
    port = free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=4",
        "--include-dashboard=false",
        f"--port={port}",
        f"--ray-client-server-port={free_port()}",
        "--disable-usage-stats",
    ]
    env = _env(HOME=str(home), RAY_TMPDIR=tmp, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    log = open(Path(tmp) / "head.log", "w")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    recorded = Path(tmp) / "ray" / "ray_current_cluster"
    try:
        import time

        deadline = time.monotonic() + 90
        while not recorded.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start:\n{(Path(tmp) / 'head.log').read_text()}")
            time.sleep(0.3)
        yield f"127.0.0.1:{port}", tmp
    finally:
        stop_server(proc, group=False, timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _client_env(tmp: str, token: bool, **extra: str) -> dict[str, str]:
    """A client HOME of its own (with ~/.ray/auth_token when `token`), `RAY_TMPDIR=tmp`."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir=tmp))
    if token:
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text("a" * 32)
    return _env(HOME=str(home), RAY_TMPDIR=tmp, **extra)


def test_an_in_process_run_beside_a_recorded_cluster(plain_head, tmp_path):
    """`ray.init()` would join the cluster `ray start` recorded and refuse num_cpus."""
    _, tmp = plain_head
    r = selfplay(
        "train",
        str(ROOT / "conf" / "quickstart.yaml"),
        *TINY,
        f"output_dir={tmp_path}",
        "tracking.enabled=false",
        "--no-progress",
        env=_client_env(tmp, token=False),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Ray at 127.0.0.1:" in r.stderr and plain_head[0] not in r.stderr


def test_a_token_is_sent_only_when_the_cluster_asks(plain_head, tmp_path):
    """A client with ~/.ray/auth_token trains on a cluster without token authentication
    (in token mode, its actors would never start)."""
    addr, tmp = plain_head
    r = selfplay(
        "train",
        str(ROOT / "conf" / "quickstart.yaml"),
        *TINY,
        f"runtime.address={addr}",
        f"output_dir={tmp_path}",
        "tracking.enabled=false",
        "--no-progress",
        env=_client_env(tmp, token=True),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Ray at {addr}" in r.stderr
    from selfplay.runtime.cluster_auth import needs_token

    assert needs_token(addr) is False
    assert needs_token(f"127.0.0.1:{free_port()}") is None  # nothing answers: cannot tell


def test_ray_timing_out_at_startup_is_one_line(tmp_path, capsys, monkeypatch):
    """What `ray.init` raises when its node does not come up in time (ray._private.node,
    the message verbatim); everything else here is real."""
    import ray

    from selfplay.cli import main

    def init(*args, **kwargs):
        raise Exception(
            "The current node timed out during startup. This could happen because some of "
            "the raylet failed to startup or the GCS has become overloaded."
        )

    monkeypatch.setattr(ray, "init", init)
    args = ["train", str(ROOT / "conf" / "quickstart.yaml"), *TINY, f"output_dir={tmp_path}"]
    with pytest.raises(SystemExit) as e:
        main([*args, "tracking.enabled=false"])
    assert e.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: Ray could not start: its node timed out during startup")
    assert "the machine is overloaded" in line
    assert not any(tmp_path.iterdir())  # no run dir: nothing had started
