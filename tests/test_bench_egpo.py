"""`selfplay bench games`: the EGPO authors' setting (quality of the regularized defaults)."""

from __future__ import annotations

import numpy as np
import torch

from selfplay import algos, games
from selfplay.bench import games as bench_games


def test_egpo_setting_reports_every_regularized_algorithm() -> None:
    r = bench_games.egpo_setting(iterations=30, count=2)
    names = [a["algo"] for a in r["algos"]]
    assert names == [a for a in algos.NAMES if algos.get(a).objective == "regularized"]
    theirs = {a["algo"]: a["authors_median"] for a in r["algos"]}
    assert theirs["nash-mp"] is None and all(theirs[a] > 0 for a in ("egpo", "online-ipo"))
    assert r["authors_eta"] == 4 * 0.02 / (10 * 0.01)
    assert "authors" in bench_games.format_egpo(r)


def test_authors_omd_is_online_ipo_at_their_step() -> None:
    """Their OMD step is our online-IPO update with η = 4·lr/(nβ) (egpo.py mapping)."""
    P = torch.as_tensor(np.stack([games.generate("uniform", 6, s) for s in range(3)]))
    mu = torch.as_tensor(np.random.default_rng(1).dirichlet(np.ones(6), 3))
    theirs = bench_games._authors_run("omd", P, mu, 0.1, 0.7, 40)
    h = algos.Hyper(eta=0.7, beta=0.1)
    ours = algos.run("online-ipo", P, hyper=h, iterations=40, mu=mu, init=mu, record_every=40)
    assert torch.allclose(ours.regularized_gap[-1], theirs, atol=1e-15, rtol=1e-10)
    assert (theirs > 1e-6).all()  # not yet converged: the comparison is not vacuous
