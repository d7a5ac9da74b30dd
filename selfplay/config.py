"""Typed run configuration: pydantic models, YAML files and dotted overrides.

    selfplay train conf/quickstart.yaml algo.name=omwu runtime.steps=40

Every default is defined here, once. Unknown keys and bad values are
`InputError`s naming the key, so the CLI prints one line and exits 2.
Config files are data: values are parsed with `yaml.safe_load`, nothing is
evaluated or imported by string. No float anywhere may be NaN or ±inf (one rule,
`allow_inf_nan=False` on every section), seeds are in [0, 2**32), and β must be
> 0 for the algorithms that divide by it or stand still without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    NonNegativeFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from selfplay.algos.names import AlgoName, LossForm
from selfplay.config_runtime import (  # noqa: F401  (re-exported)
    AutoscaleConfig,
    EvalConfig,
    RuntimeConfig,
    TrackingConfig,
)
from selfplay.config_tasks import (  # noqa: F401  (re-exported)
    SEED_MAX,
    TASK_KINDS,
    PromptsTask,
    Seed,
    SequenceGameTask,
    TaskConfig,
    TokenGameTask,
)
from selfplay.config_tasks import (
    Strict as _Strict,
)
from selfplay.errors import InputError

#: Algorithms that need β > 0: Nash-MD's default step is η = 0.01/β, SPPO's is 1/β,
#: online IPO's default η = 4β/(1 + 4β²) is 0 at β = 0 (the policy never moves).
#: Nash-MP and EGPO at β = 0 are mirror prox / extragradient on the original game.
BETA_POSITIVE = ("nash-md", "online-ipo", "sppo")


class AlgoConfig(_Strict):
    """Algorithm and its hyperparameters; None means the algorithm's own default."""

    name: AlgoName = "mpo"
    eta: float | None = Field(None, gt=0)
    beta: float | None = Field(None, ge=0)
    alpha: float | None = Field(None, gt=0)
    magnet_every: int | None = Field(None, ge=1)
    loss: LossForm = "regression"
    normalize_logprobs: bool = False

    @field_validator("beta")
    @classmethod
    def _beta(cls, beta: float | None, info: ValidationInfo) -> float | None:
        name = info.data.get("name")
        if beta is not None and beta <= 0 and name in BETA_POSITIVE:
            raise ValueError(f"{name} needs beta > 0, got {beta:g}")
        return beta


class TinyModelConfig(_Strict):
    hidden: int = Field(32, ge=4)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    seed: Seed = 0
    init_std: float = Field(0.02, gt=0)


class LoraConfig(_Strict):
    """Train a LoRA adapter instead of the whole model (`selfplay.models.lora`): π_ref is
    the base with the adapter off, every other role and version an adapter."""

    r: int = Field(16, ge=1, description="the adapter's rank")
    alpha: float | None = Field(
        None, gt=0, description="scale numerator: the update is alpha/r·BA (None: 2·r)"
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="module-name suffixes to adapt (q_proj, ...), or every linear layer "
        "but the output",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("name at least one module, or 'all-linear'")
        return v


class ModelConfig(_Strict):
    """`name: tiny` builds a random-init model from `tiny`; anything else is an HF path, hub
    name, `.gguf` file or LoRA adapter directory (`selfplay.models.load`)."""

    name: str = "tiny"
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None


class RolloutConfig(_Strict):
    backend: Literal["hf", "vllm"] = "hf"
    max_new_tokens: int = Field(
        64, ge=1, description="response length limit (text tasks; the games fix their own)"
    )
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k cut")
    stop: list[str] = Field(
        default_factory=list, description="stop strings (text tasks); a stop is not truncation"
    )
    truncated: Literal["lose", "keep"] = Field(
        "lose",
        description="lose: a truncated response loses to a finished one and ties another "
        "truncated one; keep: judged like any other",
    )
    save: Literal["every", "none"] = Field(
        "every", description="write RUN_DIR/rollouts/step-NNNNNN.parquet every step, or never"
    )
    workers: int = Field(1, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    k: int = Field(4, ge=2, description="responses sampled per prompt")
    opponents_k: int = Field(4, ge=1, description="opponent samples per prompt and opponent")
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature of the policy (opponents)"
    )
    explore_temperature: float = Field(
        1.0, gt=0, description="temperature of the trained-on responses (behaviour policy)"
    )
    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="custom Ray resources per worker, e.g. {rollout: 1}"
    )
    join_wait_s: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="how long a resize waits for new workers to start (0: they join "
        "at a later phase boundary, training never stalls)",
    )
    autoscale: AutoscaleConfig | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: list[str]) -> list[str]:
        empty = [i for i, x in enumerate(stop) if not x]
        if empty:  # an empty stop string would end every response at once
            raise ValueError(f"stop strings must be non-empty; item {empty[0]} is ''")
        return stop


