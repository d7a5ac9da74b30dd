"""The multi-token runtime end to end on a real local Ray cluster: the tiny LM
converges on the sequence game.

For MPO, OMWU, Nash-MP and EGPO, `selfplay.runtime.driver.trainer.train` runs the
sequence game of conf/tests/converge_sequence.yaml (2 moves over 3 move tokens, 9
sequences, a full-support NE that is not uniform) from a visibly non-NE initial
policy. The exact last-iterate gap of the sequence policy (the product of the LM's
restricted conditionals, enumerated) must fall: the gap of the original game for
MPO and OMWU below 0.12 (from > 0.4), the β-regularized gap (μ = π_ref = π_0) for
Nash-MP and EGPO at least 10x and below 0.05, as tests/test_runtime_convergence.py
asks of the token game.

Oracles, independent of the runtime's evaluation code: the NE is x*, the vector the
matrix was built around ((P − ½)x* = 0 by construction, see the conf), checked as
the null vector of P − ½ and against the LP solver; gaps are recomputed in plain
numpy from the policies the run reports (tests/helpers.py). A non-uniform NE makes
the sequence order matter: a policy reported in another order than the judge's
rows would not converge to x*.

Per-algorithm settings were picked by simulating the tabular dynamics with sampled
payoffs from five LM initial policies, then confirmed on the LM for several run
seeds (ALGO_SETTINGS). With max_staleness 0 a run is bitwise reproducible on one
machine; another CPU's rounding gives another random stream, so the caps are set from
the spread over run seeds (tests/test_runtime_convergence.py has the arithmetic): the
gap of MPO, seeds 0-2, is 0.023 ± 0.006 (RMS s = 0.0235) and linear in the payoff
noise, so 0.05 is exceeded with probability up to P(|Z| > 0.05/s) = 3% (noise along
one direction), 0.12 with P(|Z| > 5.1) = 3e-7 (OMWU is tighter, 0.025-0.028, RMS
0.027: P(|Z| > 4.5) = 7e-6 at worst, but its spread, 0.0015, puts 0.12 60 sd above
its mean: a floor, not noise). The regularized gaps
sit at a floor with a small spread (Nash-MP 0.0025-0.0031, EGPO 0.0006-0.0009), far
below start/10 ≥ 0.01.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import oracle_gap, oracle_regularized_gap

from selfplay import games
from selfplay.config import load_config
from selfplay.runtime.driver.trainer import train

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "tests" / "converge_sequence.yaml"
MATRIX = ROOT / "conf" / "tests" / "weighted_rps9.csv"
NASH = np.array([0.14, 0.09, 0.12, 0.10, 0.13, 0.095, 0.115, 0.085, 0.125])

# algorithm -> (overrides on top of converge_sequence.yaml, which gap must converge).
ALGO_SETTINGS = {
    # OMWU: η·λ ≈ 0.35 at the NE (λ ≈ 0.07); its last iterate is the noisiest, so it
    # gets 8192 opponent draws per step. Seeds 0-2: 0.028, 0.025, 0.027.
    "omwu": (["algo.eta=5", "runtime.steps=50", "rollout.opponents_k=1024"], "gap"),
    # MPO: α just below the rotation rates, ηα = 1, magnet every 4 steps.
    # Seeds 0-2: 0.019, 0.020, 0.030.
    "mpo": (
        ["algo.alpha=0.06", "algo.eta=16.7", "algo.magnet_every=4", "runtime.steps=40"],
        "gap",
    ),
    # Nash-MP (η = 2, β = 0.1); small batches and one rollout worker suffice.
    # Seeds 0-2: 0.0025, 0.0030, 0.0031.
    "nash-mp": (
        ["runtime.steps=12", "rollout.workers=1", "rollout.opponents_k=256"],
        "regularized_gap",
    ),
    # EGPO with η = 2.5 (its default 5/3 would make it Nash-MP's coefficients).
    # Seeds 0-2: 0.0009, 0.0009, 0.0006.
    "egpo": (
        ["algo.eta=2.5", "runtime.steps=10", "rollout.workers=1", "rollout.opponents_k=128"],
        "regularized_gap",
    ),
}


def test_game_has_the_constructed_full_support_nash():
    P = games.load(MATRIX)
    _, s, vt = np.linalg.svd(P - 0.5)
    assert s[-1] < 1e-12 * s[0] and s[-2] > 1e-2  # a one-dimensional kernel: unique NE
    kernel = vt[-1] / vt[-1].sum()
    np.testing.assert_allclose(kernel, NASH, atol=1e-12)
    np.testing.assert_allclose(games.solve_nash(P), NASH, atol=1e-7)
    assert oracle_gap(P, NASH) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("algo", list(ALGO_SETTINGS))
def test_last_iterate_converges(cluster, tmp_path, algo):
    overrides, which = ALGO_SETTINGS[algo]
    cfg = load_config(
        CONF,
        [
            f"algo.name={algo}",
            f"task.matrix={MATRIX}",
            f"output_dir={tmp_path}",
            "tracking.enabled=false",
            *overrides,
        ],
    )
    result = train(cfg, progress=False)
    s, hist = result.summary, result.history
    P = games.load(MATRIX)
    pi0, pi = np.array(hist[0]["policy"]), np.array(s["policy"])
    assert len(hist) == cfg.runtime.steps + 1 and s["steps"] == cfg.runtime.steps
    assert s["sequences"] == [f"m{i} m{j}" for i in range(3) for j in range(3)]
    assert pi.shape == (9,) and pi.sum() == pytest.approx(1.0) and pi0.sum() == pytest.approx(1.0)
    assert s["reference_policy"] == pytest.approx(pi0.tolist(), abs=1e-12)
    # The start is visibly not an equilibrium.
    assert np.abs(pi0 - NASH).max() > 0.3
    if which == "gap":
        start, end = oracle_gap(P, pi0), oracle_gap(P, pi)
        assert s["regularized_gap"] is None and s["beta"] is None
        assert start > 0.4
    else:
        beta = s["beta"]
        assert beta == pytest.approx(0.1)
        start = oracle_regularized_gap(P, pi0, beta, pi0)
        end = oracle_regularized_gap(P, pi, beta, pi0)
        assert start > 0.1
    # The run's own evaluation agrees with the oracle ...
    assert s[f"{which}_initial"] == pytest.approx(start, abs=1e-6)
    assert s[which] == pytest.approx(end, abs=1e-6)
    # ... and the last iterate converged.
    if which == "gap":
        assert end < 0.12, f"{algo}: {which} {start:.4f} -> {end:.4f}"
    else:
        assert end <= start / 10, f"{algo}: {which} {start:.4f} -> {end:.4f}"
        assert end < 0.05, f"{algo}: {which} {start:.4f} -> {end:.4f}"
