"""The learner's log-probs (a mixin of `Learner`): sequence and token log-probs of the
tempered, restricted policy under the current weights or a stored role's.

    log π(y_t | ·) = z_t(y_t)/T − log Σ_{v ∈ allowed} exp(z_t(v)/T)

(`selfplay.algos.logprobs.token_logprobs`: chunked, no log-softmax copy of the logits).
Under FSDP2 every method is a collective (`_dummy_forward` joins one with no data).
"""

from __future__ import annotations

import numpy as np
import torch

from selfplay.algos.logprobs import token_logprobs
from selfplay.algos.losses import sequence_logprob
from selfplay.runtime.learner import sharding
from selfplay.runtime.learner.batch import Micro


class Scoring:
    """Needs `model`, `ctx`, `config` (temperature), `_allowed` and `_weights(role)`."""

    # ------------------------------------------------------------ log-probs
    def _forward_token_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """[n, L-1]: log π(input_ids[:, j+1] | input_ids[:, :j+1]) with π the sampled LM:
        softmax(logits / `temperature`), restricted to `allowed_token_ids` as the sampler
        restricts it (`selfplay.algos.logprobs.token_logprobs`, no log-softmax copy of
        the logits). A target outside the set (prompt, padding) then gets a finite
        non-log-prob, masked by callers."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits = out.logits[:, :-1]
        return token_logprobs(
            logits,
            input_ids[:, 1:],
            temperature=self.config.temperature,
            allowed=self._allowed,
        )

    def _seq_logprobs(self, mb: Micro, normalize: bool) -> torch.Tensor:
        tok = self._forward_token_logprobs(mb.input_ids, mb.attention_mask)
        return sequence_logprob(tok, mb.target_mask, normalize)

    def _role_logprobs(
        self, role: str | None, mbs: list[Micro], steps: int, normalize: bool
    ) -> list[torch.Tensor]:
        """Sequence log-probs [n] per micro-batch under `role`'s weights (None: current)."""
        out = []
        with self._weights(role), torch.no_grad():
            for i in range(steps):
                if i < len(mbs):
                    out.append(self._seq_logprobs(mbs[i], normalize).detach())
                else:
                    self._dummy_forward(grad=False)
            if self.ctx.sharded:
                sharding.reshard(self.model)
        return out

    def policy_logprobs(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        response_mask: np.ndarray,
        role: str | None = None,
    ) -> np.ndarray:
        """[N, L] float32 token log-probs under the current weights (or `role`'s),
        aligned with input_ids (entry j = log π(ids[j] | ids[:j]), π restricted to
        `allowed_token_ids` as in training), 0 off the response."""
        # torch.tensor copies: arrays from the Ray object store are read-only.
        ids = torch.tensor(input_ids, dtype=torch.int64, device=self.ctx.device)
        att = torch.tensor(attention_mask, dtype=torch.int64, device=self.ctx.device)
        mask = torch.tensor(response_mask, dtype=torch.float32, device=self.ctx.device)
        with self._weights(role), torch.no_grad():
            tok = self._forward_token_logprobs(ids, att)
            if self.ctx.sharded:
                sharding.reshard(self.model)
        out = torch.zeros_like(mask)
        out[:, 1:] = tok * mask[:, 1:]
        return out.cpu().numpy()

    def _dummy_forward(self, grad: bool) -> None:
        """Join FSDP2's collectives with no data: a 1-token forward whose loss is 0·logits."""
        if not self.ctx.sharded:
            return
        ids = torch.zeros((1, 1), dtype=torch.int64, device=self.ctx.device)
        logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        if grad:
            (logits.sum() * 0.0).backward()
