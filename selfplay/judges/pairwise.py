"""Pairwise preference classifier, PairRM-style: both responses in one input.

p(a, b) = σ(f(template(x, a, b))) with f the single logit of a sequence
classifier reading "prompt [SEP] A: a [SEP] B: b" (Jiang et al. 2023, PairRM,
which also scores both orders). Unlike a reward model, f can express
intransitive preferences. The raw p is position-biased, so the judge returns
the symmetrised P = ½ + ½·(p(a, b) − p(b, a)) (see `selfplay.judges.base`).
A message-list prompt fills {prompt} as its plain text (`prompt_text`).

Deviation from PairRM: PairRM is a DeBERTa cross-encoder with its own input
format and a multi-logit head; we accept any one-logit HF classifier and a
plain-text template.
"""

from __future__ import annotations

import numpy as np
import torch

from selfplay.judges.base import (
    batched,
    check_template,
    encode_right_padded,
    prompt_text,
    symmetrized,
)
from selfplay.types import RawPrompt

DEFAULT_TEMPLATE = "{prompt} [SEP] A: {a} [SEP] B: {b}"


class PairwiseJudge:
    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int,
        device: str = "cpu",
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        check_template(template)
        self.template = template
        self.prob = symmetrized(self.raw)

    def judge_texts(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> list[str]:
        return [
            self.template.format(prompt=prompt_text(p), a=x, b=y)
            for p, x, y in zip(prompts, a, b, strict=True)
        ]

    def raw(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> np.ndarray:
        """[N] σ(logit) for the order given (not symmetrised)."""
        texts = self.judge_texts(prompts, a, b)

        def run(s: slice) -> np.ndarray:
            ids, attn, _ = encode_right_padded(
                self.tokenizer, texts[s], add_special_tokens=True, device=self.device
            )
            with torch.inference_mode():
                logit = self.model(input_ids=ids, attention_mask=attn).logits[:, 0]
            return torch.sigmoid(logit.double()).cpu().numpy()

        return batched(run, len(texts), self.batch_size)
