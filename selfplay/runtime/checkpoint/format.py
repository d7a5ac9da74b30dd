"""On-disk checkpoints of a run: safetensors for tensors, plain JSON for the rest.

Layout (RUN_DIR/checkpoints/):

    step-000012/
        meta.json               JSON object given by the caller
        <stem>.safetensors      one per entry of `tensors` (e.g. learner-0, controller)
        manifest.json           {"format": 1, "step": 12, "files": {name: {"bytes", "sha256"}}}

Atomicity. A checkpoint is built in `.tmp-step-XXXXXX-<pid>/`, every file and
the directory are fsynced, the manifest is written LAST, and the directory is
renamed into place (a rename is atomic on POSIX). A crash at any point leaves
either the old set of step directories or the old set plus a complete new one;
stale `.tmp-*` directories are removed by the next successful write (only this
process's own and those of processes no longer alive: another live writer's are
never touched). Retention (`prune`) keeps the checkpoint just written and the
`keep - 1` newest older ones that verify, and removes corrupt ones.

Integrity. `verify` checks that the manifest exists and that every file it
lists has the recorded size and SHA-256, so a truncated or bit-flipped file
is reported with a one-line reason and `load_latest` falls back to the next
older checkpoint.

Memory. Each file is streamed to disk tensor by tensor (`save_tensors`: the
safetensors header, then each tensor's bytes as they lie in memory), and a file's
group may be given as a zero-argument callable that returns it: it is called
when that file is written and dropped after, so a writer holds one group
(e.g. one role's weights) at a time, never a copy of everything.

Safety. Loading never deserialises Python objects: tensors are read with
`safetensors.torch.load_file` (a JSON header plus raw bytes) and everything else
with `json`. A file that is not a valid safetensors file fails its checksum or
its header parse and raises `CheckpointError`; no code in it runs.

What goes into the tensors and meta is packed by `selfplay.runtime.checkpoint.codec`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from selfplay.errors import InputError

CHECKPOINT_DIR = "checkpoints"
FORMAT = 1
MANIFEST = "manifest.json"
META = "meta.json"
_STEP_RE = re.compile(r"^step-(\d+)$")
_STEM_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TMP = ".tmp-"


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete or corrupt; the message is one line."""


@dataclass
class Checkpoint:
    step: int  # steps completed when written
    path: Path  # the step-XXXXXX directory
    meta: dict
    tensors: dict[str, dict[str, torch.Tensor]]  # file stem -> name -> tensor (CPU)


# ------------------------------------------------------------------ writing
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_and_sync(path: Path, sync: bool = True) -> dict[str, Any]:
    """Size and SHA-256 of a file; fsync it if asked (works on a read-only fd on Linux)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return {"bytes": n, "sha256": h.hexdigest()}


def _write_json(path: Path, obj: Any) -> dict[str, Any]:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    return _hash_and_sync(path)


_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class RawTensor:
    """A tensor as bytes: safetensors dtype name ("F32", ...), shape, and a flat uint8
    numpy array of its C-order data (Ray ships a numpy buffer as it lies in memory)."""

    dtype: str
    shape: tuple[int, ...]
    data: Any

    @classmethod
    def of(cls, t: torch.Tensor) -> RawTensor:
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"cannot store a {t.dtype} tensor in a checkpoint")
        return cls(_DTYPES[t.dtype], tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy())


def save_tensors(group: Mapping[str, torch.Tensor | RawTensor], path: Path) -> None:
    """Write `group` as a safetensors file, one tensor at a time: no copy of the group
    (a tensor off the CPU or strided is copied alone, while it is written)."""
    names = sorted(group)
    header: dict[str, Any] = {}
    off = 0
    for k in names:
        v = group[k]
        dtype, shape = (v.dtype, v.shape) if isinstance(v, RawTensor) else (None, v.shape)
        if dtype is None:
            if v.dtype not in _DTYPES:
                raise TypeError(f"cannot store a {v.dtype} tensor in a checkpoint")
            dtype, n = _DTYPES[v.dtype], v.numel() * v.element_size()
        else:
            n = int(v.data.nbytes)
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for k in names:
            v = group[k]
            f.write(memoryview(v.data if isinstance(v, RawTensor) else RawTensor.of(v).data))


Group = Mapping[str, torch.Tensor | RawTensor]


def write_checkpoint(
    root: Path,
    step: int,
    meta: dict,
    tensors: Mapping[str, Group | Callable[[], Group]],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically under `root`, then `prune` to the `keep` newest
    verifying ones (this one included). Returns its path. A group given as a callable
    is fetched when its file is written, and released after."""
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    if step < 0 or keep < 1:
        raise ValueError(f"need step >= 0 and keep >= 1, got step={step} keep={keep}")
    for stem in tensors:
        if not _STEM_RE.match(stem) or stem in ("meta", "manifest"):
            raise ValueError(f"bad checkpoint file stem {stem!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    tmp = root / f"{_TMP}{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = {META: _write_json(tmp / META, meta)}
        for stem, group in tensors.items():
            fname = f"{stem}.safetensors"
            save_tensors(group() if callable(group) else group, tmp / fname)
            files[fname] = _hash_and_sync(tmp / fname)
        # The manifest goes last: its presence means every other file is complete.
        _write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": files})
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    _promote(tmp, final)
    prune(root, final, keep)
    _remove_stale_tmp(root)
    return final


def prune(root: Path, newest: Path, keep: int) -> list[Path]:
    """Remove checkpoints under `root` that `newest` (just written, complete) makes
    unnecessary; returns what was removed.

    Retention is by verification and by recency of writing, not by step number
    alone: `newest` is always kept, whatever older or newer step directories
    exist, and so are the `keep - 1` next-newest older checkpoints that verify.
    Removed are: older verifying checkpoints beyond those, and every checkpoint
    that fails `verify` (corrupt or incomplete: it cannot be resumed from). A
    step directory NEWER than `newest` exists only when a resume skipped it
    because it failed verification, so it is removed if it still fails; one that
    verifies (it would have to have been repaired meanwhile) is left alone, as is
    anything this process cannot tell is corrupt. So pruning never removes the
    newest checkpoint that verifies, nor any of the `keep` newest that do.
    Older ones are verified newest first, and only until `keep - 1` good ones are
    found: each write re-reads at most that many checkpoints.
    """
    m = _STEP_RE.match(Path(newest).name)
    step = int(m.group(1)) if m else -1
    removed, good = [], 1  # `newest` counts
    for path in list_checkpoints(root):
        if path == newest:
            continue
        later = int(_STEP_RE.match(path.name).group(1)) > step
        if not later and good >= keep:
            removed.append(path)  # beyond the keep newest good ones: no need to verify
        elif verify(path) is not None:
            removed.append(path)  # corrupt or incomplete: nothing can be resumed from it
        elif not later:
            good += 1
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _remove_stale_tmp(root: Path) -> None:
    """Remove this process's leftover `.tmp-*` directories and those of dead processes;
    another live process's (a second writer) are left alone."""
    for stale in root.glob(f"{_TMP}*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _promote(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` to `final`. A directory cannot be renamed over a non-empty
    one, so an existing `final` (the same step written again) is first moved aside."""
    if final.exists():
        aside = final.parent / f"{_TMP}old-{final.name}-{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


# ------------------------------------------------------------------ reading
def list_checkpoints(root: Path) -> list[Path]:
    """Step directories under `root`, newest first (in-progress `.tmp-*` ones excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))
    ]
    return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]


