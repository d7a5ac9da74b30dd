"""Judging a phase's samples: ĝ(y) from pairwise preferences, with bounded retries.

For each trained response y_i to prompt x, and each opponent source s of the
phase (weight w_s), the judge compares y_i with the M opponent responses
y''_{s,1..M} drawn for the same prompt from s:

    ĝ(y_i) = Σ_s w_s · (1/M) Σ_m P(y_i ≻ y''_{s,m} | x)   (docs/algorithms.md)

Opponents are always a separate draw, never the other members of y_i's own
group: with leave-one-out opponents, E[ĝ_i − ĝ_j | y_i, y_j] picks up a
(2P(y_i≻y_j) − 1)/(K−1) term and the regression target is biased. With a
shared opponent set per prompt, E[ĝ_i − ĝ_j | y_i, y_j] = q(y_i) − q(y_j) exactly.

Truncated responses (`rollout.truncated`, handed to the judge actor once). With
"lose", a truncated response (max_new_tokens reached without eos or a stop string,
`Samples.truncated`) loses every comparison against a finished one and ties another
truncated one, whatever the judge would say:

    P(y ≻ y') = 0 if y truncated, y' finished;  1 if y finished, y' truncated;
                ½ if both truncated;            the judge's P otherwise,

so P(y ≻ y') + P(y' ≻ y) = 1 still holds and the game stays constant-sum (unlike
subtracting a penalty from a score). Decided pairs are not sent to the judge (and
never fail). With "keep", every pair goes to the judge. Samples without a
`truncated` record count as finished.

Judge failures (never trained on). A judge call fails as a whole when it
raises, takes longer than `JudgePolicy.timeout_s`, or returns the wrong shape;
a single comparison fails when its value is NaN, ±inf or outside [0, 1]. Each
call is retried up to `retries` times, re-sending only the comparisons still
failing. Whatever still fails after that either fails the run (`RunError`,
on_failure="raise") or is masked (on_failure="mask"):

    ĝ(y_i) = Σ_s w_s · (1/|V_{i,s}|) Σ_{m ∈ V_{i,s}} P(y_i ≻ y''_{s,m} | x)

where V_{i,s} are the opponents of source s whose comparison with y_i is
valid. The opponents are iid draws, so the mean over any subset chosen
independently of their content is still an unbiased estimate of
q_s(y_i) = E_{y''~s} P(y_i ≻ y''). Deviation: if a judge fails *because of*
the content (say, NaN on long responses), masking conditions on that and
biases ĝ; the masked counts are reported so such a run can be noticed. A row
with V_{i,s} = ∅ for some source has no estimate at all: its ĝ is NaN and
`keep[i]` is False, and `to_train_batch` drops it. The rest of its prompt
group is kept (a group left with one row contributes no pairs).

Timeouts run the judge call in a fresh daemon thread per attempt and stop
waiting after `timeout_s`. Python cannot kill a thread: a hung call keeps
running in the background (holding its memory, and possibly running
alongside the retry on the same judge), and is simply abandoned; being a
daemon thread, it does not keep the process alive at exit.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

import numpy as np

from selfplay.errors import RunError
from selfplay.judges.base import Judge
from selfplay.runtime.learner.batch import TrainBatch, build_train_batch, concat_batches
from selfplay.types import Samples

log = logging.getLogger(__name__)
ON_FAILURE = ("raise", "mask")
TRUNCATED = ("lose", "keep")


@dataclass(frozen=True)
class JudgePolicy:
    """How judge failures are handled (mirrors `JudgeConfig`'s retries / timeout_s / on_failure)."""

    retries: int = 2
    timeout_s: float = 120.0
    on_failure: str = "raise"

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"JudgePolicy.retries must be >= 0, got {self.retries}")
        if not self.timeout_s > 0:
            raise ValueError(f"JudgePolicy.timeout_s must be > 0, got {self.timeout_s}")
        if self.on_failure not in ON_FAILURE:
            raise ValueError(
                f"JudgePolicy.on_failure must be one of {ON_FAILURE}, got {self.on_failure!r}"
            )


@dataclass
class Judged:
    """A judged rollout chunk: the samples (all rows), ĝ per row and the judging counts.

    keep:          [N] bool, False on rows dropped for lack of any valid
                   comparison against some source (their ĝ is NaN); None = all kept.
    masked_pairs:  comparisons masked after the retries (dropped rows' included).
    masked_rows:   rows dropped (= N − keep.sum()).
    judge_retries: judge calls re-sent after a failure.
    queries:       comparisons sent to the judge, retries included.
    opponent_lengths, opponent_truncated: [M_total] response lengths and truncation
                   flags of every opponent sample judged against (all sources), for
                   the per-step logs; only the judge actor sees the opponents.
    """

    samples: Samples
    g: np.ndarray  # [N] float64
    queries: int
    judge_s: float
    keep: np.ndarray | None = None
    masked_pairs: int = 0
    masked_rows: int = 0
    judge_retries: int = 0
    opponent_lengths: np.ndarray | None = None
    opponent_truncated: np.ndarray | None = None
    rows: object = None  # pyarrow Table of the chunk's rollout rows, when asked for


