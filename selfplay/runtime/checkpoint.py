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
stale `.tmp-*` directories are removed by the next successful write.

Integrity. `verify` checks that the manifest exists and that every file it
lists has the recorded size and SHA-256, so a truncated or bit-flipped file
is reported with a one-line reason and `load_latest` falls back to the next
older checkpoint.

Safety. Loading never deserialises Python objects: tensors are read with
`safetensors.torch.load_file` (a JSON header plus raw bytes) and everything else
with `json`. A file that is not a valid safetensors file fails its checksum or
its header parse and raises `CheckpointError`; no code in it runs.

Packing helpers turn the runtime's dataclasses into (tensors, JSON meta) pairs
and back, bitwise: `LearnerState` (rank-local weights, AdamW state, roles),
dataclasses of numpy arrays (`TrainBatch`, `BatchInfo`), sampler versions, and
the global RNG states of `random`, numpy's legacy generator and torch (CPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from selfplay.errors import InputError
from selfplay.runtime.learner import LearnerState, RoleWeights
from selfplay.runtime.types import MixtureVersion, Version

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


def _own(t: torch.Tensor) -> torch.Tensor:
    """A CPU, contiguous copy with its own storage (safetensors rejects shared or strided ones)."""
    return t.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def write_checkpoint(root: Path, step: int, meta: dict,
                     tensors: dict[str, dict[str, torch.Tensor]], keep: int = 2) -> Path:
    """Write checkpoint `step` atomically under `root`; keep the `keep` newest. Returns its path."""
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
            save_file({k: _own(v) for k, v in group.items()}, str(tmp / fname))
            files[fname] = _hash_and_sync(tmp / fname)
        # The manifest goes last: its presence means every other file is complete.
        _write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": files})
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    _promote(tmp, final)
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f"{_TMP}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


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
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_RE.match(p.name))]
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
        tensors = {fname[: -len(".safetensors")]: load_file(str(path / fname), device="cpu")
                   for fname in man["files"] if fname.endswith(".safetensors")}
    except (OSError, UnicodeDecodeError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint {path}: {_one_line(e)}") from None
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
    detail = "; ".join(reasons) if reasons else ("directory missing" if not root.is_dir()
                                                 else "no step-* directories")
    raise CheckpointError(f"no usable checkpoint in {root} ({detail})")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# ------------------------------------------------------------------ packing
_SCALARS = (bool, int, float, str, type(None))


def _pack_optim(prefix: str, optim: dict[int, dict[str, Any]],
                out: dict[str, torch.Tensor]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for i, st in optim.items():
        scalars = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"{prefix}/{int(i)}/{k}"] = v
            elif isinstance(v, _SCALARS):
                scalars[k] = v
            else:
                raise TypeError(f"optimizer state {i}.{k} has unsupported type {type(v).__name__}")
        meta[str(int(i))] = {"keys": list(st), "scalars": scalars}
    return meta


def _unpack_optim(prefix: str, meta: dict[str, Any],
                  tensors: dict[str, torch.Tensor]) -> dict[int, dict[str, Any]]:
    return {int(i): {k: e["scalars"][k] if k in e["scalars"] else _get(tensors, f"{prefix}/{i}/{k}")
                     for k in e["keys"]}
            for i, e in meta.items()}


def _get(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise CheckpointError(f"checkpoint lacks tensor {name!r}")
    return tensors[name]


def pack_learner_state(s: LearnerState) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON meta) of a rank-local LearnerState; roles are kept in order."""
    out: dict[str, torch.Tensor] = {f"params/{i}": p for i, p in enumerate(s.params)}
    roles = []
    for j, (name, r) in enumerate(s.roles.items()):
        out.update({f"roles/{j}/params/{i}": p for i, p in enumerate(r.params)})
        roles.append({"name": name, "params": len(r.params),
                      "optim": None if r.optim is None
                      else _pack_optim(f"roles/{j}/optim", r.optim, out)})
    meta = {"rank": s.rank, "world": s.world, "strategy": s.strategy, "params": len(s.params),
            "optim": _pack_optim("optim", s.optim, out), "roles": roles}
    return out, meta


def unpack_learner_state(tensors: dict[str, torch.Tensor], meta: dict) -> LearnerState:
    try:
        roles = {}
        for j, r in enumerate(meta["roles"]):
            roles[r["name"]] = RoleWeights(
                params=[_get(tensors, f"roles/{j}/params/{i}") for i in range(r["params"])],
                optim=None if r["optim"] is None
                else _unpack_optim(f"roles/{j}/optim", r["optim"], tensors))
        return LearnerState(
            rank=int(meta["rank"]), world=int(meta["world"]), strategy=str(meta["strategy"]),
            params=[_get(tensors, f"params/{i}") for i in range(meta["params"])],
            optim=_unpack_optim("optim", meta["optim"], tensors), roles=roles)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"learner state meta is malformed: {_one_line(e)}") from None


def version_to_json(v: Version | MixtureVersion) -> dict[str, Any]:
    if isinstance(v, Version):
        return {"step": v.step, "phase": v.phase}
    if isinstance(v, MixtureVersion):
        return {"a": version_to_json(v.a), "b": version_to_json(v.b), "lam": v.lam}
    raise TypeError(f"not a sampler version: {v!r}")


def version_from_json(d: dict[str, Any]) -> Version | MixtureVersion:
    try:
        if isinstance(d, dict) and d.keys() == {"step", "phase"}:
            return Version(int(d["step"]), d["phase"])
        if isinstance(d, dict) and d.keys() == {"a", "b", "lam"}:
            return MixtureVersion(version_from_json(d["a"]), version_from_json(d["b"]),
                                  float(d["lam"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bad version {d!r}: {_one_line(e)}") from None
    raise CheckpointError(f"bad version {d!r}: expected {{step, phase}} or {{a, b, lam}}")


def _to_json(v: Any) -> Any:
    """Tagged JSON of a field value: tuples, dicts and versions are tagged so the
    inverse is unambiguous; numpy scalars become Python scalars."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, _SCALARS):
        return v
    if isinstance(v, Version | MixtureVersion):
        return {"$version": version_to_json(v)}
    if isinstance(v, list):
        return [_to_json(x) for x in v]
    if isinstance(v, tuple):
        return {"$tuple": [_to_json(x) for x in v]}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"$dict": {k: _to_json(x) for k, x in v.items()}}
    raise TypeError(f"cannot store a {type(v).__name__} in checkpoint JSON")


