"""`selfplay eval` stops as `selfplay train` does, and is bounded in size.

A long evaluation (thousands of draws of a token game's prompt) of a one-step run,
run as a user runs it (the `selfplay` executable, its own in-process cluster):

- SIGINT (Ctrl-C) or SIGTERM while it samples, once its first draws are in its
  cache (each is cached as it comes in): it stops within seconds with one line and
  exit 130 / 143 (not ignored, not an abort with a crash dump);
- SIGKILL: no process of its session is left within 30 s (oracle: /proc, by session
  id; Ray's agents used to stay for minutes);
- `--num-prompts` beyond the bound: one line, exit 2, before anything starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_resume import ENV, QUICKSTART, ROOT, SELFPLAY, SMALL, run
from test_resume_safety import _session

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evalsig")
    res = run(str(QUICKSTART), "runtime.steps=1", *SMALL, f"output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    (d,) = [p for p in out.iterdir() if p.is_dir()]
    return d


def _start_eval(d: Path, cache: Path) -> tuple[subprocess.Popen, list[str]]:
    """A long `selfplay eval` (progress bars on stderr, read as they come: tqdm
    writes carriage returns, not lines)."""
    proc = subprocess.Popen(
        [SELFPLAY, "eval", str(d), "--num-prompts", "5000", "--no-mlflow", "--cache", str(cache)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=ENV,
        start_new_session=True,
    )
    chunks: list[str] = []

    def read() -> None:
        while data := os.read(proc.stderr.fileno(), 4096):
            chunks.append(data.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return proc, chunks


def _sampling(proc, chunks, cache: Path | None = None, timeout: float = 240) -> None:
    """Until the eval samples (and, with `cache`, has cached a draw)."""
    deadline = time.monotonic() + timeout
    while "sampling" not in "".join(chunks) or (cache and not any(cache.rglob("*.json"))):
        assert proc.poll() is None, "".join(chunks)[-3000:]
        assert time.monotonic() < deadline, "eval never started sampling (or caching)"
        time.sleep(0.05)


def _kill_all(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_eval_with_one_line(run_dir, tmp_path, sig, code):
    cache = tmp_path / "cache"
    proc, chunks = _start_eval(run_dir, cache)
    try:
        _sampling(proc, chunks, cache)
        t0 = time.monotonic()
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"eval kept running 30 s after {sig.name}")
        took = time.monotonic() - t0
    finally:
        _kill_all(proc)
    err = "".join(chunks)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Aborted" not in err and "SIGABRT" not in err, err[-3000:]
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last == (
        f"error: stopped by {sig.name}; nothing was reported; the draws made so far are "
        f"cached in {cache}: the same command goes on from there"
    ), last
    assert took < 15, took


def test_eval_killed_leaves_no_process_behind(run_dir, tmp_path):
    proc, chunks = _start_eval(run_dir, tmp_path / "cache")
    try:
        _sampling(proc, chunks)
        assert any("DashboardAgent" in c for c in _session(proc.pid).values())
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 30  # without the reaper the agents stay minutes
        while (left := _session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, left
    finally:
        _kill_all(proc)


def test_eval_size_is_bounded(run_dir, capsys):
    from selfplay.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", str(run_dir), "--num-prompts", "100000000", "--no-mlflow"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: --num-prompts must be in [1, 100000], got 100000000"]


@pytest.mark.parametrize(
    "args, line",
    [
        (["--exploiter", "best-of-x"], "--exploiter must be best-of-N with N >= 1"),
        (["--exploiter", "best-of-0"], "--exploiter must be best-of-N with N >= 1"),
        (["--exploiter", "best-of-4", "--samples", "1"], "--exploiter needs --samples >= 2"),
        (["--exploiter", "best-of-4", "--proposal", "/no/such"], "/no/such"),
        (
            ["--exploiter", "best-of-4", "--max-judgments", "10"],
            "the best-of-4 exploiter needs 256 judgments (16 prompts x 4 candidates x 2 "
            "samples x 2 policies), over --max-judgments 10",
        ),
    ],
)
def test_exploiter_bad_input_is_one_line(run_dir, capsys, args, line):
    """Checked before Ray starts: exit 2, one line."""
    from selfplay.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", str(run_dir), "--num-prompts", "16", "--samples", "2", *args, "--no-mlflow"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and line in err[0], err
