"""What a learner is given once, at construction (`LearnerSettings`), and what one
`train_phase` reports (`PhaseMetrics`)."""

from __future__ import annotations

from dataclasses import dataclass

from selfplay.algos.names import FORMS

#: The forms the learner computes: pg needs the sampler's log-probs, which the runtime
#: does not ship (it is refused for every algorithm, `selfplay.algos.compat`), so it
#: stays in `selfplay.algos.losses` for the tabular study.
RUNTIME_FORMS = tuple(f for f in FORMS if f != "pg")


@dataclass(frozen=True)
class LearnerSettings:
    """Everything the learner needs besides a phase and its batch, given once at construction.

    AdamW: lr, betas, eps, weight_decay, grad_clip (None: no clipping).
    strategy:           data-parallel strategy, "ddp" or "fsdp2".
    loss:               the loss form of `selfplay.algos.losses.phase_loss`
                        (which forms a run may use: `selfplay.algos.compat`).
    normalize_logprobs: length-normalised sequence log-probs instead of summed.
    updates_per_phase:  full-batch AdamW steps per `train_phase`.
    micro_batch:        rows per forward (whole groups; a larger group goes alone).
    allowed_token_ids:  the policy is the LM restricted to these tokens (None: all), as
                        the sampler restricts generation (`Sampling.allowed_token_ids`):
                        log π(y_t | ·) = logit(y_t) − log Σ_{v ∈ allowed} exp logit(v).
                        For one-token responses this changes no log-prob difference, for
                        longer ones the normaliser depends on the prefix, so it matters.
    temperature:        the policy is softmax(logits / temperature), the distribution the
                        sampler draws opponents and evaluation responses from
                        (`rollout.temperature`): every log-prob the learner takes (policy,
                        anchor, μ, π_ref, evaluation scoring, KL) is of the tempered LM.
    threads:            torch intra-op threads of a learner rank's process (CPU).
    warmup_updates:     linear learning-rate warmup over the first N AdamW updates (0: none).
    checkpoint_activations: keep each transformer block's inputs only and recompute its
                        forward in the backward pass (`sharding.checkpoint_blocks`): less
                        memory per micro-batch, one more block forward per update.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    strategy: str = "ddp"
    loss: str = "regression"
    normalize_logprobs: bool = False
    updates_per_phase: int = 1
    micro_batch: int = 64
    allowed_token_ids: tuple[int, ...] | None = None
    temperature: float = 1.0
    threads: int = 1
    checkpoint_activations: bool = False
    warmup_updates: int = 0

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.loss not in RUNTIME_FORMS:
            raise ValueError(f"loss form must be one of {RUNTIME_FORMS}, got {self.loss!r}")
        if self.updates_per_phase < 1:
            raise ValueError(f"updates_per_phase must be >= 1, got {self.updates_per_phase}")
        if self.warmup_updates < 0:
            raise ValueError(f"warmup_updates must be >= 0, got {self.warmup_updates}")
        if self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {self.micro_batch}")
        if self.allowed_token_ids is not None and (
            not self.allowed_token_ids or min(self.allowed_token_ids) < 0
        ):
            raise ValueError(
                f"allowed_token_ids must be non-empty ids >= 0, got {self.allowed_token_ids}"
            )


@dataclass(frozen=True)
class PhaseMetrics:
    """Global (all-reduced) metrics of one `train_phase`.

    loss / loss_initial: mean pair loss at the last / first update (before its step).
    grad_norm:           total gradient norm of the last update, before clipping.
    kl_anchor, kl_ref:   k3 estimates on the batch rows of KL(π_anchor‖π_new) (how far
                         the phase moved) and KL(π_anchor‖π_ref), π_anchor the policy
                         the phase started from: the mean of (r − 1) − log r with
                         r = π_new(y)/π_anchor(y), resp. π_ref(y)/π_anchor(y). Unbiased
                         when the rows are drawn from π_anchor (the on-policy phases,
                         explore_temperature = temperature, no staleness); at step t
                         kl_ref is thus KL(π_t‖π_ref) of the policy that sampled the
                         batch. kl_ref is NaN without a "ref" role.
    """

    loss: float
    loss_initial: float
    grad_norm: float
    kl_anchor: float
    kl_ref: float
    tokens: int
    rows: int
    pairs: int
    updates: int
