"""vLLM's in-place, versioned weight update.

On CPU: the version bookkeeping of `VLLMBackend._activate` against a stand-in engine
whose `collective_rpc` calls the shipped function on two in-process workers holding a
real torch model (vLLM's `load_weights` contract: (name, tensor) pairs in, the set of
loaded names out). On a GPU with vllm (marked `gpu`, skipped here): the real engine.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from selfplay.models.weights import flatten_state_dict
from selfplay.rollout.vllm import VLLMBackend
from selfplay.types import Version

V0, V1, V2 = Version(0, "main"), Version(1, "main"), Version(2, "main")


class _Model(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

    def load_weights(self, weights):
        params, loaded = dict(self.named_parameters()), set()
        for name, t in weights:
            params[name].data.copy_(t)
            loaded.add(name)
        return loaded


class _Worker:
    def __init__(self):
        self.model_runner = type("R", (), {"model": _Model(0)})()


class _FakeLLM:
    """collective_rpc(fn, args) → [fn(worker, *args) for each worker], as vLLM V1."""

    def __init__(self, workers: int = 2):
        self.workers = [_Worker() for _ in range(workers)]
        self.resets = 0

    def collective_rpc(self, fn, args=()):
        return [fn(w, *args) for w in self.workers]

    def reset_prefix_cache(self):
        self.resets += 1


def _backend(llm) -> VLLMBackend:
    be = object.__new__(VLLMBackend)  # no engine start: the stand-in is the engine
    be.llm, be._weights, be._active = llm, {}, None
    return be


def test_push_is_in_place_and_versioned():
    llm = _FakeLLM()
    be = _backend(llm)
    models = {v: _Model(s) for v, s in ((V0, 1), (V1, 2))}
    params = [w.model_runner.model.a.weight for w in llm.workers]  # the engine's tensors
    for v, m in models.items():
        be.load_weights(v, flatten_state_dict(m))
    assert be.engine_versions() == [None, None]
    for v in (V0, V1, V1, V0):
        be._activate(v)
        assert be.engine_versions() == [v, v] and be._active == v
        for w, p in zip(llm.workers, params, strict=True):
            assert w.model_runner.model.a.weight is p  # same tensor, new values: in place
            assert torch.equal(p, models[v].a.weight)
    assert llm.resets == 3  # the repeated V1 was not pushed again


def test_partial_push_is_refused_and_leaves_no_version():
    llm = _FakeLLM()
    be = _backend(llm)
    be.load_weights(V0, flatten_state_dict(_Model(1)))
    be._activate(V0)
    part = {k: t for k, t in _Model(2).state_dict().items() if k != "b.bias"}
    be.load_weights(V2, flatten_state_dict(part))
    with pytest.raises(RuntimeError, match="1 parameters not in the pushed weights, e.g. b.bias"):
        be._activate(V2)
    assert be._active is None and be.engine_versions() == [None, None]
    be._activate(V0)  # V0 is pushed again: the engine holds a mix until it is
    assert be.engine_versions() == [V0, V0]
    assert torch.equal(llm.workers[0].model_runner.model.a.weight, _Model(1).a.weight)


def test_a_worker_reporting_another_version_is_an_error():
    llm = _FakeLLM()
    be = _backend(llm)
    be.load_weights(V1, flatten_state_dict(_Model(1)))
    real = llm.collective_rpc
    llm.collective_rpc = lambda fn, args=(): real(fn, args)[:1] + [V0]
    with pytest.raises(RuntimeError, match="workers answered"):
        be._activate(V1)
    assert be._active is None


def _gpu_vllm() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_vllm(), reason="needs a CUDA GPU and vllm")
def test_vllm_engine_updates_in_place_by_version():
    """Not run here (no GPU): same engine object across pushes, the workers report the
    version generated from, a partial push is refused and the next push recovers."""
    from test_rollout import MOVE_IDS, PROMPTS, SPECS, check_against_oracle

    from selfplay.rollout import make_backend

    models = {v: SPECS[v].causal_lm() for v in (Version(0, "main"), Version(1, "main"))}
    be = make_backend("vllm", SPECS[V0], gpu_memory_utilization=0.2, enforce_eager=True)
    llm = be.llm
    for v, m in models.items():
        be.load_weights(v, flatten_state_dict(m))

    def gen(v):
        return be.generate(
            PROMPTS, version=v, k=2, max_new_tokens=4, temperature=0.9, seed=0,
            allowed_token_ids=MOVE_IDS,
        )  # fmt: skip

    for v in (V1, V0):
        s = gen(v)
        assert be.llm is llm and set(be.engine_versions()) == {v}
        check_against_oracle(be, models, s, v, 0.9, MOVE_IDS)
    sd = models[V1].state_dict()
    be.load_weights(V2, flatten_state_dict({k: t for k, t in sd.items() if "embed" not in k}))
    with pytest.raises(RuntimeError, match="not in the pushed weights"):
        gen(V2)
    assert set(be.engine_versions()) == {None}
    check_against_oracle(be, models, gen(V1), V1, 0.9, MOVE_IDS)
