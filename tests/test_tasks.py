"""The Task seam on the token game, without Ray: what a task hands the runtime
(prompts, sampling constraints, judge, evaluator) and what its evaluator reports.

Oracles: a plain HF forward of the same tiny model (the move distribution), the
duality gap written out in numpy, and the game matrix itself (the judge).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from selfplay.config import load_config
from selfplay.errors import InputError
from selfplay.models.load import encode_prompts
from selfplay.runtime.driver.build import _build_model, model_spec
from selfplay.runtime.learner.learner import Learner, LearnerSettings
from selfplay.tasks import make_task
from selfplay.tasks.token_game import PROMPT

CFG = load_config(None, ["task.generate=bt-cyclic", "task.n=4", "task.seed=3"])


@pytest.fixture(scope="module")
def setup():
    task = make_task(CFG.task)
    spec = model_spec(CFG, task)
    tok = spec.tokenizer()
    task.bind(tok)
    return task, spec, tok


def test_prompts_have_stable_ids_from_the_cursor(setup):
    task, _, tok = setup
    p = task.prompts(3, 7)
    assert p.ids.tolist() == [7, 8, 9] and p.texts == [PROMPT] * 3
    # the policy's tokens are the prompt encoded once, as a worker would encode it
    assert p.tokens == encode_prompts(tok, [PROMPT]) * 3
    # the same cursor gives the same prompts: a resumed run continues where it stopped
    assert task.prompts(3, 7).ids.tolist() == p.ids.tolist()


def test_sampling_restricts_to_the_move_tokens_once(setup):
    task, _, tok = setup
    s = task.sampling(tok, CFG.rollout)
    assert s.max_new_tokens == 1
    decoded = [tok.convert_ids_to_tokens(i) for i in s.allowed_token_ids]
    assert decoded == task.moves == ["m0", "m1", "m2", "m3"]
    assert (s.temperature, s.explore_temperature) == (
        CFG.rollout.temperature,
        CFG.rollout.explore_temperature,
    )


def test_a_tokenizer_without_the_moves_is_one_line(setup):
    task, _, _ = setup
    from selfplay.models.tiny import ModelSpec

    other = ModelSpec(words=("a", "b")).tokenizer()
    with pytest.raises(InputError, match="moves"):
        task.sampling(other, CFG.rollout)


def test_judge_spec_is_the_game_matrix(setup):
    task, _, _ = setup
    from selfplay.judges.factory import make_judge

    judge = make_judge(task.judge_spec(CFG.judge.model_copy(update={"batch_size": 8})))
    a, b = ["m0", "m2", "m3"], ["m1", "m2", "m0"]
    got = judge.prob([PROMPT] * 3, a, b)
    want = [task.P[0, 1], task.P[2, 2], task.P[3, 0]]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_evaluator_reports_the_exact_gap_of_the_lm_policy(setup):
    task, spec, tok = setup
    # As `build` makes it: the learner's policy is restricted like the sampler's.
    allowed = task.sampling(tok, CFG.rollout).allowed_token_ids
    learner = Learner(
        functools.partial(_build_model, spec, "float32"),
        LearnerSettings(allowed_token_ids=allowed),
    )
    learner.snapshot("ref")
    ev = task.evaluator(tok, beta=0.1)
    first = ev.reference(learner)
    # Oracle: the model's next-token distribution after the prompt, over the moves.
    model = _build_model(spec, "float32")
    ids = torch.tensor([encode_prompts(tok, [PROMPT])[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].double()
    moves = list(task.sampling(tok, CFG.rollout).allowed_token_ids)
    pi = torch.softmax(logits[moves], -1).numpy()
    np.testing.assert_allclose(first["policy"], pi, atol=1e-6)
    assert first["gap"] == pytest.approx(2 * np.max(task.P @ pi) - 1, abs=1e-6)
    assert first["win_rate_ref"] == pytest.approx(pi @ task.P @ pi, abs=1e-6)
    # μ = π_ref = π here: regularized gap = 2β·KL(π ‖ softmax(log μ + Pπ/β)).
    target = np.log(pi) + task.P @ pi / 0.1
    target = np.exp(target - target.max())
    target /= target.sum()
    kl = float(np.sum(pi * (np.log(pi) - np.log(target))))
    assert first["regularized_gap"] == pytest.approx(2 * 0.1 * kl, rel=1e-5)
    s = ev.summary(learner)
    assert s["reference_policy"] == pytest.approx(pi.tolist(), abs=1e-6)
    assert s["beta"] == 0.1 and len(s["regularized_nash"]) == 4
    text = "\n".join(ev.format({**s, "gap_initial": first["gap"], "regularized_gap_initial": 0.0}))
    assert "π_ref" in text and "m3" in text


def test_model_dtype_reaches_the_learner_and_the_rollout_backend(setup):
    _, spec, _ = setup
    from selfplay.runtime.driver.build import _build_backend

    model = _build_model(spec, "bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    backend = _build_backend(spec, "hf", "bfloat16")
    assert {p.dtype for p in backend.model.parameters()} == {torch.bfloat16}


def test_unknown_task_kind_is_refused():
    with pytest.raises(InputError, match="task.kind: unknown kind 'chess'; expected one of"):
        load_config(None, ["task.kind=chess"])
