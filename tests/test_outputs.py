"""What a run leaves for people to use (RUN_DIR/model and RUN_DIR/rollouts), checked on
a real `selfplay train` of the token game.

Oracles: the exported model, loaded with plain `AutoModelForCausalLM.from_pretrained`,
gives the move distribution the run's own exact evaluator reported (`summary.json`
`policy`), computed here by a plain softmax over the move tokens' logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_resume import QUICKSTART, SMALL, K, P, run
from transformers import AutoModelForCausalLM, AutoTokenizer

from selfplay.tasks.token_game import PROMPT

pytestmark = pytest.mark.ray
STEPS = 3
P_ROWS, P_OPP = P * K, P * 8  # SMALL: rollout.k=K, rollout.opponents_k=8, one source


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    res = run(str(QUICKSTART), f"runtime.steps={STEPS}", *SMALL, f"output_dir={out}", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    return next(out.iterdir()), json.loads(res.stdout.strip().splitlines()[-1])


def test_the_final_policy_loads_with_plain_transformers(run_dir):
    d, summary = run_dir
    assert summary["model"] == str(d / "model")
    assert list((d / "model").glob("*.safetensors")) and not list((d / "model").glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(d / "model").eval()
    tok = AutoTokenizer.from_pretrained(d / "model")
    moves = summary["moves"]
    move_ids = tok.convert_tokens_to_ids(moves)
    # the prompt as the run's workers rendered it: through the saved chat template
    text = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    p = torch.softmax(logits[move_ids], dim=0).numpy()
    np.testing.assert_allclose(p, summary["policy"], atol=1e-5)
    # and the run moved away from π_ref, so this is not the initial model's distribution
    assert np.abs(np.asarray(summary["policy"]) - summary["reference_policy"]).max() > 1e-3


def test_rollouts_hold_every_row_and_their_g_is_the_matrix_average(run_dir):
    import pyarrow.parquet as pq

    from selfplay.config import load_config
    from selfplay.runtime.driver.export import COLUMNS
    from selfplay.tasks.token_game import from_config

    d, summary = run_dir
    M = from_config(load_config(QUICKSTART).task).P
    files = sorted((d / "rollouts").glob("step-*.parquet"))
    assert [f.name for f in files] == [f"step-{s:06d}.parquet" for s in range(1, STEPS + 1)]
    for step, f in enumerate(files, start=1):
        t = pq.read_table(f)
        assert tuple(t.column_names) == COLUMNS
        rows = t.to_pylist()
        assert {r["step"] for r in rows} == {step}
        trained = [r for r in rows if r["role"] == "trained"]
        opp = [r for r in rows if r["role"] == "opponent"]
        assert len(trained) == P_ROWS and len(opp) == P_OPP
        assert all(r["g"] is None for r in opp) and not any(r["truncated"] for r in rows)
        move = {m: i for i, m in enumerate(summary["moves"])}
        for r in trained:
            assert len(r["response_tokens"]) == 1 and r["response"] in move
            # MPO has one opponent source: ĝ = mean over the prompt's opponents of P[y, y'']
            theirs = [move[o["response"]] for o in opp if o["prompt_id"] == r["prompt_id"]]
            want = np.mean([M[move[r["response"]], j] for j in theirs])
            assert abs(r["g"] - want) < 1e-9, (r, want)
