"""The run directory as one process owns it: its lock, its config.yaml, and stopping on a signal.

Lock. A process that trains in RUN_DIR (a new run, or `--resume RUN_DIR`) holds an
exclusive `fcntl.flock` on RUN_DIR/.lock for its whole lifetime. A second process
is refused at once with one line (`run dir D is in use by pid N`). The kernel
drops the lock when its holder dies, however it dies (SIGKILL included), so a
stale .lock file never blocks a resume. The descriptor is close-on-exec: Ray's
processes, started by the driver, do not inherit it. The .lock file stays empty
(a refused process writes nothing); the holder's pid is read from /proc/locks.

config.yaml is written only once the config has been checked against the run's
checkpoint, and atomically (a temporary file, fsynced, renamed over the old one).

Signals. SIGTERM (how Kubernetes, Ray jobs and most schedulers stop a process)
and SIGINT (Ctrl-C) ask the run to stop at the next step boundary: the step in
progress is finished, a checkpoint is written, one line says how to resume, and
the process exits with 128 + the signal number (143 for SIGTERM, 130 for
SIGINT). A second signal stops at once, without a checkpoint: the last periodic
one is intact (checkpoints are written atomically), and so is the run.

Leftovers. A driver killed with SIGKILL leaves its in-process cluster's two agents
behind for over a minute; `reap_cluster_with_driver` starts a watcher that kills
them when the driver dies (see `selfplay.runtime.driver.reaper`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from pathlib import Path

from selfplay.config import Config, to_yaml
from selfplay.errors import InputError, RunError
from selfplay.runtime.checkpoint.format import CHECKPOINT_DIR, list_checkpoints

LOCK = ".lock"
_held: dict[Path, int] = {}  # run dir -> fd of its lock, held until the process ends


def lock_run_dir(run_dir: Path) -> None:
    """Hold RUN_DIR/.lock for the rest of this process (idempotent), or raise InputError.

    Nothing is written: the file is created empty if missing (a run dir made before
    locking existed), and the holder's pid is read from /proc/locks."""
    d = Path(run_dir).resolve()
    if d in _held:
        return
    fd = os.open(d / LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(os.fstat(fd).st_ino)
        os.close(fd)
        raise InputError(f"run dir {run_dir} is in use by pid {pid}") from None
    except BaseException:
        os.close(fd)
        raise
    _held[d] = fd


def _holder(inode: int) -> str:
    """The pid holding a flock on `inode`, from /proc/locks ('?' if it cannot be told)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            f = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF"
            if len(f) >= 6 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(inode):
                return f[4]
    return "?"


def create_run_dir(cfg: Config) -> Path:
    """A new run dir `OUTPUT_DIR/<algo>-<time>[-i]`, created exclusively (two runs started
    in the same second get two dirs) and locked."""
    base = Path(cfg.output_dir) / f"{cfg.algo.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    d, i = base, 1
    while True:
        try:
            d.mkdir()
            break
        except FileExistsError:
            d, i = Path(f"{base}-{i}"), i + 1
    lock_run_dir(d)
    return d


def write_config(cfg: Config, run_dir: Path) -> Path:
    """RUN_DIR/config.yaml, replaced atomically (tmp file, fsync, rename)."""
    p = Path(run_dir) / "config.yaml"
    tmp = p.with_name(f".config.yaml.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(to_yaml(cfg))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


_watchers: list = []  # held until the process ends: their pipes close when it does


def reap_cluster_with_driver() -> None:
    """Have the in-process Ray cluster this process just started cleared when it dies."""
    from selfplay.runtime.driver import reaper

    try:
        from ray._private import worker

        raylet = worker._global_node.all_processes["raylet"][0].process.pid
    except (AttributeError, KeyError, IndexError, TypeError):
        return  # not a head started here, or Ray's internals moved: nothing to watch
    w = reaper.watch(raylet)
    if w is not None:
        _watchers.append(w)


# ------------------------------------------------------------------ signals
class Stopped(RunError):
    """The run was stopped by a signal; `exit_code` is 128 + its number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequest:
    """Set by the first SIGTERM/SIGINT; the train loop checks it at each step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.run_dir: Path | None = None  # set once the run has one

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether `--resume run_dir` has a checkpoint to continue from."""
    try:
        return bool(list_checkpoints(Path(run_dir) / CHECKPOINT_DIR))
    except OSError:
        return False


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGTERM and SIGINT request a stop at the next step boundary
    (yields the `StopRequest`); a second one raises `Stopped` at once. Ray's own
    SIGTERM handler, installed by `ray.init`, is replaced while the block runs."""
    req = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield req  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        if req:
            if req.run_dir is None:
                how = "no run dir was made yet"
            elif not _has_checkpoint(req.run_dir):
                how = (
                    f"no checkpoint was written yet in {req.run_dir}: nothing to resume; "
                    "start the run again"
                )
            else:
                how = (
                    "continue from its last checkpoint with "
                    f"`selfplay train --resume {req.run_dir}`"
                )
            raise Stopped(f"stopped by {signal.Signals(signum).name} at once; {how}", signum)
        req.signum = signum

    sigs = (signal.SIGTERM, signal.SIGINT)
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield req
    finally:
        for s, h in old.items():
            signal.signal(s, h)
