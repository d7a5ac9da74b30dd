"""Writing checkpoints: keeping the newest, pruning by verification, a SIGKILL while
writing, and whose temporary dirs a writer may remove (tests/test_checkpoint.py has the
format's round trips and corruption checks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import bits_equal

import selfplay.runtime.checkpoint.format as ck

REPO = Path(__file__).resolve().parents[1]


def test_keep_two_newest_and_replace_same_step(tmp_path):
    for step in (1, 2, 3, 4, 5):
        ck.write_checkpoint(
            tmp_path, step, {"s": step}, {"t": {"x": torch.full((2,), step)}}, keep=2
        )
        assert [p.name for p in ck.list_checkpoints(tmp_path)] == [
            f"step-{s:06d}" for s in range(step, max(step - 2, 0), -1)
        ]
    ck.write_checkpoint(tmp_path, 5, {"s": "again"}, {"t": {"x": torch.zeros(2)}}, keep=2)
    c = ck.load_latest(tmp_path)
    assert c.meta == {"s": "again"} and bits_equal(c.tensors["t"]["x"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000005"]
    ck.write_checkpoint(tmp_path, 6, {}, {}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000006"]


_CHILD = """
import sys, torch
from pathlib import Path
from selfplay.runtime.checkpoint.format import write_checkpoint
root = Path(sys.argv[1])
torch.manual_seed(0)
write_checkpoint(root, 1, {"n": 1}, {"learner-0": {"w": torch.randn(64, 64)}})
print("step1", flush=True)
big = {f"b{i}": torch.ones(8 << 20) for i in range(6)}  # 6 x 32 MB
write_checkpoint(root, 2, {"n": 2}, {"learner-0": big, "learner-1": big})
print("step2", flush=True)
"""


def test_sigkill_mid_write_keeps_previous(tmp_path):
    root = tmp_path / "checkpoints"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "step1"
        deadline = time.monotonic() + 20
        while not list(root.glob(".tmp-step-000002-*/*.safetensors")):
            assert child.poll() is None and time.monotonic() < deadline, "child finished first"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (root / "step-000002").exists()
    assert list(root.glob(".tmp-step-000002-*"))  # the half-written checkpoint is there...
    warnings: list[str] = []
    c = ck.load_latest(root, warn=warnings.append)  # ...and ignored, without a warning
    torch.manual_seed(0)
    assert c.step == 1 and warnings == []
    assert bits_equal(c.tensors["learner-0"]["w"], torch.randn(64, 64))
    ck.write_checkpoint(root, 3, {"n": 3}, {"learner-0": {"w": torch.zeros(1)}})
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000003"]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_prune_keeps_what_was_just_written_and_drops_corrupt(tmp_path, keep):
    """The issue's case: step 10 corrupt, the run resumed from 5 writes 7. Oracle: verify."""
    for step in (5, 10):
        ck.write_checkpoint(tmp_path, step, {"s": step}, {"t": {"x": torch.ones(64)}}, keep=3)
    _flip(tmp_path / "step-000010" / "t.safetensors")
    ck.write_checkpoint(tmp_path, 7, {"s": 7}, {"t": {"x": torch.zeros(64)}}, keep=keep)
    left = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert left == ["step-000007", "step-000005"][:keep]
    assert all(ck.verify(tmp_path / n) is None for n in left)
    assert ck.load_latest(tmp_path).step == 7


def test_prune_drops_an_older_corrupt_one_and_keeps_older_good_ones(tmp_path):
    for step in (1, 2, 3):
        ck.write_checkpoint(tmp_path, step, {}, {"t": {"x": torch.ones(8)}}, keep=3)
    _flip(tmp_path / "step-000003" / "t.safetensors")
    ck.write_checkpoint(tmp_path, 4, {}, {"t": {"x": torch.ones(8)}}, keep=3)
    # 3 is corrupt: 4 (just written) and the two newest good ones older than it stay.
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == [
        "step-000004",
        "step-000002",
        "step-000001",
    ]


def test_only_own_or_dead_writers_tmp_dirs_are_removed(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = tmp_path / f".tmp-step-000009-{other.pid}"
        dead_tmp = tmp_path / f".tmp-step-000008-{dead.pid}"
        own_tmp = tmp_path / f".tmp-step-000007-{os.getpid()}"
        for d in (live_tmp, dead_tmp, own_tmp):
            d.mkdir()
            (d / "meta.json").write_text("{}")
        ck.write_checkpoint(tmp_path, 1, {}, {})
        assert live_tmp.is_dir()  # a second live writer's work in progress is not touched
        assert not dead_tmp.exists() and not own_tmp.exists()
    finally:
        other.kill()
        other.wait()