def truncation_rule(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n] P(a ≻ b) fixed by truncation (a, b: truncated flags), NaN where the judge decides."""
    p = np.full(a.shape, np.nan)
    p[a & ~b], p[~a & b], p[a & b] = 0.0, 1.0, 0.5
    return p


@dataclass
class Estimate:
    """What `estimate_g` returns; field meanings as in `Judged`."""

    g: np.ndarray  # [N] float64, NaN where not keep
    keep: np.ndarray  # [N] bool
    queries: int
    masked_pairs: int
    masked_rows: int
    judge_retries: int


@dataclass
class PairResult:
    """One logical judge call after its retries.

    p: [n] float64 preferences, NaN where failed; ok: [n] bool valid.
    calls: judge calls made (1 + retries used); sent: comparisons sent in all.
    reasons: failure reason -> number of comparisons whose last failure it was.
    """

    p: np.ndarray
    ok: np.ndarray
    calls: int
    sent: int
    reasons: dict[str, int]


class _CallFailed(Exception):
    """A whole judge call failed (exception, timeout, shape); the message is the reason."""


def _call_with_timeout(
    judge: Judge, args: tuple[list[str], list[str], list[str]], timeout_s: float
) -> np.ndarray:
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = judge.prob(*args)
        except BaseException as e:  # noqa: BLE001 - reported to the caller, then retried
            box["error"] = e

    # A fresh daemon thread per attempt: a hung one is abandoned (see module docstring).
    t = threading.Thread(target=target, name="judge-call", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise _CallFailed(f"timeout after {timeout_s:g}s")
    if "error" in box:
        e = box["error"]
        text = " ".join(str(e).split())[:120]
        raise _CallFailed(
            f"exception {type(e).__name__}: {text}" if text else f"exception {type(e).__name__}"
        )
    p = np.asarray(box["value"], dtype=np.float64)
    if p.shape != (len(args[0]),):
        raise _CallFailed(f"wrong shape {p.shape} for {len(args[0])} comparisons")
    return p


def _pair_reasons(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n] bool valid, [n] object reason: None where valid, else why not)."""
    good = np.isfinite(p) & (p >= 0) & (p <= 1)
    why = np.full(p.shape, None, dtype=object)
    why[np.isnan(p)] = "NaN"
    why[np.isinf(p)] = "inf"
    why[np.isfinite(p) & ~good] = "outside [0, 1]"
    return good, why


def call_judge(
    judge: Judge, prompts: list[str], a: list[str], b: list[str], policy: JudgePolicy
) -> PairResult:
    """judge.prob on all rows, retrying the failed ones up to policy.retries times."""
    n = len(prompts)
    p = np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    reason = np.full(n, None, dtype=object)
    calls = sent = 0
    pending = np.arange(n)
    while len(pending) and calls <= policy.retries:
        args = ([prompts[i] for i in pending], _take(a, pending), _take(b, pending))
        calls, sent = calls + 1, sent + len(pending)
        try:
            got = _call_with_timeout(judge, args, policy.timeout_s)
        except _CallFailed as e:
            reason[pending] = str(e)
        else:
            good, reason[pending] = _pair_reasons(got)
            p[pending[good]], ok[pending[good]] = got[good], True
            pending = pending[~good]
        if len(pending):
            log.warning(
                "judge call %d failed on %d of %d comparisons: %s",
                calls,
                len(pending),
                n,
                ", ".join(sorted(set(reason[pending]))),
            )
    return PairResult(
        p=p, ok=ok, calls=calls, sent=sent, reasons=dict(Counter(reason[~ok].tolist()))
    )


def _take(seq, idx: np.ndarray):
    """seq[idx] of a list (of texts) or an array (of a game judge's rows)."""
    if isinstance(seq, np.ndarray):
        return seq[idx]
    return [seq[i] for i in idx]


def responses(judge: Judge, samples: Samples):
    """What `judge` compares: the decoded texts, or where the worker sent token ids
    only (`Samples.texts` None) the judge's rows of them (`GameJudge.token_rows`)."""
    if samples.texts is not None:
        return samples.texts
    if not hasattr(judge, "token_rows"):
        raise ValueError(f"{type(judge).__name__} reads texts, and the samples carry none")
    return judge.token_rows(samples.tokens, samples.lengths)


def _failure_message(res: PairResult, policy: JudgePolicy) -> str:
    kinds = "; ".join(
        f"{r}: {c}" if len(res.reasons) > 1 else r for r, c in sorted(res.reasons.items())
    )
    return (
        f"judge failed on {int((~res.ok).sum())} of {len(res.ok)} comparisons after "
        f"{policy.retries} retries ({kinds}); raise judge.retries or judge.timeout_s, "
        f"or set judge.on_failure=mask to mask them"
    )


