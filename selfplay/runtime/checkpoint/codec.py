"""Packing the runtime's state into (tensors, JSON meta) pairs and back, bitwise.

For `selfplay.runtime.checkpoint.format`: `LearnerState` (rank-local weights, AdamW
state, roles), dataclasses of numpy arrays (`TrainBatch`, `BatchInfo`),
sampler versions, and the global RNG states of `random`, numpy's legacy
generator and torch (CPU). Tensors go to safetensors; everything else is
plain JSON (tagged where a type must come back exactly); no Python object
is ever deserialised.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import torch

from selfplay.runtime.checkpoint.format import CheckpointError, one_line
from selfplay.runtime.learner.state import LearnerState, RoleWeights
from selfplay.types import MixtureVersion, Version

# ------------------------------------------------------------------ packing
_SCALARS = (bool, int, float, str, type(None))


def _pack_optim(
    prefix: str, optim: dict[int, dict[str, Any]], out: dict[str, torch.Tensor]
) -> dict[str, Any]:
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


def _unpack_optim(
    prefix: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[int, dict[str, Any]]:
    return {
        int(i): {
            k: e["scalars"][k] if k in e["scalars"] else _get(tensors, f"{prefix}/{i}/{k}")
            for k in e["keys"]
        }
        for i, e in meta.items()
    }


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
        roles.append(
            {
                "name": name,
                "params": len(r.params),
                "optim": None if r.optim is None else _pack_optim(f"roles/{j}/optim", r.optim, out),
            }
        )
    meta = {
        "rank": s.rank,
        "world": s.world,
        "strategy": s.strategy,
        "params": len(s.params),
        "optim": _pack_optim("optim", s.optim, out),
        "roles": roles,
        "live": s.live,
    }
    return out, meta


def learner_parts(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """`pack_learner_state`'s tensors split into the groups a checkpoint streams one file
    at a time: "params", "optim-<key>" (one per AdamW state key), "role<j>",
    "role<j>-optim-<key>". Each holds one copy of the weights at most."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        f = name.split("/")
        if f[0] == "params":
            key = "params"
        elif f[0] == "optim":
            key = f"optim-{f[2]}"
        elif f[2] == "params":
            key = f"role{f[1]}"
        else:
            key = f"role{f[1]}-optim-{f[4]}"
        parts.setdefault(key, {})[name] = t
    return parts


def unpack_learner_state(tensors: dict[str, torch.Tensor], meta: dict) -> LearnerState:
    try:
        roles = {}
        for j, r in enumerate(meta["roles"]):
            roles[r["name"]] = RoleWeights(
                params=[_get(tensors, f"roles/{j}/params/{i}") for i in range(r["params"])],
                optim=None
                if r["optim"] is None
                else _unpack_optim(f"roles/{j}/optim", r["optim"], tensors),
            )
        return LearnerState(
            rank=int(meta["rank"]),
            world=int(meta["world"]),
            strategy=str(meta["strategy"]),
            params=[_get(tensors, f"params/{i}") for i in range(meta["params"])],
            optim=_unpack_optim("optim", meta["optim"], tensors),
            roles=roles,
            live=meta.get("live"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"learner state meta is malformed: {one_line(e)}") from None


def version_to_json(v: Version | MixtureVersion) -> dict[str, Any]:
    if isinstance(v, Version):
        return {"step": v.step, "role": v.role}
    if isinstance(v, MixtureVersion):
        return {"a": version_to_json(v.a), "b": version_to_json(v.b), "lam": v.lam}
    raise TypeError(f"not a sampler version: {v!r}")


def version_from_json(d: dict[str, Any]) -> Version | MixtureVersion:
    try:
        if isinstance(d, dict) and d.keys() == {"step", "role"}:
            return Version(int(d["step"]), d["role"])
        if isinstance(d, dict) and d.keys() == {"a", "b", "lam"}:
            return MixtureVersion(
                version_from_json(d["a"]), version_from_json(d["b"]), float(d["lam"])
            )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bad version {d!r}: {one_line(e)}") from None
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
        raise CheckpointError(f"checkpoint {cls.__qualname__}: {one_line(e)}") from None


# ------------------------------------------------------------------ RNG
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Global RNG states: Python `random`, numpy's legacy generator, torch CPU.
    CUDA generators are not included."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return {"rng/torch_cpu": torch.get_rng_state()}, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_get(tensors, "rng/torch_cpu"))
