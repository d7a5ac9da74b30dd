"""How intransitive a judge is on real responses: the fraction of response triples
{a, b, c} whose majority preferences form a cycle a ≻ b ≻ c ≻ a
(`selfplay.games.measures.cyclic_triples`).

The responses are a run's rollouts (RUN_DIR/rollouts/*.parquet, the `response`
column, trained and opponent rows alike, duplicates dropped) or a parquet / jsonl
file with a `response` field; at most `max_responses` of them, drawn without
replacement with `seed`. Every pair is judged once, P(b ≻ a) = 1 − P(a ≻ b), with
an empty prompt: the responses are pooled across prompts, which is only meaningful
for a judge that does not read the prompt (the raters judge does not).
A bad path or judge is an InputError.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from selfplay.errors import InputError


def responses(path: str | Path) -> list[str]:
    """Unique responses (first-seen order) of a run dir's rollouts, a parquet or a jsonl."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted((p / "rollouts").glob("*.parquet"))
        if not files:
            raise InputError(f"{p} has no rollouts/*.parquet (rollout.save: every)")
    elif p.is_file():
        files = [p]
    else:
        raise InputError(f"no such run dir or file: {path}")
    out: list[str] = []
    for f in files:
        if f.suffix == ".jsonl":
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            out += [str(r["response"]) for r in rows if "response" in r]
        else:
            import pyarrow.parquet as pq

            try:
                out += [str(x) for x in pq.read_table(f, columns=["response"]).column(0)]
            except Exception as e:  # noqa: BLE001 - a file that is not a rollout table
                raise InputError(f"cannot read responses from {f}: {e}") from None
    return list(dict.fromkeys(out))


def preference_matrix(judge, texts: list[str]) -> np.ndarray:
    """[n, n] P(texts[i] ≻ texts[j]) from one judge call over the pairs i < j."""
    n = len(texts)
    ii, jj = np.triu_indices(n, 1)
    p = np.asarray(
        judge.prob([""] * len(ii), [texts[i] for i in ii], [texts[j] for j in jj]), float
    )
    P = np.full((n, n), 0.5)
    P[ii, jj], P[jj, ii] = p, 1.0 - p
    return P


def run(
    path: str,
    function: str = "selfplay.judges.raters:prob",
    returns: str = "prob",
    tau: float = 1.0,
    max_responses: int = 200,
    seed: int = 0,
) -> dict:
    """The cycle fraction of a judge function (`judge.function` form) on `path`'s responses."""
    from selfplay.games.measures import cyclic_triples
    from selfplay.judges.function import FunctionJudge, load_function

    judge = FunctionJudge(load_function(function), returns=returns, tau=tau)
    texts = responses(path)
    if len(texts) < 3:
        raise InputError(f"{path}: {len(texts)} distinct responses; a triple needs 3")
    if len(texts) > max_responses:
        pick = np.random.default_rng(seed).choice(len(texts), max_responses, replace=False)
        texts = [texts[i] for i in sorted(pick)]
    P = preference_matrix(judge, texts)
    if np.isnan(P).any():
        raise InputError(f"judge {function} failed on {int(np.isnan(P).sum()) // 2} pairs")
    cyclic, total = cyclic_triples(P)
    return {
        "judge": function,
        "responses": len(texts),
        "triples": total,
        "cyclic": cyclic,
        "cycle_fraction": cyclic / total,
    }
