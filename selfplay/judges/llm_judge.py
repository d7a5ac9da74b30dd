"""LLM-as-judge: a prompted causal LM, P read from its next-token logits.

The judge prompt (a template over prompt, A and B, rendered through the
tokenizer's chat template when it has one) ends where the model should answer.
With ℓ_A, ℓ_B the next-token logits of the two answer tokens,

    p(a, b) = exp ℓ_A / (exp ℓ_A + exp ℓ_B) = σ(ℓ_A − ℓ_B),

i.e. the model's answer distribution renormalised over the two answers (as in
Zheng et al. 2023's pairwise LLM judge, read off logits instead of parsed
text). The raw p is position-biased, so the judge returns the symmetrised
P = ½ + ½·(p(a, b) − p(b, a)) (see `selfplay.judges.base`). A message-list
prompt fills {prompt} as its plain text (`prompt_text`); the filled template is
one user turn of the judge's own chat template.
"""

from __future__ import annotations

import numpy as np
import torch

from selfplay.errors import InputError
from selfplay.judges.base import (
    batched,
    check_template,
    encode_right_padded,
    prompt_text,
    symmetrized,
)
from selfplay.models.load import format_prompt
from selfplay.types import RawPrompt

DEFAULT_TEMPLATE = "Question: {prompt} Answer A: {a} Answer B: {b} Which is better? A or B"
ANSWERS = ("A", "B")


def answer_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise InputError(f"LLM judge: answer {text!r} is {len(ids)} tokens; it must be one token")
    return int(ids[0])


def check_answers(tokenizer, answers: tuple[str, str] = ANSWERS) -> tuple[int, int]:
    """The two answers' token ids; InputError unless they are two distinct single tokens."""
    ids = (answer_token_id(tokenizer, answers[0]), answer_token_id(tokenizer, answers[1]))
    if ids[0] == ids[1]:
        raise InputError(f"LLM judge: answers {answers} map to the same token")
    return ids


class LLMJudge:
    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int,
        device: str = "cpu",
        template: str = DEFAULT_TEMPLATE,
        answers: tuple[str, str] = ANSWERS,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        check_template(template)
        self.template = template
        self.answer_ids = check_answers(tokenizer, answers)
        self.prob = symmetrized(self.raw)

    def judge_texts(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> list[str]:
        return [
            format_prompt(self.tokenizer, self.template.format(prompt=prompt_text(p), a=x, b=y))
            for p, x, y in zip(prompts, a, b, strict=True)
        ]

    def raw(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> np.ndarray:
        """[N] σ(ℓ_A − ℓ_B) at the position after the judge prompt (not symmetrised)."""
        texts = self.judge_texts(prompts, a, b)
        add_special = not getattr(self.tokenizer, "chat_template", None)
        ia, ib = self.answer_ids

        def run(s: slice) -> np.ndarray:
            ids, attn, lengths = encode_right_padded(
                self.tokenizer, texts[s], add_special_tokens=add_special, device=self.device
            )
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=attn).logits
            last = logits[torch.arange(len(ids), device=self.device), lengths - 1].double()
            return torch.sigmoid(last[:, ia] - last[:, ib]).cpu().numpy()

        return batched(run, len(texts), self.batch_size)
