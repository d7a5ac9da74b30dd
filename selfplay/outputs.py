"""Writing outputs safely: a path is checked writable before any work, and JSON is
always valid JSON.

`check_writable_dir` is called by the commands before they start anything, so an
unwritable `output_dir` or `--plot` fails in one line and leaves nothing behind.
`dumps` is what every JSON output goes through (summary.json, history.json,
`--json`): a NaN or ±inf (a diverged run) becomes `null`, never the bare `NaN`
that `json.dumps` writes by default and no JSON parser reads.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from selfplay.errors import InputError


def check_writable_dir(path: str | Path, what: str) -> None:
    """Refuse `path` (a directory, existing or not) unless a file can be created in it.

    Creates the missing directories and a temporary file to find out, then removes
    both again: afterwards nothing is left that was not there before."""
    p = Path(path).expanduser()
    created: list[Path] = []
    try:
        missing = []
        q = p
        while not q.exists():
            missing.append(q)
            if q.parent == q:
                break
            q = q.parent
        if q.exists() and not q.is_dir():
            raise InputError(f"{what} {path}: {q} is not a directory")
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        with tempfile.TemporaryFile(dir=p):
            pass
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"{what} {path} is not writable ({_why(e, p)})") from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass


def _why(e: OSError, path: Path) -> str:
    """The reason a file or directory could not be made under `path`. ENOENT for an
    entry made in a directory that exists is no missing file: the file system takes
    no new entries (proc, sysfs), and that is what is said."""
    near = path
    while not near.exists() and near.parent != near:
        near = near.parent
    if e.errno == errno.ENOENT and near.is_dir():
        fs = _fs_type(near)
        kind = f"a {fs} file system" if fs else "a file system"
        where = "it" if near == path else str(near)
        return f"{where} is on {kind} that takes no new files"
    return e.strerror or str(e)


def _fs_type(path: Path) -> str | None:
    """The type of the file system `path` is on (Linux: /proc/self/mounts), or None."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    real, best, fs = str(path.resolve()), "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, fs = mnt, parts[2]
    return fs


def check_writable_file(path: str | Path, what: str) -> None:
    """Refuse a file path that cannot be written: its directory must be writable and
    the path, if it exists, a writable file."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise InputError(f"{what} {path} is a directory")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{what} {path} is not writable")
    check_writable_dir(p.parent, f"{what} {path}: directory")


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±inf) replaced by None; numpy scalars
    and arrays become plain Python numbers and lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays, torch tensors
    if callable(tolist):
        return finite(tolist())
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """`json.dumps` that always writes valid JSON: non-finite floats become null."""
    return json.dumps(finite(obj), allow_nan=False, **kw)
