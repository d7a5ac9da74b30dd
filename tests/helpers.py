"""Small helpers shared by test modules (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
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


def oracle_gap(P, pi) -> float:
    """The duality gap 2·max_y (Pπ)_y − 1, in plain numpy."""
    return float(2.0 * np.max(P @ pi) - 1.0)


def oracle_regularized_gap(P, pi, beta: float, mu) -> float:
    """2·[β·log Σ_y μ(y)·exp((Pπ)_y/β) + β·KL(π‖μ)] − 1, in plain numpy."""
    z = np.log(mu) + (P @ pi) / beta
    lse = z.max() + np.log(np.exp(z - z.max()).sum())
    kl = float(np.sum(pi * (np.log(pi) - np.log(mu))))
    return float(2.0 * (beta * lse + beta * kl) - 1.0)
