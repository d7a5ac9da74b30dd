"""`selfplay submit | status | logs | stop` without a Ray head: bad input, an address that
does not answer, one that answers but is not Ray's job server, and what a submission
forwards. Each ends in one line and its exit status; the CLI runs as a subprocess, as a
user runs it, except where only the address resolution is checked. The commands against
a real head: test_jobs.py."""

from __future__ import annotations

import pytest
from test_jobs import ROOT, free_port, selfplay


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.yaml"], "config file not found: missing.yaml"),
        (["c.yaml", "algo.name=ppo"], "config: algo.name: Input should be"),
        (
            ["c.yaml", "rollout.prompts_per_step=0"],
            "config: rollout.prompts_per_step: Input should be greater than or equal to 1",
        ),
        (["c.yaml", "judge.batch_size=-4"], "config: judge.batch_size: Input should be greater"),
        (
            ["c.yaml", "runtime.max_staleness=-1"],
            "config: runtime.max_staleness: Input should be greater than or equal to 0",
        ),
        (["c.yaml", "--working-dir", "sub"], "config c.yaml is outside the working dir"),
        (["c.yaml", "--address", "127.0.0.1:6379"], "--address must be the Ray job server URL"),
        (["runs/c.yaml"], "config runs/c.yaml is under runs/, which is not uploaded"),
        (["c.yaml"], "cannot reach the Ray job server at http://127.0.0.1:"),
    ],
)
def test_submit_bad_input_is_one_line_exit_2(tmp_path, args, message):
    """Checked before any job exists: the address below is closed, so reaching it would fail
    differently; and nothing is written in the caller's directory."""
    (tmp_path / "c.yaml").write_text((ROOT / "conf" / "quickstart.yaml").read_text())
    (tmp_path / "sub").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "c.yaml").write_text((tmp_path / "c.yaml").read_text())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    closed = f"http://127.0.0.1:{free_port()}"
    r = selfplay(
        "submit", *args, *([] if "--address" in args else ["--address", closed]), cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"error: {message}"), line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_job_commands_unreachable_address(command):
    closed = f"http://127.0.0.1:{free_port()}"
    r = selfplay(command, "raysubmit_x", "--address", closed)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: cannot reach the Ray job server at {closed}"]


def test_address_defaults_to_env_then_loopback(monkeypatch):
    from selfplay.errors import InputError
    from selfplay.jobs import DEFAULT_ADDRESS, job_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert job_address(None) == DEFAULT_ADDRESS == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert job_address(None) == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert job_address(None) == "http://api:8265"
    assert job_address("https://other:443") == "https://other:443"
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address, as ray.init takes
    with pytest.raises(InputError, match=r"^\$RAY_ADDRESS must be the Ray job server URL"):
        job_address(None)


def test_submission_forwards_tracking_uri_and_resolves_paths(tmp_path, monkeypatch):
    from selfplay.errors import InputError
    from selfplay.jobs import build_submission

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.yaml").write_text("algo: {name: omwu}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    sub = build_submission("conf/c.yaml", ["runtime.steps=3"], pip=["vllm>=0.6"])
    assert sub.entrypoint == (
        "selfplay train conf/c.yaml runtime.steps=3 runtime.address=auto --no-progress"
    )
    env = sub.runtime_env
    assert env["working_dir"] == str(tmp_path) and env["pip"] == ["vllm>=0.6"]
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert {".venv", ".git", "runs", "mlruns"} <= set(env["excludes"])
    # The config's own relative sqlite store wins over the env and is made absolute.
    sub = build_submission("conf/c.yaml", ["tracking.uri=sqlite:///m.db"])
    assert sub.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/m.db"
    assert f"tracking.uri=sqlite:///{tmp_path}/m.db runtime.address=auto" in sub.entrypoint
    assert "pip" not in sub.runtime_env
    # Resuming a job's run: the run dir is a path on the cluster, passed to `train --resume`.
    sub = build_submission("conf/c.yaml", ["output_dir=/shared/runs"], resume="/shared/runs/omwu-1")
    assert sub.entrypoint.endswith("--no-progress --resume /shared/runs/omwu-1")
    assert sub.output_dir == "/shared/runs"
    with pytest.raises(InputError, match="absolute path on the cluster"):
        build_submission("conf/c.yaml", [], resume="runs/omwu-1")


def test_job_message_is_one_line():
    from selfplay.jobs import one_line

    failed = (
        "Job entrypoint command failed with exit code 1, last available logs (truncated to "
        "20,000 chars):\nrun starts\nerror: the run needs 3 CPUs but the cluster has 2\n"
    )
    assert one_line(failed) == (
        "Job entrypoint command failed with exit code 1; "
        "error: the run needs 3 CPUs but the cluster has 2"
    )
    assert one_line("Job finished successfully.") == "Job finished successfully."
    assert one_line("") == ""


@pytest.fixture
def plain_web(tmp_path):
    """A plain `http.server` (not Ray) on a free loopback port; yields (URL, its root dir)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "args, served",
    [
        (["stop", "raysubmit_x"], None),
        (["submit", "conf/quickstart.yaml"], None),
        (["logs", "raysubmit_x"], "<html>hello</html>"),  # answers 200, but not JSON
    ],
)
def test_job_commands_against_a_web_server_that_is_not_ray(plain_web, args, served):
    """Every job command connects through `jobs.connect` (status and logs as stop)."""
    url, root = plain_web
    why = "returned 404"
    if served is not None:
        (root / "api").mkdir()
        (root / "api" / "version").write_text(served)
        why = "gave Expecting value"
    r = selfplay(*args, "--address", url)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"error: {url} is not a Ray job server (GET /api/version {why}"), line