def _from_json(v: Any) -> Any:
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    if isinstance(v, dict):
        ((tag, body),) = v.items()
        if tag == "$version":
            return version_from_json(body)
        if tag == "$tuple":
            return tuple(_from_json(x) for x in body)
        if tag == "$dict":
            return {k: _from_json(x) for k, x in body.items()}
        raise ValueError(f"unknown tag {tag!r}")
    return v


def pack_arrays(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON meta) of a dataclass of numpy arrays and JSON-able values.
    Arrays keep their dtype and bytes; tensor names are `prefix + field name`."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"pack_arrays needs a dataclass instance, got {type(obj).__name__}")
    out, arrays, fields = {}, {}, {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        if isinstance(v, np.ndarray):
            if v.dtype.hasobject or v.dtype.kind not in "biuf":
                raise TypeError(f"{type(obj).__name__}.{f.name}: dtype {v.dtype} cannot be stored")
            out[prefix + f.name] = torch.from_numpy(np.array(v, copy=True, order="C"))
            arrays[f.name] = prefix + f.name
        else:
            fields[f.name] = _to_json(v)
    return out, {"class": type(obj).__qualname__, "arrays": arrays, "fields": fields}


def unpack_arrays(cls: type, tensors: dict[str, torch.Tensor], meta: dict) -> Any:
    """Inverse of `pack_arrays`: arrays come back as numpy with identical dtype and bytes.
    Fields the checkpoint lacks keep their defaults (a field added since it was written)."""
    if meta.get("class") != cls.__qualname__:
        raise CheckpointError(f"checkpoint holds a {meta.get('class')!r}, not a {cls.__qualname__}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    extra = (set(meta["arrays"]) | set(meta["fields"])) - known
    if extra:
        raise CheckpointError(f"checkpoint {cls.__qualname__} has unknown fields {sorted(extra)}")
    kwargs: dict[str, Any] = {k: _get(tensors, name).numpy() for k, name in meta["arrays"].items()}
    try:
        kwargs.update({k: _from_json(v) for k, v in meta["fields"].items()})
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {cls.__qualname__}: {_one_line(e)}") from None


# ------------------------------------------------------------------ RNG
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states: Python `random`, numpy's legacy generator, torch CPU.
    CUDA generators are not included."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return {"rng/torch_cpu": torch.get_rng_state()}, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_get(tensors, "rng/torch_cpu"))
