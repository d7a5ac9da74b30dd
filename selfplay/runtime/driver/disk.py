"""A full disk while a run writes: one line naming the path and its free space.

`disk_full(path, then)` turns "no space left on device" raised inside the block
(an `OSError` with errno ENOSPC or EDQUOT, or safetensors' `SafetensorError`,
which carries only the OS message) into a `RunError` that names `path`, the free
space left on its file system, and `then`: what is intact and how to go on. The
writers it guards (checkpoints, `model/`) write into a temporary directory and
rename it into place, so a failed write leaves the previous version whole.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from selfplay.errors import RunError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28")


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _FULL:
        return True
    return type(e).__name__ == "SafetensorError" and any(t in str(e) for t in _TEXTS)


def free_space(path: str | Path) -> str:
    """Free bytes on the file system holding `path` (its nearest existing ancestor), human."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        n = float(shutil.disk_usage(p).free)
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@contextlib.contextmanager
def disk_full(path: str | Path, then: str) -> Iterator[None]:
    """Within the block, a full disk raises `RunError("no space left on the device of
    PATH (F free) ...; THEN")`; any other error passes through."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        raise RunError(
            f"no space left on the device of {path} ({free_space(path)} free) while "
            f"writing it; {then}"
        ) from None
