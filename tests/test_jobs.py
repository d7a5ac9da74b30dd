"""`selfplay submit | status | logs | stop` against a real local Ray head, and their bad input.

The head is `ray start --head --block` from this venv with Ray's defaults, only
on loopback (the suite's loopback switch, `--dashboard-host 127.0.0.1`), on free
ports and its own temp dir, under its own HOME. As for a user, the token lives
in ~/.ray/auth_token (made by `ray get-auth-token --generate`), so the default
head turns token authentication on, and the CLI, with no RAY_AUTH_* set, must
find the token there. Teardown signals only the processes this fixture started
(`ray stop` would kill every Ray process on the machine, including other
users' clusters). The CLI runs as a subprocess, as a user runs it, so exit
statuses and stderr lines are the real ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import stop_server, wait_http_ok

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = [
    "runtime.steps=2",
    "rollout.prompts_per_step=4",
    "rollout.k=2",
    "rollout.opponents_k=2",
    "learner.updates_per_phase=2",
    "model.tiny.hidden=8",
    "model.tiny.layers=1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "RAY_ADDRESS",
            "RAY_API_SERVER_ADDRESS",
            "MLFLOW_TRACKING_URI",
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN",
            "RAY_AUTH_TOKEN_PATH",
        )
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def selfplay(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        [str(BIN / "selfplay"), *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


GCS: dict[str, str] = {}  # the head's GCS address, once it is up


@pytest.fixture(scope="module")
def head():
    """(job server URL, client env, token) of a fresh default head whose token is in the
    HOME both it and the client use."""
    # Short temp dir: Ray's unix socket paths must stay under ~100 characters.
    tmp = tempfile.mkdtemp(prefix="sp-ray-", dir="/tmp")
    home = Path(tmp) / "home"
    home.mkdir()
    env = _env(HOME=str(home))
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    token = (home / ".ray" / "auth_token").read_text().strip()
    dash = free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--port",
        str(gcs := free_port()),
        "--ray-client-server-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--disable-usage-stats",
        "--temp-dir",
        tmp,
    ]
    # No SIGTERM drain: the test's node has nothing to hand over.
    log = open(Path(tmp) / "head.log", "w")
    proc = subprocess.Popen(
        cmd,
        env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        _wait_up(url, token, proc, Path(tmp) / "head.log")
        GCS["address"] = f"127.0.0.1:{gcs}"
        yield url, env, token
    finally:
        stop_server(proc, group=False, timeout=30)  # `ray start --block` stops its children
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_up(url: str, token: str, proc, log: Path) -> None:
    req = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    wait_http_ok(req, proc, log, "ray head", every=0.5)


def test_default_head_asks_for_the_token(head):
    """What the CLI works around: the head wants the token, Ray's own client does not send it."""
    url, env, _ = head
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
    assert e.value.code == 401


def test_a_cluster_that_asks_for_a_token_none_here_is_one_line(head, tmp_path):
    """`selfplay scale --address GCS` from a HOME without a token: the GCS is asked first,
    and the answer says what to set, at once (not after Ray's ~20 s of refused retries)."""
    home = tmp_path / "home"
    home.mkdir()
    addr = GCS["address"]
    r = selfplay(
        "scale", "some-run", "--rollout-workers", "1", "--address", addr, env=_env(HOME=str(home))
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        f"error: the Ray cluster at {addr} asks for its token: set RAY_AUTH_TOKEN (or "
        f"RAY_AUTH_TOKEN_PATH to a file holding it)"
    ]
    assert not (home / ".ray").exists()  # nothing written
    from selfplay.runtime.cluster_auth import needs_token

    assert needs_token(addr) is True


def test_submit_wait_runs_to_mlflow(head, tmp_path):
    from mlflow.tracking import MlflowClient

    url, env, _ = head
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = selfplay(
        "submit",
        "conf/quickstart.yaml",
        *TINY,
        f"tracking.uri={store}",
        "tracking.experiment=jobs",
        "--address",
        url,
        "--wait",
        env=env,
        timeout=300,  # a loaded 2-core machine: ~140 s seen
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job_id = r.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "gap:" in r.stdout and f"job {job_id} SUCCEEDED" in r.stderr

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("jobs")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["runtime.address"] == "auto"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "gap")] == [1, 2]

    st = selfplay("status", job_id, "--address", url, env=env)
    assert (st.returncode, st.stdout.split()[0]) == (0, "SUCCEEDED")
    logs = selfplay("logs", job_id, "--address", url, env=env)
    assert logs.returncode == 0 and "gap:" in logs.stdout
    stop = selfplay("stop", job_id, "--address", url, env=env)
    assert (stop.returncode, stop.stdout.strip()) == (0, f"{job_id} had already ended")
    missing = selfplay("status", "raysubmit_nosuchjob", "--address", url, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: no job raysubmit_nosuchjob at {url}"


def test_stop_then_follow_exits_nonzero(head, tmp_path):
    url, env, _ = head
    r = selfplay(
        "submit",
        "conf/quickstart.yaml",
        "runtime.steps=100000",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--address",
        url,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (job_id,) = r.stdout.split()  # without --wait, stdout is the job id alone
    stop = selfplay("stop", job_id, "--address", url, env=env)
    assert (stop.returncode, stop.stdout.strip()) == (0, f"stopping {job_id}")
    follow = selfplay("logs", job_id, "--follow", "--address", url, env=env)
    assert follow.returncode == 1  # --follow / --wait exit 0 only for SUCCEEDED
    assert follow.stderr.splitlines()[-1].startswith(f"job {job_id} STOPPED")


def test_token_from_env_and_refusals_are_one_line(head, tmp_path):
    url, env, token = head
    nohome = tmp_path / "nohome"
    nohome.mkdir()
    # The token from $RAY_AUTH_TOKEN, then from a file named by $RAY_AUTH_TOKEN_PATH.
    (tmp_path / "tok").write_text(token + "\n")
    for extra in ({"RAY_AUTH_TOKEN": token}, {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}):
        r = selfplay(
            "status", "raysubmit_x", "--address", url, env={**env, "HOME": str(nohome), **extra}
        )
        assert r.stderr.strip() == f"error: no job raysubmit_x at {url}", (extra, r.stderr)
    cases = [
        ({"HOME": str(nohome)}, "rejected the request: it needs the cluster token; put it in"),
        ({"RAY_AUTH_TOKEN": "0" * 32}, "rejected the cluster token (from $RAY_AUTH_TOKEN)"),
        ({"RAY_AUTH_MODE": "disabled"}, "it needs the cluster token; RAY_AUTH_MODE is 'disabled'"),
    ]
    for extra, message in cases:
        r = selfplay("status", "raysubmit_x", "--address", url, env={**env, **extra})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"error: the Ray job server at {url} ") and message in line, line
