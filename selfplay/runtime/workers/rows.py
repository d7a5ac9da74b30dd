"""Rollout rows for RUN_DIR/rollouts/: built where the samples are (the judge actor),
so the driver receives one small table per batch instead of the sampled tensors.

One row per trained-on response (role `trained`, with its ĝ) and per opponent sample
(role `opponent`, ĝ null). `response_tokens` are the generated ids, EOS included;
`response` is the decoded completion without EOS (what the judge saw); `prompt` is
the rendered text the policy saw (the raw prompt where no rendering was recorded).
The driver adds `step` and `phase` (the role the phase trains) when it writes the file.
"""

from __future__ import annotations

import json

import numpy as np

from selfplay.types import Samples


def _prompt_text(samples: Samples, i: int) -> str:
    if samples.prompt_rendered is not None:
        return samples.prompt_rendered[i]
    raw = samples.prompt_texts[i]
    return raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)


def rows_table(samples: Samples, g: np.ndarray | None, role: str):
    """A pyarrow table of `samples`' rows (g: ĝ per row for trained rows, None for opponents)."""
    import pyarrow as pa

    n, k = len(samples), samples.k
    lengths = np.asarray(samples.lengths, dtype=np.int64)
    trunc = np.zeros(n, dtype=bool) if samples.truncated is None else np.asarray(samples.truncated)
    gs = [None] * n if g is None else [None if np.isnan(x) else float(x) for x in g]
    return pa.table(
        {
            "role": [role] * n,
            "prompt_id": np.repeat(np.asarray(samples.prompt_ids, dtype=np.int64), k),
            "prompt": [_prompt_text(samples, i // k) for i in range(n)],
            "response": list(samples.texts),
            "response_tokens": [samples.tokens[i, : lengths[i]].tolist() for i in range(n)],
            "truncated": trunc.astype(bool),
            "sampler_version": [str(samples.version)] * n,
            "g": pa.array(gs, type=pa.float64()),
        }
    )


def with_step(table, step: int, phase: str):
    """`table` with the driver's `step` and `phase` columns in front."""
    import pyarrow as pa

    n = table.num_rows
    table = table.add_column(0, "phase", pa.array([phase] * n, type=pa.string()))
    return table.add_column(0, "step", pa.array([step] * n, type=pa.int64()))
