"""Judges users bring (`judge.kind: function`) and the shipped raters judge, in process.

Oracles: the closed forms written out here by hand. A score function's judge is
σ((s_a − s_b)/τ) = 1/(1 + exp(−(s_a − s_b)/τ)); a probability function's judge is
½ + ½·(p(a, b) − p(b, a)); the raters judge is the plain mean of the three logistic
terms, each criterion computed by calling vaderSentiment / textstat directly. Judge
failures reuse `test_judge_failures`' rock–paper–scissors rows and its loop oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_judge_failures import MOVES, RPS, SOURCES, TRAINED, oracle

from selfplay.errors import InputError, RunError
from selfplay.judges import raters
from selfplay.judges.factory import JudgeSpec, check_judge_spec, make_judge
from selfplay.judges.function import FunctionJudge, load_function, resolve_ref
from selfplay.runtime.workers.judging import JudgePolicy, estimate_g


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_score_function_is_bradley_terry_with_its_temperature(tmp_path):
    f = tmp_path / "judge.py"
    f.write_text("def score(prompt, response):\n    return len(response) + len(prompt)\n")
    judge = make_judge(
        JudgeSpec(kind="function", batch_size=8, function=f"{f}:score", returns="score", tau=2.5)
    )
    prompts, a, b = ["x", "yy", "x"], ["aaaa", "b", "cc"], ["a", "bbbbbbb", "cc"]
    got = judge.prob(prompts, a, b)
    want = [_sigmoid((len(x) - len(y)) / 2.5) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[2] == 0.5  # the same response ties exactly
    np.testing.assert_allclose(judge.prob(prompts, b, a), 1 - got, rtol=0, atol=1e-15)


def test_prob_function_is_symmetrised():
    def biased(prompt, a, b):  # prefers the first position by 0.2, and longer responses
        return min(1.0, 0.2 + 0.1 * len(a) / max(1, len(b)))

    judge = FunctionJudge(biased, returns="prob")
    a, b = ["abc", "a", "zz"], ["a", "abcd", "zz"]
    got = judge.prob(["p"] * 3, a, b)
    want = [0.5 + 0.5 * (biased("p", x, y) - biased("p", y, x)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, [*want[:2], 0.5], rtol=0, atol=1e-12)
    assert got[0] > 0.5 > got[1]


def test_module_form_and_relative_file_resolve(tmp_path, monkeypatch):
    assert load_function("selfplay.judges.raters:prob") is raters.prob
    (tmp_path / "mine.py").write_text("def s(p, r):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_ref("mine.py:s") == f"{tmp_path / 'mine.py'}:s"
    assert resolve_ref("selfplay.judges.raters:prob") == "selfplay.judges.raters:prob"


BAD_REFS = [
    ("no-colon", "judge.py", "must be path/to/file.py:name"),
    ("missing-file", "{tmp}/nope.py:score", "no such file"),
    ("missing-name", "{tmp}/judge.py:nothing", "has no 'nothing'"),
    ("not-callable", "{tmp}/judge.py:VALUE", "is not callable (int)"),
    ("raises-on-load", "{tmp}/broken.py:score", "failed to load: ZeroDivisionError"),
    ("no-module", "no_such_module_xyz:score", "cannot import no_such_module_xyz"),
]


@pytest.mark.parametrize("ref, word", [c[1:] for c in BAD_REFS], ids=[c[0] for c in BAD_REFS])
def test_a_function_that_cannot_load_is_one_input_error(tmp_path, ref, word):
    (tmp_path / "judge.py").write_text("VALUE = 3\n\ndef score(p, r):\n    return 0.0\n")
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    spec = JudgeSpec(kind="function", batch_size=8, function=ref.format(tmp=tmp_path))
    with pytest.raises(InputError) as e:
        check_judge_spec(spec)
    assert word in str(e.value) and "\n" not in str(e.value)


def _rps_function(fail: str):
    """RPS's P as a pairwise function that fails (NaN or raises) on (scissors, paper)."""

    def fn(prompt, a, b):
        if (a, b) == ("scissors", "paper"):
            if fail == "raise":
                raise ValueError("cannot rate scissors")
            return float("nan")
        return RPS[MOVES.index(a), MOVES.index(b)]

    return fn


