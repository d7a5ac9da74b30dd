"""One learner rank: the trainable policy, its optimizer, and frozen role weights.

Each phase of a step plan (`selfplay.algos.plan.Phase`) regresses the policy
onto the closed-form update (docs/algorithms.md#llm-loss-forms)

    log π_θ(y) − log π_θ(y')  ≈  a·Δ log π_anchor + b·Δ log μ + c·Δ ĝ

over pairs (y, y') of responses to the same prompt, with the loss from
`selfplay.algos.losses.phase_loss` in the form of `LearnerSettings.loss`
(regression or ipo; the pg form, which needs the sampler's log-probs, is tabular-only).
Which forms a run may use: `selfplay.algos.compat`. What this class adds is the
bookkeeping:

- Anchor and μ log-probs are RECOMPUTED here from the stored role weights
  (never the sampler's log-probs): the minimiser is the closed-form update only
  if the anchor is exact, while the behaviour policy may be stale.
- Roles ("main", "lead", "prev", "magnet", "ref") are frozen copies of this
  rank's parameter storage (the local shards under FSDP2), optionally with the
  AdamW state. `start_phase` loads the anchor's weights and optimizer state, so
  EGPO / Nash-MP phase 2 restarts from θ_t exactly; `train_phase` stores its
  result (weights + optimizer state) under `phase.output`.
- Under LoRA (`selfplay.models.lora`) the trained parameters, and so every role, the
  optimizer state and each published version, are the adapter's tensors only; "ref" is
  the base model with the adapter switched off, never stored (`exchange.py`).
- Each tensor is held once. The role the model was last trained into (or
  snapshotted as) is *live*: the model's own parameters and AdamW state are that
  role, copied only when the model is about to move away from it (a phase with
  another output, another anchor loaded). Frozen roles are never written in place,
  so `copy_role` of a stored role shares its tensors, and copies carry no
  optimizer state (every plan's anchor is "main", which is never a copy). Scoring
  under a role swaps its tensors into the model (`_weights`) instead of copying.
- Exact normalisation under sharding: per-pair losses are summed
  (reduction="sum") and divided by the all-reduced global pair count, so one
  shard and N shards take the same step (see `sharding.py`).

Dropout: the model is kept in eval mode. Train-mode dropout would make anchor
log-probs noisy and the 1-vs-N-shard update non-reproducible.
Role weights hold parameters only; persistent buffers are never trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from selfplay.algos.losses import k3_kl, phase_loss
from selfplay.algos.plan import Phase
from selfplay.models.lora import is_base, is_lora, trained_parameters
from selfplay.models.weights import FlatWeights
from selfplay.runtime.learner import sharding
from selfplay.runtime.learner.batch import Micro, TrainBatch, micro_batches
from selfplay.runtime.learner.exchange import REF, Exchange
from selfplay.runtime.learner.scoring import Scoring
from selfplay.runtime.learner.settings import LearnerSettings, PhaseMetrics
from selfplay.runtime.learner.sharding import DistContext
from selfplay.runtime.learner.state import (
    RoleWeights,
    clone_optim,
    fixed_mmap_threshold,
)


class Learner(Scoring, Exchange):
    """One learner rank. Under FSDP2 with world > 1 every public method except
    `set_role` bookkeeping is a collective: call it on all ranks in the same order."""

    def __init__(
        self,
        model_fn: Callable[[], torch.nn.Module],
        config: LearnerSettings = LearnerSettings(),
        *,
        rank: int = 0,
        world_size: int = 1,
        init_method: str | None = None,
        backend: str | None = None,
        device: str | None = None,
    ) -> None:
        self.config = config
        self.ctx = DistContext.create(
            rank, world_size, config.strategy, init_method, backend, device
        )
        fixed_mmap_threshold()
        model, allowed = model_fn().eval(), config.allowed_token_ids
        vocab = model.get_output_embeddings().weight.shape[0]
        if allowed is not None and max(allowed) >= vocab:
            raise ValueError(
                f"allowed token ids {max(allowed)} outside the vocabulary [0, {vocab})"
            )
        ids = None if allowed is None else sorted(set(allowed))
        self._allowed = None if ids is None else torch.tensor(ids, device=self.ctx.device)
        if config.checkpoint_activations:
            sharding.checkpoint_blocks(model)  # before FSDP2 wraps the blocks
        self.model = sharding.prepare_model(model, self.ctx)
        # What is trained, stored per role and published: every parameter, or under
        # LoRA the adapter's (peft freezes the base).
        self._lora = is_lora(self.model)
        trained = trained_parameters(self.model)
        self._names = [n for n, _ in trained]
        self._params = [p for _, p in trained]
        self.opt = torch.optim.AdamW(
            self._params,
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            foreach=False,  # per-parameter temporaries, not a whole-model copy per op
        )
        self._roles: dict[str, RoleWeights] = {}
        self._live: str | None = None  # the role the model's parameters and AdamW state are
        self._live_copy: list[torch.Tensor] | None = None  # a frozen copy of its weights
        self._holds: str | None = None  # the role `start_phase` loaded, until the model changes
        self.snapshot("main")

    # ----------------------------------------------------------------- roles
    @property
    def roles(self) -> tuple[str, ...]:
        live = (self._live,) if self._live is not None and self._live not in self._roles else ()
        base = (REF,) if self._lora else ()  # the base model, never stored
        return (*self._roles, *live, *base)

    def set_role(self, role: str, weights: FlatWeights | Mapping[str, torch.Tensor]) -> None:
        """Store full weights (a FlatWeights or state dict) as `role`, without optimizer state."""
        sd = weights.to_state_dict() if isinstance(weights, FlatWeights) else weights
        missing = [n for n in self._names if n not in sd]
        if missing:
            raise ValueError(f"weights for role {role!r} lack parameters {missing[:3]}")
        if self._lora and role == REF:
            self._check_base([(n, torch.as_tensor(sd[n])) for n in self._names])
            return
        params = []
        for n, p in zip(self._names, self._params, strict=True):
            full = torch.as_tensor(sd[n]).to(device=self.ctx.device, dtype=p.dtype)
            if tuple(full.shape) != tuple(p.shape):
                raise ValueError(
                    f"role {role!r}: {n} has shape {tuple(full.shape)}, model has {tuple(p.shape)}"
                )
            params.append(sharding.local_of_full(full, p).clone())
        if role == self._live:
            self._live, self._live_copy = None, None
        if role == self._holds:
            self._holds = None  # the role's weights are new, the model's are not
        self._roles[role] = RoleWeights(params=params)

    def snapshot(self, role: str) -> None:
        """The current weights AND optimizer state become `role` (held by the model
        itself until it moves on: see `_keep_live`)."""
        self._roles.pop(role, None)
        self._live, self._live_copy = role, None

    def copy_role(self, dst: str, src: str) -> None:
        """`dst` := `src`'s weights, without optimizer state: shared tensors for a stored
        role (frozen), a copy of the model's weights for the live one."""
        if dst == src:
            return
        if self._lora and dst == REF:
            with self._weights(src):
                self._check_base(
                    [(n, sharding.local(p)) for n, p in zip(self._names, self._params, strict=True)]
                )
            return
        if src != self._live:
            r = RoleWeights(params=list(self._role(src).params))
        self._roles.pop(dst, None)  # the old copy goes first: never two at once
        if dst == self._holds:
            self._holds = None
        if src == self._live:
            if self._live_copy is None:
                self._live_copy = self._local_params()
            r = RoleWeights(params=list(self._live_copy))
        if dst == self._live:
            self._live, self._live_copy = None, None
        self._roles[dst] = r

    def _check_base(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Under LoRA π_ref is the base model: it can only be given weights equal to it."""
        if not is_base(named):
            raise ValueError("under LoRA the ref role is the base model; these weights move it")

    def _keep_live(self) -> None:
        """Copy the live role (weights and AdamW state) out of the model before the model
        changes; afterwards no role is live."""
        if self._live is not None:
            params = self._live_copy or self._local_params()
            self._roles[self._live] = RoleWeights(params, self._optim_state())
        self._live, self._live_copy = None, None

    def start_phase(self, phase: Phase | str) -> None:
        """Load the anchor role's weights, and its optimizer state if it has one."""
        name = phase if isinstance(phase, str) else phase.anchor
        self._holds = name
        if name == self._live:
            return  # the model already is the anchor, optimizer state included
        r = self._role(name)
        self._keep_live()
        self._load_params(r.params)
        if r.optim is not None:
            self.opt.state.clear()
            for i, st in clone_optim(r.optim).items():
                self.opt.state[self._params[i]] = st

    # -------------------------------------------------------------- training
    def train_phase(self, phase: Phase, batch: TrainBatch) -> PhaseMetrics:
        """`updates_per_phase` full-batch AdamW steps on this rank's shard of the phase
        loss (in the settings' loss form).

        The model should already hold the anchor (call `start_phase`); anchor and μ
        log-probs come from the stored role weights. Stores the result as phase.output.
        """
        cfg = self.config
        form, norm, updates = cfg.loss, cfg.normalize_logprobs, cfg.updates_per_phase
        mbs = micro_batches(batch, cfg.micro_batch, self.ctx.device)
        steps = self.ctx.all_reduce_max(len(mbs))
        m_global, rows, tokens = self.ctx.all_reduce_sum(
            [sum(len(mb.pairs) for mb in mbs), len(batch), float(batch.response_mask.sum())]
        )
        denom = m_global  # pair losses average over the global pair count
        if denom == 0:
            raise ValueError("train batch has no pairs: every group holds a single response")
        # The model holds the anchor (`start_phase`): its log-probs are the first update's
        # forward, detached, not one more forward pass.
        held = phase.anchor in (self._live, self._holds)
        anchor = None if held else self._role_logprobs(phase.anchor, mbs, steps, norm)
        mu = self._role_logprobs(phase.mu, mbs, steps, norm) if phase.mu else None
        if self._live != phase.output:
            self._keep_live()  # the model leaves a role the phase does not replace
        self._live_copy, self._holds = None, None  # the model changes now
        losses, gnorm = [], 0.0
        for _ in range(updates):
            loss, gnorm, anchor = self._update(phase, form, mbs, steps, anchor, mu, denom, norm)
            losses.append(loss)
        self.opt.zero_grad(set_to_none=True)  # gradients are not held between phases
        new = self._role_logprobs(None, mbs, steps, norm)
        has_ref = phase.mu == "ref" or "ref" in self.roles
        if phase.mu == "ref":
            ref = mu
        else:
            ref = self._role_logprobs("ref", mbs, steps, norm) if has_ref else None
        # On the rows, drawn from the policy before the update (the anchor, for the
        # on-policy phases): after a large update π_new is far off-policy for them, and
        # k3 with r = π_ref/π_new then has unbounded variance.
        kl_a, kl_r = self.ctx.all_reduce_sum([k3_kl(anchor, new), k3_kl(anchor, ref)])
        self.snapshot(phase.output)
        return PhaseMetrics(
            loss=losses[-1],
            loss_initial=losses[0],
            grad_norm=gnorm,
            kl_anchor=kl_a / rows,
            kl_ref=kl_r / rows if has_ref else math.nan,
            tokens=int(tokens),
            rows=int(rows),
            pairs=int(m_global),
            updates=updates,
        )

    def _update(
        self,
        phase: Phase,
        form: str,
        mbs: list[Micro],
        steps: int,
        anchor: list[torch.Tensor] | None,
        mu: list[torch.Tensor] | None,
        denom: float,
        normalize: bool,
    ) -> tuple[float, float, list[torch.Tensor]]:
        """One optimizer step; returns (global mean loss, pre-clip grad norm, the anchor's
        log-probs). anchor None: the model holds the anchor, whose log-probs are this
        forward's, detached (the first update of a phase)."""
        self.opt.zero_grad(set_to_none=True)
        local_loss = 0.0
        taken: list[torch.Tensor] = []
        for i in range(steps):
            if i >= len(mbs):
                self._dummy_forward(grad=True)
                continue
            mb = mbs[i]
            logp = self._seq_logprobs(mb, normalize)
            taken.append(logp.detach() if anchor is None else anchor[i])
            loss = (
                phase_loss(
                    phase,
                    form,
                    logp,
                    taken[i],
                    None if mu is None else mu[i],
                    mb.g,
                    mb.pairs,
                    reduction="sum",
                )
                / denom
            )
            loss.backward()
            local_loss += float(loss.detach())
        sharding.sum_grads(self._params, self.ctx)
        clip = self.config.grad_clip if self.config.grad_clip else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self._params, clip)
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
        self._warm_up()
        self.opt.step()
        (loss_sum,) = self.ctx.all_reduce_sum([local_loss])
        return loss_sum, float(gnorm), taken

    def _warm_up(self) -> None:
        """lr_t = lr · min(1, t / warmup_updates) at the t-th AdamW update (t from 1), t read
        from AdamW's own step count, so a restored role or a resumed run continues its
        schedule (arXiv:1706.02677's linear warmup; AdamW's first updates move every
        weight by about lr whatever its gradient, so the first ones are kept small)."""
        n = self.config.warmup_updates
        if not n:
            return
        st = self.opt.state.get(self._params[0], {})
        t = int(st["step"]) + 1 if "step" in st else 1
        for group in self.opt.param_groups:
            group["lr"] = self.config.lr * min(1.0, t / n)

    def close(self) -> None:
        self.ctx.close()

    def _role(self, role: str) -> RoleWeights:
        if role not in self._roles:
            raise KeyError(f"learner has no role {role!r} (has {sorted(self._roles)})")
        return self._roles[role]