def _read_manifest(path: Path) -> tuple[dict | None, str | None]:
    mpath = path / MANIFEST
    if not mpath.is_file():
        return None, f"{MANIFEST} missing (the write did not finish)"
    try:
        man = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{MANIFEST} unreadable: {e}"
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        got = man.get("format") if isinstance(man, dict) else man
        return None, f"{MANIFEST} has format {got!r}, expected {FORMAT}"
    m = _STEP_RE.match(path.name)
    if m and man.get("step") != int(m.group(1)):
        return None, f"{MANIFEST} says step {man.get('step')!r}, directory is {path.name}"
    files = man.get("files")
    if not isinstance(files, dict) or META not in files:
        return None, f"{MANIFEST} lists no {META}"
    return man, None


def verify(path: Path) -> str | None:
    """None if the manifest is present and every file it lists has its size and SHA-256;
    otherwise the reason, on one line."""
    path = Path(path)
    man, reason = _read_manifest(path)
    if man is None:
        return reason
    for fname, want in man["files"].items():
        if not isinstance(fname, str) or "/" in fname or fname in ("", ".", ".."):
            return f"{MANIFEST} lists a bad file name {fname!r}"
        if not isinstance(want, dict) or not {"bytes", "sha256"} <= want.keys():
            return f"{MANIFEST} entry for {fname} lacks bytes/sha256"
        fpath = path / fname
        if not fpath.is_file():
            return f"{fname}: missing"
        size = fpath.stat().st_size
        if size != want["bytes"]:
            return f"{fname}: {size} bytes, manifest says {want['bytes']}"
        if _hash_and_sync(fpath, sync=False)["sha256"] != want["sha256"]:
            return f"{fname}: sha256 differs from the manifest (corrupted)"
    return None


def load_checkpoint(path: Path) -> Checkpoint:
    """Verify, then load the checkpoint in `path`; CheckpointError if it is unusable."""
    path = Path(path)
    reason = verify(path)
    if reason is not None:
        raise CheckpointError(f"checkpoint {path}: {reason}")
    man, _ = _read_manifest(path)
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
        tensors = {
            fname[: -len(".safetensors")]: load_file(str(path / fname), device="cpu")
            for fname in man["files"]
            if fname.endswith(".safetensors")
        }
    except (OSError, UnicodeDecodeError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint {path}: {one_line(e)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: {META} is not a JSON object")
    return Checkpoint(step=int(man["step"]), path=path, meta=meta, tensors=tensors)


def load_latest(root: Path, warn: Callable[[str], None] | None = None) -> Checkpoint:
    """The newest checkpoint under `root` that verifies and loads; each one skipped is
    reported through `warn`. CheckpointError if there is none."""
    root = Path(root)
    reasons = []
    for path in list_checkpoints(root):
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            reason = str(e).removeprefix(f"checkpoint {path}: ")
        reasons.append(f"{path.name}: {reason}")
        if warn is not None:
            warn(f"checkpoint {path}: {reason}; using an older one")
    detail = (
        "; ".join(reasons)
        if reasons
        else ("directory missing" if not root.is_dir() else "no step-* directories")
    )
    raise CheckpointError(f"no usable checkpoint in {root} ({detail})")


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
