"""`selfplay eval` on a game reports each policy's exact exploitability (its duality gap)
beside the league's, and warns when the league cannot see an exploit.

Oracles: the exact gap 2·max_y (P π)_y − 1 computed here by hand from each saved model's
move distribution (one plain forward pass per model, softmax over the move tokens);
for a league of identical pure policies, W = ½ exactly (every comparison is a tie) and
the gap of the pure move m0 is 2·max_y P[y, m0] − 1 = 2·0.95 − 1 = 0.9.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from selfplay.cli import main
from selfplay.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "tests" / "converge.yaml"
MATRIX = np.loadtxt(CONF.with_name("weighted_rps.csv"), delimiter=",")


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory) -> Path:
    from selfplay.runtime.driver.trainer import train

    out = tmp_path_factory.mktemp("exact")
    overrides = [
        "runtime.steps=2",
        "runtime.keep_policies_every=1",
        "rollout.workers=1",
        "rollout.k=2",
        "rollout.opponents_k=8",
        "learner.updates_per_phase=2",
        f"output_dir={out}",
    ]
    return train(load_config(CONF, overrides), progress=False).run_dir


def _eval(capsys, *args: str) -> tuple[dict, str]:
    capsys.readouterr()
    main(["eval", *args, "--num-prompts", "16", "--json", "--no-progress", "--no-mlflow"])
    out = capsys.readouterr()
    return json.loads(out.out.strip().splitlines()[-1]), out.err


def _model(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _moves(model, tok) -> tuple[np.ndarray, np.ndarray]:
    """(π over the three moves, the last prompt position's final hidden state)."""
    import torch

    from selfplay.models.load import encode_prompts
    from selfplay.tasks.token_game import PROMPT, move_names

    ids = tok.convert_tokens_to_ids(move_names(3))
    x = torch.tensor([encode_prompts(tok, [PROMPT])[0]])
    with torch.no_grad():
        out = model(input_ids=x, output_hidden_states=True)
    logits = out.logits[0, -1, ids].double()
    return torch.softmax(logits, 0).numpy(), out.hidden_states[-1][0, -1]


def _gap(pi: np.ndarray) -> float:
    return float(2 * np.max(MATRIX @ pi) - 1)


def test_exact_gap_beside_the_league(run, capsys):
    r, err = _eval(capsys, str(run))
    assert r["policies"] == ["reference", "final"]
    model, tok = _model(run / "model")
    final = _gap(_moves(model, tok)[0])
    assert abs(r["exact_exploitability"][1] - final) < 1e-5, (r["exact_exploitability"], final)
    assert "exact" in err


def test_the_warning_needs_the_margin():
    from selfplay.evaluation.exact import BLIND_MARGIN, blind_spots

    r = {"policies": ["a", "b"], "exploitability_high": [0.5, None]}
    assert blind_spots(r) == []  # no exact values: nothing to compare
    r["exact_exploitability"] = [0.5 + BLIND_MARGIN * 0.99, 0.9]
    assert blind_spots(r) == []  # within the margin; b has no band
    r["exact_exploitability"][0] = 0.5 + BLIND_MARGIN * 1.01
    assert [ln.split(":")[1] for ln in blind_spots(r)] == [" the league cannot exploit a"]


def test_a_collapsed_league_is_flagged(run, tmp_path, capsys):
    """Every member made the same pure policy (m0 by a logit margin of 50, 60 or 70:
    distinct weights, one behaviour): the league reads exploitability 0, the exact gap
    is 0.9, and the warning names each member."""
    import torch

    from selfplay.tasks.token_game import move_names

    collapsed = tmp_path / "run"
    shutil.copytree(run, collapsed, ignore=shutil.ignore_patterns("eval"))
    model, tok = _model(collapsed / "model")
    pi, h = _moves(model, tok)
    proposal = tmp_path / "proposal"  # the trained policy before its collapse, kept aside
    model.save_pretrained(proposal)
    tok.save_pretrained(proposal)
    ids = tok.convert_tokens_to_ids(move_names(3))
    W = model.get_output_embeddings().weight
    w0 = W[ids[0]].clone()
    kept = collapsed / "policies"
    members = {50: [collapsed / "ref"], 60: [kept / "step-1"]}
    members[70] = [collapsed / "model", kept / "step-2"]  # the last step's is the final
    for margin, dirs in members.items():
        with torch.no_grad():  # logit(m_j) = logit(m0) − margin at the prompt, j = 1, 2
            for j in ids[1:]:
                W[j] = w0 - margin * h / h.dot(h)
        pure, _ = _moves(model, tok)
        assert pure[0] > 1 - 1e-12, pure
        for d in dirs:
            model.save_pretrained(d)
            tok.save_pretrained(d)

    r, err = _eval(capsys, "--league", str(collapsed), "--reference", str(collapsed / "ref"))
    assert r["policies"] == ["reference", "step-1", "final"]
    assert np.allclose(r["win_rate"], 0.5) and np.allclose(r["exploitability"], 0.0)
    assert np.allclose(r["exact_exploitability"], 2 * MATRIX[:, 0].max() - 1, atol=1e-9)
    warned = [ln for ln in err.splitlines() if ln.startswith("warning: the league cannot")]
    assert len(warned) == 3 and "final" in warned[2], err

    # the best-of-8 exploiter, its candidates from the uncollapsed policy, finds the exploit the league cannot: 2·0.95 − 1 = 0.9 at most (the exact gap)
    r, err = _eval(
        capsys,
        "--league",
        str(collapsed),
        "--reference",
        str(collapsed / "ref"),
        "--exploiter",
        "best-of-8",
        "--proposal",
        str(proposal),
    )
    ex = r["exploiter"]
    assert "exploiter: best-of-8" in err and ex["judgments"] == 16 * 8 * 4 * 3
    assert Path(r["plot"]).stat().st_size > 10_000  # the heatmap, with the exploiter's row
    for name in ("reference", "step-1", "final"):
        e = ex["policies"][name]
        assert 0.2 <= e["exploitability_lb"] <= 0.9 + 1e-9, (name, e)
        assert e["exploitability_lb_high"] >= e["exploitability_lb"] >= e["exploitability_lb_low"]
