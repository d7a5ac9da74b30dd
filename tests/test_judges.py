"""All four judge kinds on tiny random-init models, checked against direct forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfplay.errors import InputError
from selfplay.judges.base import Judge, symmetrized
from selfplay.judges.factory import JudgeSpec, make_judge
from selfplay.judges.game import GameJudge
from selfplay.judges.llm_judge import LLMJudge
from selfplay.judges.pairwise import PairwiseJudge
from selfplay.judges.pool import JudgePool, split_even
from selfplay.judges.reward import RewardJudge
from selfplay.models.tiny import ModelSpec, tiny_vocab

MOVES = ("rock", "paper", "scissors")
WORDS = (*MOVES, "choose", "a", "move", "good", "bad", "very")
VOCAB = tiny_vocab(ModelSpec(words=WORDS).vocab_words)
RPS = np.array([[0.5, 0.1, 0.8], [0.9, 0.5, 0.3], [0.2, 0.7, 0.5]])  # P + Pᵀ = 1


def spec(seed: int) -> ModelSpec:
    # init_std 0.5: far enough from uniform that P varies well away from ½.
    return ModelSpec(words=WORDS, hidden=16, layers=1, heads=2, seed=seed, init_std=0.5)


PROMPTS = [
    "choose a move",
    "choose",
    "a very good move",
    "move",
    "choose a move",
    "bad",
    "choose a move",
    "good move",
    "a",
    "very very bad",
]
A = [
    "rock",
    "paper",
    "very good",
    "scissors",
    "rock",
    "bad bad bad",
    " paper ",
    "good",
    "move",
    "zebra",
]
B = ["paper", "paper", "good", "rock", "scissors", "a", "scissors", "good move", "very", "rock"]
SAME = [a.strip() == b.strip() for a, b in zip(A, B, strict=True)]


@pytest.fixture(scope="module")
def judges() -> dict[str, Judge]:
    s = spec(0)
    tok = s.tokenizer()
    return {
        "game": GameJudge(RPS, list(MOVES)),
        "reward": RewardJudge(s.sequence_classifier(), tok, batch_size=3),
        "pairwise": PairwiseJudge(spec(1).sequence_classifier(), tok, batch_size=4),
        "llm": LLMJudge(spec(2).causal_lm(), tok, batch_size=5),
    }


KINDS = ["game", "reward", "pairwise", "llm"]


@pytest.mark.parametrize("kind", KINDS)
def test_range_shape_symmetry_ties(judges, kind):
    j = judges[kind]
    assert isinstance(j, Judge)
    p_ab, p_ba = j.prob(PROMPTS, A, B), j.prob(PROMPTS, B, A)
    assert p_ab.shape == (len(A),) and p_ab.dtype == np.float64
    assert ((p_ab >= 0) & (p_ab <= 1)).all()
    np.testing.assert_allclose(p_ab + p_ba, 1.0, atol=1e-12, rtol=0)
    same = j.prob(PROMPTS, A, A)
    assert (same == 0.5).all()
    assert p_ab[1] == 0.5  # row 1 is ("paper", "paper")
    assert np.abs(p_ab[~np.array(SAME)] - 0.5).max() > 1e-3  # not a constant judge
    assert j.prob([], [], []).shape == (0,)


def test_game_judge_matches_matrix(judges):
    j = judges["game"]
    idx = {m: i for i, m in enumerate(MOVES)}
    got = j.prob(PROMPTS, A, B)
    for k, (a, b) in enumerate(zip(A, B, strict=True)):
        ia, ib = idx.get(a.strip(), -1), idx.get(b.strip(), -1)
        want = (
            RPS[ia, ib] if ia >= 0 and ib >= 0 else (0.5 if ia < 0 and ib < 0 else float(ia >= 0))
        )
        assert got[k] == pytest.approx(want, abs=1e-15)
    assert got[-1] == 0.0 and got[5] == 0.5  # invalid loses to valid; two invalid tie
    with pytest.raises(InputError, match="constant-sum"):
        GameJudge(np.array([[0.5, 0.6], [0.6, 0.5]]), ["x", "y"])
    with pytest.raises(InputError):
        GameJudge(RPS, ["x", "y"])


def _ids(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def test_reward_judge_is_bradley_terry_of_direct_forward(judges):
    j = judges["reward"]

    def r(prompt: str, resp: str) -> float:
        # The tiny chat template by hand: <bos><user> prompt <assistant> response
        text = f"<bos><user> {prompt} <assistant> {resp} "
        with torch.no_grad():
            return j.model(_ids(j.tokenizer, text)).logits[0, 0].item()

    want = [1 / (1 + np.exp(-(r(p, a) - r(p, b)))) for p, a, b in zip(PROMPTS, A, B, strict=True)]
    np.testing.assert_allclose(j.prob(PROMPTS, A, B), want, atol=1e-6, rtol=0)


def test_pairwise_judge_symmetrises_direct_forward(judges):
    j = judges["pairwise"]

    def p(prompt: str, a: str, b: str) -> float:
        ids = j.tokenizer(f"{prompt} [SEP] A: {a} [SEP] B: {b}")["input_ids"]
        with torch.no_grad():
            return torch.sigmoid(j.model(torch.tensor([ids])).logits[0, 0]).item()

    raw = np.array([p(*row) for row in zip(PROMPTS, A, B, strict=True)])
    want = [0.5 * (p(q, a, b) + 1 - p(q, b, a)) for q, a, b in zip(PROMPTS, A, B, strict=True)]
    np.testing.assert_allclose(j.prob(PROMPTS, A, B), want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(j.raw(PROMPTS, A, B), raw, atol=1e-6, rtol=0)
    assert (
        np.abs(
            raw + np.array([p(q, b, a) for q, a, b in zip(PROMPTS, A, B, strict=True)]) - 1
        ).max()
        > 1e-3
    )


def test_llm_judge_reads_answer_logits(judges):
    j = judges["llm"]
    assert j.answer_ids == (VOCAB.index("A"), VOCAB.index("B"))

    def p(prompt: str, a: str, b: str) -> float:
        text = (
            f"<bos><user> Question: {prompt} Answer A: {a} Answer B: {b} "
            f"Which is better? A or B <assistant>"
        )
        ids = _ids(j.tokenizer, text)
        assert (ids != VOCAB.index("<unk>")).all() or "zebra" in text
        with torch.no_grad():
            last = j.model(ids).logits[0, -1]
        return torch.softmax(last[[VOCAB.index("A"), VOCAB.index("B")]], 0)[0].item()

    want = [0.5 * (p(q, a, b) + 1 - p(q, b, a)) for q, a, b in zip(PROMPTS, A, B, strict=True)]
    np.testing.assert_allclose(j.prob(PROMPTS, A, B), want, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="one token"):
        LLMJudge(j.model, j.tokenizer, batch_size=2, answers=("A B", "B"))


@pytest.mark.parametrize("kind", ["reward", "pairwise", "llm"])
def test_batching_does_not_change_numbers(judges, kind):
    j = judges[kind]
    ref = j.prob(PROMPTS, A, B)
    for bs in (1, 7, 1000):
        old, j.batch_size = j.batch_size, bs
        try:
            np.testing.assert_allclose(j.prob(PROMPTS, A, B), ref, atol=1e-6, rtol=0)
        finally:
            j.batch_size = old


def test_symmetrized_closed_form():
    def biased(prompts, a, b):  # prefers whatever is in slot A, and longer answers
        return np.array([0.7 if len(x) > len(y) else 0.6 for x, y in zip(a, b, strict=True)])

    sym = symmetrized(biased)
    p = sym(["q"] * 3, ["aa", "b", "c"], ["b", "aa", "c"])
    np.testing.assert_allclose(p, [0.5 * (0.7 + 1 - 0.6), 0.5 * (0.6 + 1 - 0.7), 0.5], atol=1e-15)
    with pytest.raises(ValueError, match="lengths differ"):
        sym(["q"], ["a", "b"], ["c"])


def test_split_even():
    for n in range(0, 12):
        for parts in range(1, 6):
            sl = split_even(n, parts)
            assert [i for s in sl for i in range(s.start, s.stop)] == list(range(n))
            sizes = [s.stop - s.start for s in sl]
            assert all(sizes) and (not sizes or max(sizes) - min(sizes) <= 1)
            assert len(sl) == min(n, parts)


@pytest.mark.parametrize("servers", [1, 3, 25])
def test_pool_reassembles_in_order(judges, servers):
    j = judges["pairwise"]
    calls = []

    def server(prompts, a, b):
        calls.append(len(prompts))
        return j.prob(prompts, a, b)

    pool = JudgePool([server] * servers)
    np.testing.assert_allclose(pool.prob(PROMPTS, A, B), j.prob(PROMPTS, A, B), atol=1e-6)
    assert sum(calls) == len(A) and len(calls) == min(servers, len(A))


def test_pool_with_deferred_results_and_mixed_judges(judges):
    # Servers return thunks (like Ray refs); gather resolves them, all dispatched first.
    order = []

    def deferred(judge, name):
        def call(prompts, a, b):
            order.append(("dispatch", name))
            return lambda: judge.prob(prompts, a, b)

        return call

    pool = JudgePool(
        [deferred(judges["game"], "g"), deferred(judges["reward"], "r")],
        gather=lambda thunks: [order.append(("get", None)) or t() for t in thunks],
    )
    got = pool.prob(PROMPTS, A, B)
    np.testing.assert_allclose(got[:5], judges["game"].prob(PROMPTS[:5], A[:5], B[:5]))
    np.testing.assert_allclose(got[5:], judges["reward"].prob(PROMPTS[5:], A[5:], B[5:]))
    assert [o[0] for o in order] == ["dispatch", "dispatch", "get", "get"]


@pytest.mark.parametrize("kind", KINDS)
def test_make_judge(judges, kind):
    s = {"reward": spec(0), "pairwise": spec(1), "llm": spec(2)}.get(kind)
    js = JudgeSpec(
        kind=kind,
        batch_size=4,
        model=s.name() if s else None,
        matrix=RPS if kind == "game" else None,
        moves=MOVES if kind == "game" else None,
    )
    built = make_judge(js)
    np.testing.assert_allclose(
        built.prob(PROMPTS, A, B), judges[kind].prob(PROMPTS, A, B), atol=1e-6
    )


def test_make_judge_errors():
    for bad in (
        JudgeSpec(kind="game", batch_size=1),
        JudgeSpec(kind="reward", batch_size=1),
        JudgeSpec(kind="llm", batch_size=0, model=spec(0).name()),
        JudgeSpec(kind="oracle", batch_size=1, model="x"),
    ):
        with pytest.raises(InputError):
            make_judge(bad)


def test_game_judge_reads_token_ids_as_their_decoded_text():
    """The token-id path against the text path (the oracle): every sequence of move ids
    is the row its decoded text names; anything else is invalid; ĝ is the same."""
    import itertools
    from types import SimpleNamespace

    from selfplay.games import generate
    from selfplay.runtime.workers.judging import estimate_g
    from selfplay.tasks.sequence_game import SequenceGame, sequence_prompt
    from selfplay.types import Samples, Version

    a, length = 3, 2
    task = SequenceGame(generate("uniform", a**length, 4), "t", a, length, sequence_prompt(length))
    tok = ModelSpec(words=tuple(task.model_words())).tokenizer()
    task.bind(tok)
    spec = task.judge_spec(SimpleNamespace(batch_size=8))
    judge = make_judge(spec)
    ids = np.array(list(itertools.product(spec.move_ids, repeat=length)), dtype=np.int64)
    texts = tok.batch_decode(ids.tolist(), skip_special_tokens=True)
    rows = judge.token_rows(ids, np.full(len(ids), length))
    assert rows.tolist() == [judge.index(t) for t in texts] == list(range(a**length))
    other = tok.convert_tokens_to_ids("choose")
    bad = np.array([[spec.move_ids[0], other], [spec.move_ids[1], spec.move_ids[2]]])
    assert judge.token_rows(bad, np.array([2, 1])).tolist() == [-1, -1]  # not a move; too short

    rng = np.random.default_rng(0)

    def samples(n: int, k: int, with_texts: bool) -> Samples:
        pick = rng.integers(0, len(ids), size=n)
        tokens = ids[pick]
        tokens[0, 1] = other  # one invalid response among them
        dec = tok.batch_decode(tokens.tolist(), skip_special_tokens=True)
        return Samples(
            prompt_ids=np.arange(n // k),
            prompt_texts=[task.prompt] * (n // k),
            tokens=tokens,
            lengths=np.full(n, length),
            logprobs=np.zeros((n, length), np.float32),
            texts=dec if with_texts else None,
            version=Version(0, "main"),
            k=k,
        )

    mine, opp = samples(8, 4, True), samples(10, 5, True)
    by_text = estimate_g(judge, mine, [(opp, 1.0)])
    mine.texts = opp.texts = None
    by_ids = estimate_g(judge, mine, [(opp, 1.0)])
    np.testing.assert_array_equal(by_ids.g, by_text.g)
    with pytest.raises(ValueError, match="without move token ids"):
        estimate_g(GameJudge(task.P, task.moves, length), mine, [(opp, 1.0)])
    with pytest.raises(ValueError, match="reads texts"):
        estimate_g(RPS_JUDGE_TEXT_ONLY, mine, [(opp, 1.0)])


class _TextOnly:
    def prob(self, prompts, a, b):
        return np.full(len(a), 0.5)


RPS_JUDGE_TEXT_ONLY = _TextOnly()
