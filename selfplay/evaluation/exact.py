"""Exact values beside a game evaluation's estimates.

On the token and sequence games every response can be enumerated, so a policy's
*exact* exploitability is known: its duality gap

    gap(π) = 2·max_y P(y ≻ π) − 1,    P(y ≻ π) = Σ_y' P[y, y'] π(y'),

the payoff of the best response against π over the whole response space. The league's
exploitability, 2·max_{j≠i} W[j][i] − 1, only looks at the league's own members, so a
league whose members are alike (a run that collapsed early to one pure policy and kept
it) reads ≈ 0 where the exact gap is large. `selfplay eval` reports both and warns when
the league's value, even at the top of its 95% band, is `BLIND_MARGIN` below the exact one.

π(s) is the distribution the policy is evaluated at: the product over the response's
positions of softmax(logits / T) restricted to the move tokens, T = `rollout.temperature`
(the rollout workers' sampling for the games). With top-k or top-p on, the sampled
distribution is cut and no exact value is reported.
"""

from __future__ import annotations

import numpy as np

#: The league's exploitability (the top of its band) this far below the exact gap:
#: the league cannot see the exploit.
BLIND_MARGIN = 0.1

#: Games with more response sequences than this are not enumerated here.
MAX_SEQUENCES = 4096


def sequence_distribution(model, prompt: list[int], move_ids: list[int], length: int, T: float):
    """π(s) over the alphabet**length sequences (lexicographic, first move most significant)
    from one batched forward pass; float64, sums to 1."""
    import itertools

    import torch

    seqs = list(itertools.product(range(len(move_ids)), repeat=length))
    ids = torch.tensor([list(prompt) + [move_ids[m] for m in s] for s in seqs])
    P0 = len(prompt)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, P0 - 1 : P0 - 1 + length, :]
    logp = torch.log_softmax(logits[..., move_ids].double() / T, dim=-1)  # [n, L, A]
    chosen = torch.tensor(seqs).unsqueeze(-1)
    lp = logp.gather(-1, chosen).squeeze(-1).sum(-1)
    return lp.exp().numpy()


def exact_gaps(plan) -> list[float] | None:
    """Each policy's exact gap on the plan's game, or None (a text task, a game too large
    to enumerate, or top-k/top-p sampling)."""
    task, rollout = plan.task, plan.cfg.rollout
    if not hasattr(task, "gap") or task.n > MAX_SEQUENCES:
        return None
    if rollout.top_k or rollout.top_p < 1.0:
        return None
    from selfplay.models.load import encode_prompts, load_policy

    prompt = encode_prompts(plan.tokenizer, [task.prompt])[0]
    moves = task.move_ids(plan.tokenizer)
    gaps = []
    for p in plan.policies:
        model, _ = load_policy(p.source, dtype="float32")
        pi = sequence_distribution(model.eval(), prompt, moves, task.length, rollout.temperature)
        gaps.append(task.gap(pi / pi.sum()))
    return gaps


def blind_spots(report: dict) -> list[str]:
    """One warning per policy whose league exploitability (top of its band) lies
    `BLIND_MARGIN` or more below its exact gap."""
    exact = report.get("exact_exploitability")
    if not exact:
        return []
    out = []
    for name, e, hi in zip(report["policies"], exact, report["exploitability_high"], strict=True):
        if hi is not None and np.isfinite(hi) and e - hi >= BLIND_MARGIN:
            out.append(
                f"warning: the league cannot exploit {name}: its members are too alike or too few "
                f"(league {hi:.2f} at most, exact {e:.2f})"
            )
    return out
