"""`selfplay bench memory`'s poller against allocations of known size (its figures are
reported, not asserted)."""

from __future__ import annotations

import os
import sys

import pytest

from selfplay.bench import memory

# A child that starts a grandchild; the grandchild touches 150 MB, holds it 0.6 s, frees it
# and idles, so its RSS falls back while its peak (VmHWM) keeps the 150 MB.
CHILD = """
import subprocess, sys, time
code = "b = bytearray(150 << 20)\\nfor i in range(0, len(b), 4096): b[i] = 1\\nimport time; time.sleep(0.6)\\ndel b\\nimport time; time.sleep(1.5)"
subprocess.run([sys.executable, "-c", code], check=True)
"""


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="Linux /proc only")
def test_tree_peak_counts_a_grandchilds_freed_allocation():
    r = memory.measure([sys.executable, "-c", CHILD], dict(os.environ), interval=0.05, timeout=60)
    assert r["processes"] == 2
    assert r["driver_mb"] < 100  # the child itself only waits
    assert 150 <= r["other_mb"] < 250  # the grandchild's peak, after it freed the buffer
    assert r["peak_concurrent_rss_mb"] >= 150 and r["peak_pss_mb"] >= 150


def test_bad_command_is_a_run_error():
    from selfplay.errors import RunError

    with pytest.raises(RunError, match="exit 3"):
        memory.measure([sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ))


@pytest.mark.parametrize(
    "argv,kind",
    [
        (["ray::LearnerActor", ""], "worker"),
        (["/venv/bin/python", "/venv/lib/ray/_private/workers/default_worker.py", "--x"], "worker"),
        (["ray::IDLE", ""], "idle_worker"),
        (["ray::DashboardAgent", ""], "ray_system"),
        (
            ["/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server", "--a"],
            "ray_system",
        ),
        (["/usr/bin/python3", "-c", "pass"], "other"),
    ],
)
def test_classify(argv, kind):
    assert memory.classify(argv) == kind