def estimate_g(
    judge: Judge,
    samples: Samples,
    opponents: list[tuple[Samples, float]],
    policy: JudgePolicy = JudgePolicy(),
    truncated: str = "lose",
) -> Estimate:
    """ĝ [N] for `samples` against each (opponent samples, weight), masking per `policy`;
    `truncated` ("lose" | "keep"): the rule for truncated responses (module docstring).

    Raises RunError (on_failure="raise") when a comparison still fails after the retries.
    """
    if truncated not in TRUNCATED:
        raise ValueError(f"truncated must be one of {TRUNCATED}, got {truncated!r}")
    n, k = len(samples), samples.k
    trunc = samples.truncated_flags()
    mine = responses(judge, samples)
    g = np.zeros(n, dtype=np.float64)
    keep = np.ones(n, dtype=bool)
    queries = masked = retries = 0
    for opp, w in opponents:
        if not np.array_equal(opp.prompt_ids, samples.prompt_ids):
            raise ValueError("opponent samples must answer the same prompts, in order")
        m = opp.k
        # rows (i, j): trained response i against every opponent j of the same prompt
        ii = np.repeat(np.arange(n), m)
        jj = (ii // k) * m + np.tile(np.arange(m), n)
        p = np.full(len(ii), np.nan)
        if truncated == "lose":
            p = truncation_rule(trunc[ii], opp.truncated_flags()[jj])
        ask = np.flatnonzero(np.isnan(p))  # the pairs the judge decides
        res = call_judge(
            judge,
            [samples.prompt_texts[ii[r] // k] for r in ask],
            _take(mine, ii[ask]),
            _take(responses(judge, opp), jj[ask]),
            policy,
        )
        queries, retries = queries + res.sent, retries + max(res.calls - 1, 0)
        if not res.ok.all() and policy.on_failure == "raise":
            raise RunError(_failure_message(res, policy))
        masked += int((~res.ok).sum())
        p[ask] = res.p
        ok = np.ones(len(ii), dtype=bool)
        ok[ask] = res.ok
        ok = ok.reshape(n, m)
        valid = ok.sum(axis=1)
        # Mean over the valid opponents only (unbiased: the opponents are iid draws).
        mean = np.where(ok, p.reshape(n, m), 0.0).sum(axis=1) / np.maximum(valid, 1)
        g += float(w) * mean
        keep &= valid > 0
    g[~keep] = np.nan
    return Estimate(
        g=g,
        keep=keep,
        queries=queries,
        masked_pairs=masked,
        masked_rows=int((~keep).sum()),
        judge_retries=retries,
    )


@dataclass
class Compared:
    """What `compare_pairs` returns: p [n] P(a_r ≻ b_r), NaN where masked; the counts
    as in `Judged`."""

    p: np.ndarray
    queries: int
    masked_pairs: int
    judge_retries: int


def compare_pairs(
    judge: Judge,
    a: Samples,
    b: Samples,
    policy: JudgePolicy = JudgePolicy(),
    truncated: str = "lose",
) -> Compared:
    """P(a_r ≻ b_r | x_r) for each row r of two samples of the same prompts (row r of
    `a` and row r of `b` answer prompt r // k; `a.k == b.k`): the truncation rule
    decides what it can (`truncated`, as in `estimate_g`), the judge the rest, with
    `policy`'s retries; a comparison still failing is NaN (on_failure="mask") or a
    `RunError` (on_failure="raise"). For evaluation: the rows are sample pairs."""
    if truncated not in TRUNCATED:
        raise ValueError(f"truncated must be one of {TRUNCATED}, got {truncated!r}")
    if len(a) != len(b) or a.k != b.k or not np.array_equal(a.prompt_ids, b.prompt_ids):
        raise ValueError("compared samples must answer the same prompts, row for row")
    n = len(a)
    p = np.full(n, np.nan)
    if truncated == "lose":
        p = truncation_rule(a.truncated_flags(), b.truncated_flags())
    ask = np.flatnonzero(np.isnan(p))
    res = call_judge(
        judge,
        [a.prompt_texts[r // a.k] for r in ask],
        _take(responses(judge, a), ask),
        _take(responses(judge, b), ask),
        policy,
    )
    if not res.ok.all() and policy.on_failure == "raise":
        raise RunError(_failure_message(res, policy))
    p[ask] = np.where(res.ok, res.p, np.nan)
    return Compared(
        p=p,
        queries=res.sent,
        masked_pairs=int((~res.ok).sum()),
        judge_retries=max(res.calls - 1, 0),
    )


def to_train_batch(chunks: list[Judged], pad_id: int | None = None) -> TrainBatch:
    """Concatenate judged chunks into one TrainBatch (group ids renumbered disjoint).

    Rows a chunk does not keep (no valid comparison) are dropped here.
    """
    batches = []
    for c in chunks:
        s = c.samples
        if s.prompt_tokens is None:
            raise ValueError("Samples.prompt_tokens is missing (set by the rollout worker)")
        b = build_train_batch(s, s.prompt_tokens, c.g, pad_id=pad_id)
        if c.keep is not None and not np.all(c.keep):
            b = b.take(np.flatnonzero(c.keep))
        batches.append(b)
    return concat_batches(batches)