# Symmetrisation asks both orders, so (paper, scissors) fails with (scissors, paper).
BOTH = frozenset({("scissors", "paper"), ("paper", "scissors")})


@pytest.mark.parametrize("fail", ["nan", "raise"])
def test_nan_or_raise_follows_on_failure(fail):
    judge = FunctionJudge(_rps_function(fail), returns="prob")
    with pytest.raises(RunError) as e:
        estimate_g(judge, TRAINED, SOURCES, JudgePolicy(retries=1))
    assert "(NaN)" in str(e.value) and "judge.on_failure=mask" in str(e.value)
    est = estimate_g(judge, TRAINED, SOURCES, JudgePolicy(retries=1, on_failure="mask"))
    g_ref, masked = oracle(bad_pairs=BOTH)
    keep = np.array([x is not None for x in g_ref])
    np.testing.assert_array_equal(est.keep, keep)
    np.testing.assert_allclose(est.g[keep], [x for x in g_ref if x is not None], atol=1e-12)
    assert est.masked_pairs == sum(masked) > 0


def test_raters_probability_is_the_mean_of_three_bradley_terry_raters():
    import textstat
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    texts = [
        "I love this wonderful sunny day!",
        "The mitochondrial electron transport chain generates a proton gradient.",
        "No.",
        "",
    ]

    def by_hand(a: str, b: str) -> float:
        terms = [
            _sigmoid(
                (vader.polarity_scores(a)["compound"] - vader.polarity_scores(b)["compound"]) / 0.25
            ),
            _sigmoid(
                (
                    (textstat.flesch_reading_ease(a) if a else 0.0)
                    - (textstat.flesch_reading_ease(b) if b else 0.0)
                )
                / 10.0
            ),
            _sigmoid((len(b.split()) - len(a.split())) / 10.0),
        ]
        return sum(terms) / 3

    for a in texts:
        for b in texts:
            assert raters.prob("any prompt", a, b) == pytest.approx(by_hand(a, b), abs=1e-12)
    assert raters.prob(None, texts[0], texts[1]) > 0.5  # positive, readable and short


def test_raters_judge_is_intransitive_on_a_hand_built_triple():
    # a: long, mildly positive, very easy to read; b: one negative word;
    # c: short, very positive, hard to read. a ≻ b ≻ c ≻ a, each by a majority of raters.
    a = "I see a cat. The cat is on a mat. It is a big cat. I like it. It is red. We sit."
    b = "Terrible."
    c = "Photosynthesis magnificently energizes extraordinary wonderful ecosystems."
    p = [raters.prob("", x, y) for x, y in ((a, b), (b, c), (c, a))]
    q = [raters.prob("", y, x) for x, y in ((a, b), (b, c), (c, a))]
    np.testing.assert_allclose(np.add(p, q), 1.0, atol=1e-12)
    assert min(p) > 0.53, p  # a cycle: no ranking of a, b, c agrees with all three


def test_cyclic_triples_matches_a_loop_over_triples():
    import itertools

    from selfplay.games.measures import cyclic_triples

    rng = np.random.default_rng(3)
    U = rng.choice([0.2, 0.5, 0.5, 0.9], size=(9, 9))
    P = np.triu(U, 1) + np.tril(1 - U.T, -1) + 0.5 * np.eye(9)  # P + Pᵀ = 1, some ties

    def beats(x, y):
        return P[x, y] > 0.5

    loop = sum(
        (beats(a, b) and beats(b, c) and beats(c, a))
        or (beats(b, a) and beats(c, b) and beats(a, c))
        for a, b, c in itertools.combinations(range(9), 3)
    )
    assert cyclic_triples(P) == (loop, 84) and loop > 0
    assert cyclic_triples(np.triu(np.ones((5, 5)), 1)) == (0, 10)  # a strict ranking
