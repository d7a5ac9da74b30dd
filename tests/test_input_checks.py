"""Input checks and messages: each refusal says the true reason, in one line, early.

No Ray here: every case is refused (or said) before a cluster would start.
Oracles: what the other side of a message does (`--resume` on the run dir the
message names), the filesystem's own answer, plain arithmetic on the grid sizes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from selfplay.cli import main
from selfplay.config import load_config, to_yaml
from selfplay.errors import InputError


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- a second Ctrl-C ---------------------------------------------------------------


def _stopped_twice(run_dir: Path) -> str:
    """The message of two SIGINTs in a row while a run in `run_dir` trains."""
    from selfplay.runtime.driver.rundir import Stopped, stop_on_signals

    with pytest.raises(Stopped) as e:
        with stop_on_signals() as req:
            req.run_dir = run_dir
            os.kill(os.getpid(), signal.SIGINT)  # the first asks for a stop at a boundary
            os.kill(os.getpid(), signal.SIGINT)  # the second stops at once
            time.sleep(10)  # never reached: the handler raises
    assert e.value.exit_code == 130
    return str(e.value)


def test_second_signal_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    from selfplay.runtime.driver.resume import check_resume

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(load_config(None)))
    msg = _stopped_twice(run_dir)
    assert "nothing to resume" in msg and "--resume" not in msg, msg
    with pytest.raises(InputError, match="no usable checkpoint"):  # and indeed it refuses
        check_resume(None, [], run_dir)

    (run_dir / "checkpoints" / "step-000003").mkdir(parents=True)
    msg = _stopped_twice(run_dir)
    assert msg.endswith(
        f"continue from its last checkpoint with `selfplay train --resume {run_dir}`"
    )


# ---- the true reason a path is not writable ------------------------------------------


@pytest.mark.parametrize(
    "args, env, want",
    [
        (
            ["--no-mlflow", "--plot", "/proc/x.png"],
            {},
            "--plot /proc/x.png: directory /proc is not writable (it is on a proc file system",
        ),
        (
            ["--no-mlflow", "--plot", "/proc/sub/x.png"],
            {},
            "directory /proc/sub is not writable (/proc is on a proc file system",
        ),
        (
            [],
            {"MLFLOW_TRACKING_URI": "sqlite:////proc/ml.db"},
            "tracking store sqlite:////proc/ml.db: directory /proc is not writable (it is on a "
            "proc file system",
        ),
    ],
)
def test_a_path_on_proc_is_not_called_missing(tmp_path, capsys, monkeypatch, args, env, want):
    """/proc exists; creating a file in it fails with ENOENT, which is not the reason."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plot = ["--plot", str(tmp_path / "g.png")] if "--plot" not in args else []
    code, out, err = _cli(["game", "--generate", "rps", "--n", "3", *plot, *args], capsys)
    line = _one_line(err)
    assert code == 2 and out == "", err
    assert want in line and "No such file" not in line, line
