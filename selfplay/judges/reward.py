"""Bradley–Terry judge over a scalar reward model.

P(a ≻ b | x) = σ(r(x, a) − r(x, b)) (Bradley & Terry 1952; the RLHF reward
model of Christiano et al. 2017). r is the single logit of any HF
`AutoModelForSequenceClassification` on the prompt–response conversation.

σ(d) is computed as ½ + ½·tanh(d/2), which is odd about ½ exactly, and each
distinct (prompt, response) is scored once, so identical responses get d = 0
and P = ½ exactly. A BT judge is already symmetric; no second order is run.
Unique keys are sorted, so prob(a, b) and prob(b, a) score identical batches
(a message-list prompt is keyed by its canonical `prompt_key`).
A BT model is transitive by construction: it cannot express A ≻ B ≻ C ≻ A.
"""

from __future__ import annotations

import numpy as np
import torch

from selfplay.judges.base import (
    batched,
    check_batch,
    conversation_text,
    encode_right_padded,
    prompt_key,
)
from selfplay.types import RawPrompt


class RewardJudge:
    def __init__(self, model, tokenizer, *, batch_size: int, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def rewards(self, prompts: list[RawPrompt], responses: list[str]) -> np.ndarray:
        """[N] float64 r(prompt_i, response_i), in batches of batch_size."""
        pairs = [
            conversation_text(self.tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)
        ]
        add_special = pairs[0][1] if pairs else True

        def run(s: slice) -> np.ndarray:
            ids, attn, _ = encode_right_padded(
                self.tokenizer,
                [t for t, _ in pairs[s]],
                add_special_tokens=add_special,
                device=self.device,
            )
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=attn).logits
            return logits[:, 0].double().cpu().numpy()

        return batched(run, len(pairs), self.batch_size)

    def prob(self, prompts: list[RawPrompt], a: list[str], b: list[str]) -> np.ndarray:
        n = check_batch(prompts, a, b)
        # Sorted unique keys: prob(a, b) and prob(b, a) score the very same batches,
        # so their rewards, and hence their P, mirror each other exactly.
        pk = [prompt_key(p) for p in prompts]
        raw = dict(zip(pk, prompts, strict=True))  # key -> the prompt as given
        keys = sorted(set(zip(pk, a, strict=True)) | set(zip(pk, b, strict=True)))
        index = {key: i for i, key in enumerate(keys)}
        r = self.rewards([raw[p] for p, _ in keys], [y for _, y in keys])
        ia = np.array([index[k] for k in zip(pk, a, strict=True)], dtype=np.int64)
        ib = np.array([index[k] for k in zip(pk, b, strict=True)], dtype=np.int64)
        d = r[ia] - r[ib] if n else np.zeros(0)
        return 0.5 + 0.5 * np.tanh(0.5 * d)
