"""vLLM generation backend (GPU): one running `vllm.LLM`, weights swapped in place.

Versions are cached as `FlatWeights` in host memory; the engine holds one at a
time. Generating from another version pushes its tensors into the running
engine with the model's own `load_weights` (HF names in, vLLM's fused layout
out) through `LLM.collective_rpc` (vLLM ≥ 0.8, V1 engine), falling back to the
V0 path `llm_engine.model_executor.driver_worker.model_runner.model`; the
prefix cache is then reset so no KV block of the old weights is reused. The
update is in place: the same engine (no restart), tensors sent from host memory
to the workers (no disk round trip).

Versions: each push stamps the version it loaded on every vLLM worker
(`selfplay_version`) and returns it; the backend records the engine's version only
when every worker reports the version it asked for and, where the model's
`load_weights` returns the names it loaded (vLLM's own loader check), every
parameter of the model was among them, so a partial push never passes as a
version. Before a push the recorded version is cleared: a push that fails
halfway leaves the engine "holding no version" and the next generate re-pushes.
`engine_versions()` asks the workers what they hold.

Generation settings map one to one onto `vllm.SamplingParams` (a thin mapping:
this backend cannot run without a GPU, so the hf backend is the one tested on
CPU): temperature, top_p, top_k (0 here is vLLM's −1, off), max_tokens, stop
(`include_stop_str_in_output=False`), allowed_token_ids, and stop_token_ids = the
eos ids of `selfplay.rollout.base.eos_ids` (tokenizer + generation config).
Log-probs: the engine runs with `logprobs_mode="processed_logprobs"`, i.e. the
log-probs of the distribution actually sampled from (vLLM V1 takes them after
the allowed-token mask, temperature, top-k and top-p, the order of the hf
backend; vLLM ≥ 0.10.1, the `vllm` extra's floor). Token ids are vLLM's (up to and including the token that completed a
stop string, or the eos); the text is decoded from them and cut before the first
stop string, as in the hf backend. truncated = `finish_reason == "length"`.

LoRA (`model.lora`, an `Adapted` spec): the engine loads the base once with
`enable_lora=True` and `max_lora_rank` = r; a version is the adapter alone, written
once to a temporary directory as peft writes one (adapter_config.json +
adapter_model.safetensors) and sampled through vLLM's `LoRARequest`, with no weight
push. NOT RUN: no GPU was lent where this was written; the hf backend's LoRA path is
the tested one.

Not supported here: mixture sampling (Nash-MD needs two models' logits per
token; use the hf backend). Prompt i is seeded with `seed + i` so prompts do
not share a random stream.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence

from selfplay.errors import InputError
from selfplay.models.load import load_policy
from selfplay.models.lora import Adapted
from selfplay.models.tiny import ModelSpec
from selfplay.models.weights import FlatWeights
from selfplay.rollout.base import (
    VersionNotLoaded,
    can_end,
    check_generate_args,
    cut_at_stop,
    eos_ids,
    pack_samples,
    prompt_token_ids,
)
from selfplay.types import MixtureVersion, Prompts, SamplerVersion, Samples, Version


def _load_into_worker(worker, flat: FlatWeights, version: Version) -> Version | str:
    """Runs inside each vLLM worker (sent by collective_rpc): load `flat` into the
    running model in place, check it covered every parameter, stamp `version`.
    Returns the version, or a one-line reason (not raised inside the engine)."""
    worker.selfplay_version = None
    model = worker.model_runner.model
    device = next(model.parameters()).device
    loaded = model.load_weights(weights=((n, t.to(device)) for n, t in flat.named_tensors()))
    if isinstance(loaded, set):
        missing = {n for n, _ in model.named_parameters()} - loaded
        if missing:
            return f"{len(missing)} parameters not in the pushed weights, e.g. {min(missing)}"
    worker.selfplay_version = version
    return version


def _held_version(worker) -> Version | None:
    return getattr(worker, "selfplay_version", None)


class VLLMBackend:
    def __init__(self, model: str | ModelSpec, *, dtype: str = "float32", **engine_kwargs) -> None:
        try:
            import torch
            import vllm
        except ImportError:
            raise InputError("vllm backend needs `pip install selfplay[vllm]` and a GPU") from None
        if not torch.cuda.is_available():
            raise InputError("vllm backend needs `pip install selfplay[vllm]` and a GPU")
        self._adapter: Adapted | None = model if isinstance(model, Adapted) else None
        self._lora_dirs: dict[Version, tuple[object, int]] = {}  # (temp dir, vLLM's lora id)
        if self._adapter is not None:
            model = self._adapter.base
            engine_kwargs["enable_lora"] = True
            engine_kwargs.setdefault("max_lora_rank", self._adapter.lora.r)
        if isinstance(model, ModelSpec) or model.startswith(ModelSpec.PREFIX):
            model = self._save_tiny(model)
        # collective_rpc ships a function to the workers, which V1 pickles.
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self._vllm = vllm
        self.llm = vllm.LLM(model=model, dtype=dtype, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.vocab_size = self.llm.llm_engine.model_config.get_vocab_size()
        self.eos_ids = eos_ids(self.tokenizer, _generation_config(model))
        self._weights: dict[Version, FlatWeights] = {}
        self._active: Version | None = None

    def _save_tiny(self, spec: str | ModelSpec) -> str:
        model, tok = load_policy(spec)
        self._tmp = tempfile.TemporaryDirectory(prefix="selfplay-tiny-")
        model.save_pretrained(self._tmp.name)
        tok.save_pretrained(self._tmp.name)
        return self._tmp.name

    def load_weights(self, version: Version, flat: FlatWeights) -> None:
        self._weights[version] = flat
        if self._active == version:
            self._active = None  # re-pushed on next use

    def has(self, version: Version) -> bool:
        return version in self._weights

    def versions(self) -> list[Version]:
        return sorted(self._weights)

    def drop(self, version: Version) -> None:
        self._weights.pop(version, None)
        held = self._lora_dirs.pop(version, None)
        if held is not None:
            held[0].cleanup()

    def _lora_request(self, version: Version):
        """The version's adapter as a vLLM `LoRARequest` (written to disk once)."""
        import json

        from safetensors.torch import save_file

        if version not in self._lora_dirs:
            d = tempfile.TemporaryDirectory(prefix="selfplay-lora-")
            tensors = {
                n.replace(".default.", "."): t.contiguous()
                for n, t in self._weights[version].named_tensors()
            }
            save_file(tensors, os.path.join(d.name, "adapter_model.safetensors"))
            cfg = self._adapter.lora.peft_config().to_dict()
            cfg["base_model_name_or_path"] = self._adapter.base_name()
            cfg = {k: sorted(v) if isinstance(v, set) else v for k, v in cfg.items()}
            with open(os.path.join(d.name, "adapter_config.json"), "w") as f:
                json.dump(cfg, f, default=str)
            # vLLM caches adapters by id: never reuse one for another version
            self._lora_next = getattr(self, "_lora_next", 0) + 1
            self._lora_dirs[version] = (d, self._lora_next)
        from vllm.lora.request import LoRARequest

        d, index = self._lora_dirs[version]
        return LoRARequest(str(version), index, d.name)

    def _rpc(self, fn, *args) -> list:
        if hasattr(self.llm, "collective_rpc"):
            return list(self.llm.collective_rpc(fn, args=args))
        # vLLM V0: one in-process driver worker
        if not hasattr(self, "_v0_worker"):
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            self._v0_worker = type("W", (), {"model_runner": runner})()
        return [fn(self._v0_worker, *args)]

    def engine_versions(self) -> list[Version | None]:
        """The version each vLLM worker holds (None: none, or a push that failed)."""
        return self._rpc(_held_version)

    def _activate(self, version: Version) -> None:
        if self._active == version:
            return
        self._active = None  # until every worker confirms the new version
        held = self._rpc(_load_into_worker, self._weights[version], version)
        if not held or any(v != version for v in held):
            raise RuntimeError(f"pushing {version} into vLLM: the workers answered {held}")
        self.llm.reset_prefix_cache()
        self._active = version

    def generate(
        self,
        prompts: Prompts,
        *,
        version: SamplerVersion,
        k: int,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        allowed_token_ids: list[int] | None = None,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Sequence[str] = (),
        decode: bool = True,
    ) -> Samples:
        if isinstance(version, MixtureVersion):
            raise InputError("mixture sampling (Nash-MD) needs the hf rollout backend")
        check_generate_args(
            prompts,
            k=k,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            allowed_token_ids=allowed_token_ids,
            vocab_size=self.vocab_size,
            top_p=top_p,
            top_k=top_k,
            stop=stop,
        )
        if version not in self._weights:
            raise VersionNotLoaded(f"version {version} is not loaded on this worker")
        t0 = time.perf_counter()
        lora = None
        if self._adapter is not None:
            lora = self._lora_request(version)  # the base stays; the adapter is per request
        else:
            self._activate(version)
        ids = prompt_token_ids(self.tokenizer, prompts)
        params = [
            self._vllm.SamplingParams(
                n=k,
                temperature=temperature,
                max_tokens=max_new_tokens,
                seed=seed + i,
                logprobs=0,
                allowed_token_ids=allowed_token_ids,
                top_p=top_p,
                top_k=top_k if top_k > 0 else -1,
                stop=list(stop) or None,
                include_stop_str_in_output=False,
                stop_token_ids=sorted(self.eos_ids),
            )
            for i in range(len(ids))
        ]
        outs = self.llm.generate(
            [{"prompt_token_ids": p} for p in ids], params, use_tqdm=False, lora_request=lora
        )
        tok_rows, lp_rows, truncated = [], [], []
        for out in outs:
            for comp in out.outputs:
                toks = list(comp.token_ids)
                tok_rows.append(toks)
                truncated.append(comp.finish_reason == "length")
                lp_rows.append(
                    [step[t].logprob for t, step in zip(toks, comp.logprobs, strict=True)]
                )
        texts = None  # token ids only (`decode` off: the judge reads the ids)
        if decode:
            texts = self.tokenizer.batch_decode(tok_rows, skip_special_tokens=True)
            texts = [cut_at_stop(t, stop) for t in texts]
        if not can_end(self.eos_ids, allowed_token_ids, stop):
            truncated = [False] * len(tok_rows)  # fixed-length responses (the token game)
        meta = {
            "gen_s": time.perf_counter() - t0,
            "new_tokens": float(sum(len(t) for t in tok_rows)),
        }
        return pack_samples(
            prompts,
            tok_rows,
            lp_rows,
            texts,
            version=version,
            k=k,
            width=max_new_tokens,
            pad_id=self.tokenizer.pad_token_id or 0,
            meta=meta,
            prompt_tokens=ids,
            truncated=truncated,
        )


def _generation_config(model: str):
    """The model directory's generation config (its eos ids), or None."""
    from selfplay.models.load import load_generation_config

    return load_generation_config(model)
