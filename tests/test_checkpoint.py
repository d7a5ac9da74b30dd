"""Checkpoint format: bitwise round trips, corruption fallback, crash safety, retention.

Oracles: the objects written (compared bit for bit after a trip through disk),
the files' own bytes (for corruption), and a real SIGKILL of a writing process.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bits_equal

import selfplay.runtime.checkpoint.codec as pk
import selfplay.runtime.checkpoint.format as ck
from selfplay.runtime.learner.batch import TrainBatch, build_train_batch, concat_batches
from selfplay.runtime.learner.state import LearnerState, RoleWeights
from selfplay.runtime.workers.actors import BatchInfo
from selfplay.types import MixtureVersion, Samples, Version

REPO = Path(__file__).resolve().parents[1]


def assert_optim_equal(a: dict | None, b: dict | None) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    assert list(a) == list(b)
    for i in a:
        assert list(a[i]) == list(b[i])
        for k, v in a[i].items():
            if torch.is_tensor(v):
                assert bits_equal(v, b[i][k]), (i, k)
            else:
                assert type(v) is type(b[i][k]) and v == b[i][k], (i, k)


def make_learner_state() -> LearnerState:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            model(torch.randn(5, 4)).square().mean().backward()
            opt.step()

    def snap(optim: bool) -> RoleWeights:
        st = {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(params)}
        return RoleWeights([p.detach().clone() for p in params], st if optim else None)

    steps(3)
    main = snap(True)
    steps(2)
    lead = snap(True)
    ref = snap(False)
    # Optimizer state may hold plain scalars and may cover only some parameters.
    odd = RoleWeights(
        [p.detach().clone() for p in params],
        {1: {"step": 7, "lr_scale": 0.1 + 0.2, "flag": True, "exp_avg": params[1].detach() * 3}},
    )
    empty = RoleWeights([p.detach().clone() for p in params], {})
    base = torch.randn(4, 10)
    live = [p.detach() for p in params]
    # A non-contiguous view and a view sharing its storage: the writer must copy both.
    live[0] = base[:, :8].t()  # [8, 4], strided
    live[1] = base.reshape(-1)[:8]
    return LearnerState(
        rank=1,
        world=2,
        strategy="fsdp2",
        params=live,
        optim={i: dict(opt.state[p]) for i, p in enumerate(params)},
        roles={"main": main, "lead": lead, "ref": ref, "magnet": odd, "prev": empty},
    )


def test_learner_state_round_trip_through_disk(tmp_path):
    s = make_learner_state()
    assert not s.params[0].is_contiguous()
    tensors, meta = pk.pack_learner_state(s)
    ck.write_checkpoint(tmp_path, 4, {"learner": meta}, {"learner-1": tensors})
    c = ck.load_latest(tmp_path)
    assert c.step == 4
    r = pk.unpack_learner_state(c.tensors["learner-1"], c.meta["learner"])
    assert (r.rank, r.world, r.strategy) == (1, 2, "fsdp2")
    assert len(r.params) == len(s.params)
    assert all(bits_equal(a, b) for a, b in zip(s.params, r.params, strict=True))
    assert_optim_equal(s.optim, r.optim)
    assert list(r.roles) == list(s.roles)
    for name, role in s.roles.items():
        assert all(bits_equal(a, b) for a, b in zip(role.params, r.roles[name].params, strict=True))
        assert_optim_equal(role.optim, r.roles[name].optim)
    assert r.roles["prev"].optim == {} and r.roles["ref"].optim is None
    assert torch.is_tensor(r.optim[0]["step"]) and float(r.optim[0]["step"]) == 5.0


def test_unpack_learner_state_reports_missing_tensor():
    tensors, meta = pk.pack_learner_state(make_learner_state())
    del tensors["roles/1/optim/0/exp_avg"]
    with pytest.raises(ck.CheckpointError, match="roles/1/optim/0/exp_avg"):
        pk.unpack_learner_state(tensors, meta)


def _batch() -> TrainBatch:
    rng = np.random.default_rng(0)

    def samples(version, k=2, p=2) -> Samples:
        n = k * p
        return Samples(
            prompt_ids=np.arange(p, dtype=np.int64) + 10,
            prompt_texts=["a"] * p,
            tokens=rng.integers(1, 50, (n, 5)),
            lengths=rng.integers(1, 6, n),
            logprobs=rng.standard_normal((n, 5)).astype(np.float32),
            texts=["x"] * n,
            version=version,
            k=k,
        )

    b1 = build_train_batch(samples(Version(2, "main")), [[1, 2], [3]], rng.standard_normal(4))
    mix = MixtureVersion(Version(2, "main"), Version(1, "ref"), 0.125)
    b2 = build_train_batch(samples(mix), [[4], [5, 6, 7]], rng.standard_normal(4))
    b = concat_batches([b1, b2])
    b.g[0] = np.nan  # bytes, not values, must survive
    return b


def test_train_batch_round_trip_through_disk(tmp_path):
    b = _batch()
    tensors, meta = pk.pack_arrays(b, prefix="batch0/")
    ck.write_checkpoint(tmp_path, 1, {"batch": meta}, {"batches": tensors})
    c = ck.load_checkpoint(tmp_path / "step-000001")
    r = pk.unpack_arrays(TrainBatch, c.tensors["batches"], c.meta["batch"])
    assert r.versions == b.versions and isinstance(r.versions, tuple)
    assert isinstance(r.versions[-1], MixtureVersion)
    for f in dataclasses.fields(TrainBatch):
        v = getattr(b, f.name)
        if isinstance(v, np.ndarray):
            got = getattr(r, f.name)
            assert got.dtype == v.dtype and got.shape == v.shape, f.name
            assert got.tobytes() == v.tobytes(), f.name
    assert r.g.dtype == np.float64 and r.response_mask.dtype == np.float32


def _value_for(annotation: str, rng: np.random.Generator):
    if annotation == "int":
        return int(rng.integers(0, 1000))
    if annotation == "float":
        return float(rng.standard_normal())
    if annotation == "np.ndarray":
        return rng.integers(0, 1 << 40, 7).astype(np.int64)
    if annotation == "bool":
        return bool(rng.integers(2))
    pytest.fail(f"BatchInfo field type {annotation} not covered by this test")


def test_batch_info_and_samples_round_trip():
    rng = np.random.default_rng(1)
    info = BatchInfo(
        **{f.name: _value_for(str(f.type), rng) for f in dataclasses.fields(BatchInfo)}
    )
    tensors, meta = pk.pack_arrays(info)
    meta = json.loads(json.dumps(meta))
    back = pk.unpack_arrays(BatchInfo, tensors, meta)
    for f in dataclasses.fields(BatchInfo):
        a, b = getattr(info, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
        else:
            assert type(a) is type(b) and a == b, f.name
    # Samples: a dict field, nested lists, a single version, bool arrays.
    s = Samples(
        prompt_ids=np.array([3], dtype=np.int64),
        prompt_texts=["p"],
        tokens=np.array([[1, 2]], dtype=np.int32),
        lengths=np.array([2], dtype=np.uint8),
        logprobs=np.array([[-0.5, np.inf]], dtype=np.float16),
        texts=["t"],
        version=MixtureVersion(Version(0, "main"), Version(3, "lead"), 0.3),
        k=1,
        meta={"gen_s": 1.5},
        prompt_tokens=[[7, 8, 9]],
    )
    t2, m2 = pk.pack_arrays(s)
    s2 = pk.unpack_arrays(Samples, t2, json.loads(json.dumps(m2)))
    assert s2.meta == s.meta and s2.prompt_tokens == s.prompt_tokens and s2.version == s.version
    assert s2.logprobs.dtype == np.float16 and s2.logprobs.tobytes() == s.logprobs.tobytes()
    assert s2.lengths.dtype == np.uint8 and s2.tokens.dtype == np.int32
    with pytest.raises(ck.CheckpointError, match="not a TrainBatch"):
        pk.unpack_arrays(TrainBatch, t2, m2)


def test_versions_json():
    for v in (
        Version(0, "main"),
        Version(9, "lead"),
        MixtureVersion(Version(3, "main"), Version(2, "prev"), 0.1 + 0.2),
    ):
        assert pk.version_from_json(json.loads(json.dumps(pk.version_to_json(v)))) == v
    with pytest.raises(ck.CheckpointError):
        pk.version_from_json({"step": 1})
    with pytest.raises(ck.CheckpointError):
        pk.version_from_json({"step": 1, "phase": "nope"})


def test_rng_state_round_trip(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached Gaussians in both
    tensors, meta = pk.rng_state()
    ck.write_checkpoint(tmp_path, 0, {"rng": meta}, {"rng": tensors})
    want = (
        random.random(),
        random.gauss(0, 1),
        np.random.standard_normal(3).tolist(),
        torch.rand(3).tolist(),
    )
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    c = ck.load_latest(tmp_path)
    pk.set_rng_state(c.tensors["rng"], c.meta["rng"])
    got = (
        random.random(),
        random.gauss(0, 1),
        np.random.standard_normal(3).tolist(),
        torch.rand(3).tolist(),
    )
    assert got == want


def _write_two(root: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    first = {"w": torch.randn(64, 64), "i": torch.arange(10)}
    ck.write_checkpoint(root, 1, {"n": 1}, {"learner-0": first})
    ck.write_checkpoint(root, 2, {"n": 2}, {"learner-0": {"w": torch.randn(64, 64)}})
    return first


def _truncate(p: Path) -> None:
    f = p / "learner-0.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


def _drop_manifest(p: Path) -> None:
    (p / "manifest.json").unlink()


def _flip_byte(p: Path) -> None:
    f = p / "learner-0.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "corrupt,reason",
    [
        (_truncate, "bytes, manifest says"),
        (_drop_manifest, "manifest.json missing"),
        (_flip_byte, "sha256"),
    ],
)
def test_corrupt_latest_falls_back(tmp_path, corrupt, reason):
    first = _write_two(tmp_path)
    newest = tmp_path / "step-000002"
    assert ck.verify(newest) is None
    corrupt(newest)
    why = ck.verify(newest)
    assert why is not None and reason in why and "\n" not in why
    warnings: list[str] = []
    c = ck.load_latest(tmp_path, warn=warnings.append)
    assert c.step == 1 and c.meta == {"n": 1}
    assert all(bits_equal(first[k], c.tensors["learner-0"][k]) for k in first)
    assert len(warnings) == 1 and str(newest) in warnings[0] and reason in warnings[0]
    with pytest.raises(ck.CheckpointError, match=reason):
        ck.load_checkpoint(newest)


def test_no_usable_checkpoint(tmp_path):
    with pytest.raises(ck.CheckpointError, match="no usable checkpoint.*directory missing"):
        ck.load_latest(tmp_path / "nothing")
    ck.write_checkpoint(tmp_path, 3, {}, {"a": {"x": torch.ones(3)}})
    _drop_manifest(tmp_path / "step-000003")
    with pytest.raises(ck.CheckpointError, match="step-000003: manifest.json missing"):
        ck.load_latest(tmp_path)


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_never_runs(tmp_path):
    root, marker = tmp_path / "ck", tmp_path / "pwned"
    _write_two(root)
    newest = root / "step-000002"
    bad = newest / "learner-0.safetensors"
    bad.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    assert "learner-0.safetensors" in ck.verify(newest)
    assert ck.load_latest(root, warn=lambda _: None).step == 1
    # Even with a manifest that matches the payload, loading parses it as safetensors only.
    man = json.loads((newest / "manifest.json").read_text())
    import hashlib

    man["files"]["learner-0.safetensors"] = {
        "bytes": bad.stat().st_size,
        "sha256": hashlib.sha256(bad.read_bytes()).hexdigest(),
    }
    (newest / "manifest.json").write_text(json.dumps(man))
    assert ck.verify(newest) is None
    with pytest.raises(ck.CheckpointError, match="step-000002"):
        ck.load_checkpoint(newest)
    assert ck.load_latest(root, warn=lambda _: None).step == 1
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is live: this does create it
    assert marker.exists()


@pytest.mark.parametrize("mod", [ck, pk], ids=["checkpoint", "packing"])
def test_module_uses_no_code_executing_loader(mod):
    src = Path(mod.__file__).read_text()
    for needle in ("pickle", "allow_pickle", "marshal"):
        assert needle not in src, needle
    banned = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
    for node in ast.walk(ast.parse(src)):
        # torch.load / np.load / numpy.load (safetensors.torch.load_file is fine)
        if isinstance(node, ast.Attribute) and node.attr == "load":
            assert not (
                isinstance(node.value, ast.Name) and node.value.id in {"torch", "np", "numpy"}
            )
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & banned
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in banned
