"""HF transformers generation backend (CPU or GPU) with exact sampler log-probs.

One model skeleton holds the architecture; each cached version is a dict of
tensors run through it with `torch.func.functional_call`, so switching
versions (or running two for a mixture) copies no weights. Under LoRA the skeleton is
the base wrapped by peft, and a version is its adapter's tensors only: the base weights
are held once, by the skeleton.

Sampling is our own KV-cached loop rather than `model.generate`, because
Nash-MD needs two models' logits per token. At each step, for rows still running:

    s(y)   = log_softmax(logits_v)(y)                                 one version v
    s(y)   = (1−λ)·log_softmax(logits_a)(y) + λ·log_softmax(logits_b)(y)   mixture
    z      = s / T, then the allowed-token mask, top-k, top-p (`sampling_cuts`)
    log π_s(y) = log_softmax(z)(y);   y ~ π_s  (torch.multinomial, seeded Generator)

and log π_s of the drawn token is returned (the cuts and their order are in
`selfplay.rollout.base`). A row stops after it samples an eos id or once its
decoded text holds a stop string (checked by decoding the row after every token,
so a stop string spanning several tokens is found); later positions are padding
(log-prob 0).

Deviation (Nash-MD, Munos et al. 2023): the paper's π^μ ∝ π^{1−λ}·μ^{λ}
is the geometric mixture of *sequence* distributions. We mix per token, which
gives the product over t of normalised per-token mixtures; that equals the
sequence-level mixture only up to normalisation (exactly for one-token
responses, as in the token game). This is the usual practical choice.

Determinism: same weights, prompts, k and seed give bitwise the same Samples
(one Generator, seeded per call). The draw depends on the batch layout, so the
same prompt in a different batch can sample differently.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

import torch
from torch.func import functional_call
from transformers import DynamicCache

from selfplay.models.load import load_policy
from selfplay.models.lora import version_tensors
from selfplay.models.weights import FlatWeights
from selfplay.rollout.base import (
    VersionNotLoaded,
    can_end,
    check_generate_args,
    check_mixture,
    cut_at_stop,
    eos_ids,
    first_stop,
    needed_versions,
    pack_samples,
    prompt_token_ids,
)
from selfplay.types import MixtureVersion, Prompts, SamplerVersion, Samples, Version


class HFBackend:
    """Versions cached as tensors on `device`; generation under `torch.inference_mode`."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        own = version_tensors(self.model)  # the state dict, or the adapter under LoRA
        self._own = {n: (t.dtype, tuple(t.shape)) for n, t in own.items()}
        self._tied = _tied_duplicates(own)
        self._weights: dict[Version, dict[str, torch.Tensor]] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = eos_ids(tokenizer, getattr(model, "generation_config", None))
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        params = inspect.signature(inner.forward).parameters
        self._keep_last = "logits_to_keep" in params
        # transformers >= 5.x renamed `past_key_values` to `cache` (the old name warns).
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_name(cls, name_or_path, *, device: str = "cpu", dtype: str = "float32") -> HFBackend:
        model, tok = load_policy(name_or_path, dtype=dtype, device=device)
        return cls(model, tok, device=device)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # ---- version cache -------------------------------------------------------------
    def load_weights(self, version: Version, flat: FlatWeights) -> None:
        """Cache `flat` as `version`. On CPU with matching dtypes the tensors are views (no copy)."""
        names = {e.name: (e.dtype, e.shape) for e in flat.entries}
        if set(names) != set(self._own):
            raise ValueError(f"weights for {version} do not match the model's parameter names")
        tensors = {}
        for name, t in flat.named_tensors():
            if name in self._tied:  # functional_call re-ties it to its first name
                continue
            dtype, shape = self._own[name]
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"weights for {version}: {name} has shape {tuple(t.shape)}, model has {shape}"
                )
            tensors[name] = t.to(device=self.device, dtype=dtype)
        self._weights[version] = tensors

    def has(self, version: Version) -> bool:
        return version in self._weights

    def versions(self) -> list[Version]:
        return sorted(self._weights)

    def drop(self, version: Version) -> None:
        self._weights.pop(version, None)

    # ---- sampling ------------------------------------------------------------------
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
        check_mixture(version)
        for v in needed_versions(version):
            if v not in self._weights:
                raise VersionNotLoaded(f"version {v} is not loaded on this worker")
        t0 = time.perf_counter()
        prompt_tokens = prompt_token_ids(self.tokenizer, prompts)
        ids, attn = self._left_pad(prompt_tokens)
        with torch.inference_mode():
            tokens, logprobs, lengths, finished = self._sample_loop(
                version,
                ids,
                attn,
                k=k,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                allowed=allowed_token_ids,
                seed=seed,
                top_p=top_p,
                top_k=top_k,
                stop=tuple(stop),
            )
        tok_rows = [tokens[i, :n].tolist() for i, n in enumerate(lengths.tolist())]
        lp_rows = [logprobs[i, :n].tolist() for i, n in enumerate(lengths.tolist())]
        texts = None  # token ids only (`decode` off: the judge reads the ids)
        if decode:
            texts = self.tokenizer.batch_decode(tok_rows, skip_special_tokens=True)
            texts = [cut_at_stop(t, stop) for t in texts]
        truncated = ~finished if can_end(self.eos_ids, allowed_token_ids, stop) else None
        meta = {"gen_s": time.perf_counter() - t0, "new_tokens": float(lengths.sum())}
        return pack_samples(
            prompts,
            tok_rows,
            lp_rows,
            texts,
            version=version,
            k=k,
            width=max_new_tokens,
            pad_id=self.pad_id,
            meta=meta,
            prompt_tokens=prompt_tokens,
            truncated=[False] * len(tok_rows) if truncated is None else truncated.tolist(),
        )

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            attn[i, width - len(r) :] = 1
        return ids.to(self.device), attn.to(self.device)

    def _forward(self, version: Version, ids, attn, pos, cache) -> torch.Tensor:
        """Log-softmax of the last position's logits, [N, V] float32."""
        kwargs = {
            "input_ids": ids,
            "attention_mask": attn,
            "position_ids": pos,
            self._cache_kw: cache,
            "use_cache": True,
        }
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        out = functional_call(
            self.model, self._weights[version], args=(), kwargs=kwargs, strict=False
        )
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def _scores(self, version: SamplerVersion, ids, attn, pos, caches) -> torch.Tensor:
        if isinstance(version, MixtureVersion):
            sa = self._forward(version.a, ids, attn, pos, caches[0])
            sb = self._forward(version.b, ids, attn, pos, caches[1])
            return (1.0 - version.lam) * sa + version.lam * sb
        return self._forward(version, ids, attn, pos, caches[0])

    def _sample_loop(
        self,
        version: SamplerVersion,
        ids,
        attn,
        *,
        k: int,
        max_new_tokens: int,
        temperature: float,
        allowed: list[int] | None,
        seed: int,
        top_p: float,
        top_k: int,
        stop: tuple[str, ...],
    ):
        """K samples for each of the prompt rows `ids`; rows out are prompt-major.

        Returns (tokens, logprobs, lengths, finished): finished[i] is True when row i
        ended with an eos id or a stop string."""
        n = ids.shape[0] * k
        gen = torch.Generator(device=self.device).manual_seed(seed)
        caches = [DynamicCache() for _ in needed_versions(version)]
        mask = None
        if allowed is not None:
            mask = torch.full((self.vocab_size,), float("-inf"), device=self.device)
            mask[torch.tensor(allowed, device=self.device)] = 0.0
        eos = torch.tensor(sorted(self.eos_ids), device=self.device, dtype=torch.long)
        tokens = torch.full((n, max_new_tokens), self.pad_id, dtype=torch.long, device=self.device)
        logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=self.device)
        lengths = torch.zeros(n, dtype=torch.long, device=self.device)
        done = torch.zeros(n, dtype=torch.bool, device=self.device)
        # Positions count real tokens only, so left padding does not shift them.
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        # The prompt pass runs once per prompt; its scores and KV caches are then
        # repeated for the prompt's K samples (identical rows, so identical values).
        scores = self._scores(version, ids, attn, pos, caches).repeat_interleave(k, dim=0)
        for c in caches:
            c.batch_repeat_interleave(k)
        attn, pos = attn.repeat_interleave(k, dim=0), pos.repeat_interleave(k, dim=0)
        for t in range(max_new_tokens):
            z = scores / temperature
            if mask is not None:
                z = z + mask
            logp = torch.log_softmax(sampling_cuts(z, top_k=top_k, top_p=top_p), dim=-1)
            nxt = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
            live = ~done
            tokens[live, t] = nxt[live]
            logprobs[live, t] = logp.gather(-1, nxt[:, None]).squeeze(-1)[live]
            lengths += live.long()
            done |= torch.isin(nxt, eos) & live
            if stop:
                done |= self._stopped(tokens[:, : t + 1], ~done, stop)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=self.device)], 1)
            pos = pos[:, -1:] + 1
            scores = self._scores(version, tokens[:, t : t + 1], attn, pos, caches)
        return tokens.cpu(), logprobs.cpu(), lengths.cpu(), done.cpu()

    def _stopped(self, tokens, rows, stop: tuple[str, ...]) -> torch.Tensor:
        """[N] bool: the rows `rows` whose decoded text so far holds a stop string."""
        out = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        for i in torch.nonzero(rows).flatten().tolist():
            text = self.tokenizer.decode(tokens[i].tolist(), skip_special_tokens=True)
            out[i] = first_stop(text, stop) >= 0
        return out


def sampling_cuts(z: torch.Tensor, *, top_k: int, top_p: float) -> torch.Tensor:
    """z [N, V] (temperature-scaled, masked scores) with top-k, then top-p, set to −∞.

    top-k keeps the scores >= the k-th largest (ties kept); top-p keeps the most
    probable tokens of softmax(z), in order, while the mass before them is < top_p.
    """
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        probs, order = torch.sort(torch.softmax(z, dim=-1), dim=-1, descending=True)
        before = probs.cumsum(-1) - probs
        drop = torch.zeros_like(z, dtype=torch.bool).scatter(-1, order, before >= top_p)
        z = z.masked_fill(drop, float("-inf"))
    return z


def _tied_duplicates(state_dict: dict[str, torch.Tensor]) -> set[str]:
    """Names that alias an earlier entry (tied embeddings): functional_call takes one per group."""
    seen: set[tuple] = set()
    dup: set[str] = set()
    for name, t in state_dict.items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.numel() and key in seen:
            dup.add(name)
        seen.add(key)
    return dup
