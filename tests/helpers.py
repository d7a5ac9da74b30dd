"""Small helpers shared by test modules (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


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


def wait_http_ok(
    request: str | urllib.request.Request,
    proc: subprocess.Popen,
    log: Path,
    what: str,
    timeout: float = 90,
    every: float = 0.3,
) -> None:
    """Poll `request` until it answers 200; fail with the log's tail if `proc` exits or
    `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(request, timeout=1).status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(every)


def bits_equal(a, b) -> bool:
    """Same dtype, shape and bytes (NaN-safe, unlike torch.equal)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def demo_models(tmp_path_factory, arch: str = "qwen2") -> tuple[Path, Path]:
    """(policy dir, reward dir) of the offline demo models of `arch`
    (`selfplay.models.demo`), written once per call under a fresh tmp dir; load them with
    `load_policy` / `load_classifier`. Use from a module-scoped fixture:

        @pytest.fixture(scope="module")
        def demo(tmp_path_factory):
            return demo_models(tmp_path_factory, "llama")
    """
    from selfplay.models.demo import write_chat_policy, write_reward_model

    root = tmp_path_factory.mktemp(f"demo_{arch}")
    return (
        write_chat_policy(root / "policy", arch=arch),
        write_reward_model(root / "reward", arch=arch),
    )