class JudgeConfig(_Strict):
    """The preference servers: which preference model they serve, how they are sized,
    and their failure policy. `kind` None: the task's own (the games' matrix)."""

    kind: Literal["reward", "pairwise", "llm", "function"] | None = None
    model: str | None = Field(
        None, description="the judge model's directory, hub name or .gguf file"
    )
    function: str | None = Field(
        None,
        description="judge.kind=function: path/to/file.py:name or package.module:name "
        "(selfplay.judges.function)",
    )
    returns: Literal["score", "prob"] = Field(
        "score",
        description="what the function returns: score, fn(prompt, response) -> s with "
        "P = σ((s_a − s_b)/tau); prob, fn(prompt, a, b) -> P(a ≻ b)",
    )
    tau: float = Field(1.0, gt=0, description="the score function's Bradley–Terry temperature")
    template: str | None = Field(
        None, description="pairwise / llm judge prompt with {prompt}, {a}, {b}"
    )
    servers: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)
    num_cpus: float = Field(0.25, gt=0)
    retries: int = Field(
        2,
        ge=0,
        description="retries of a failed judge call (exception, "
        "timeout, NaN or a value outside [0, 1])",
    )
    timeout_s: float = Field(
        120.0, gt=0, le=86400, description="one judge call's time limit (at most a day)"
    )
    on_failure: Literal["raise", "mask"] = Field(
        "raise",
        description="after the retries: fail the run with a clear error, or mask "
        "the failed comparisons (counted and logged, never trained on)",
    )

    @field_validator("template")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        from selfplay.judges.template import template_problem  # no torch: config stays light

        why = None if template is None else template_problem(template)
        if why is not None:
            raise ValueError(why)
        return template


class LearnerConfig(_Strict):
    shards: int = Field(1, ge=1)
    strategy: Literal["ddp", "fsdp2"] = "ddp"
    lr: float = Field(0.05, gt=0)
    updates_per_phase: int = Field(8, ge=1)
    micro_batch: int = Field(64, ge=1)
    grad_clip: float = Field(1.0, gt=0)
    num_cpus: float = Field(0.5, gt=0)
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch threads per learner rank: 1 lets the actors share the CPUs; "
        "more where the learner dominates a synchronous step (conf/real_quickstart.yaml)",
    )
    warmup_updates: int = Field(
        0, ge=0, description="linear lr warmup over the first N AdamW updates (0: none)"
    )
    checkpoint_activations: bool = Field(
        False,
        description="recompute each transformer block's forward in the backward pass: "
        "less memory per micro-batch, one more forward per update",
    )
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description="custom Ray resources per shard, e.g. {learner: 1}"
    )


class Config(_Strict):
    seed: Seed = 0
    output_dir: str = "runs"
    algo: AlgoConfig = AlgoConfig()
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TokenGameTask()
    rollout: RolloutConfig = RolloutConfig()
    judge: JudgeConfig = JudgeConfig()
    learner: LearnerConfig = LearnerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.rollout.backend == "vllm" and self.algo.name == "nash-md":
            raise ValueError(
                "rollout.backend=vllm cannot sample Nash-MD's mixture policy; use rollout.backend=hf"
            )
        if self.rollout.backend == "vllm" and self.model.name.lower().endswith(".gguf"):
            raise ValueError(
                "rollout.backend=vllm does not load a .gguf model.name; write it as safetensors "
                "first: selfplay demo real --gguf FILE --out DIR"
            )
        kind, judge = self.task.kind, self.judge.kind
        if kind == "prompts":
            if judge is None:
                raise ValueError(
                    "task.kind=prompts needs a text judge: judge.kind reward, pairwise, llm "
                    "or function"
                )
            if self.model.name == "tiny":
                raise ValueError(
                    "task.kind=prompts needs model.name: a model directory or hub name "
                    "(`selfplay demo text` writes a tiny one)"
                )
        elif judge is not None:
            raise ValueError(f"task.kind={kind} is judged by its matrix; leave judge.kind unset")
        if judge in ("reward", "pairwise", "llm") and not self.judge.model:
            raise ValueError(f"judge.kind={judge} needs judge.model (a directory or hub name)")
        if judge == "function" and not self.judge.function:
            raise ValueError(
                "judge.kind=function needs judge.function (path/to/file.py:name or module:name)"
            )
        return self

    @model_validator(mode="after")
    def _loss_fits_algorithm(self) -> Config:
        from selfplay.algos.compat import check_config  # the (algorithm, loss) rule

        check_config(self)
        return self


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise InputError(f"override {key}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise InputError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def _format_error(e: ValidationError) -> str:
    err = e.errors()[0]
    parts = [str(x) for x in err["loc"]]
    if parts[:1] == ["task"] and parts[1:2] and parts[1] in TASK_KINDS:
        del parts[1]  # the union's tag: task.prompts.dataset reads task.dataset
    loc = ".".join(parts)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "union_tag_invalid":
        parts.append("kind")
        loc = ".".join(parts)
        msg = f"unknown kind {err['ctx']['tag']!r}; expected one of {', '.join(TASK_KINDS)}"
    elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
        msg = str(err["ctx"]["error"])  # a validator's own sentence, without "Value error, "
    extra = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"config: {loc}: {msg}{extra}" if loc else f"config: {msg}{extra}"


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or start from defaults when path is None), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError(f"config {p}: not a YAML file (not UTF-8 text)") from None
        except OSError as e:
            raise InputError(f"config {p}: cannot read it ({e.strerror or e})") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise InputError(f"config {p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise InputError(f"config {p}: top level must be a mapping")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise InputError(_format_error(e)) from None


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def check_training(cfg: Config) -> None:
    """What only training refuses (evaluation allows it), as one-line `InputError`s.

    top-p / top-k: the learner's policy is the full-support tempered LM
    softmax(logits / rollout.temperature); cut opponents and behaviour draws would make
    ĝ the payoff against another policy than the one trained, and drop the support the
    importance weights need."""
    from selfplay.errors import InputError

    r = cfg.rollout
    if r.top_p < 1.0 or r.top_k > 0:
        raise InputError(
            f"rollout.top_p={r.top_p:g} / rollout.top_k={r.top_k}: training samples the full "
            "tempered policy (top_p=1, top_k=0); use rollout.temperature, and cuts only when "
            "evaluating (docs/algorithms.md#temperature-and-cuts)"
        )
