"""Typed task sections of the run configuration, and the strict base every section uses.

`config.py` assembles them; this module holds what a task needs so that `config.py`
stays one screenful per section. See `config.py` for the rules every section follows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

#: What numpy's and torch's generators accept, whatever consumes the seed.
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class Strict(BaseModel):
    # allow_inf_nan=False: every float field of every section refuses NaN and ±inf
    # (and values like 1e400 that parse to inf).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class _GameTask(Strict):
    """A matrix game: `matrix` (.npy/.csv) wins over `generate`, `n`, `seed`."""

    matrix: str | None = None
    generate: Literal["uniform", "bt-cyclic", "rps", "transitive"] = "rps"
    n: int = Field(3, ge=2, le=64)
    seed: Seed = 0


class TokenGameTask(_GameTask):
    """The token game: one prompt, the response is one of n move tokens."""

    kind: Literal["token_game"] = "token_game"


class SequenceGameTask(_GameTask):
    """The sequence game: a response is `length` tokens over `alphabet` move tokens,
    then EOS; the matrix is over all alphabet**length sequences (lexicographic order,
    first token most significant), so `n` must equal alphabet**length."""

    kind: Literal["sequence_game"] = "sequence_game"
    alphabet: int = Field(3, ge=2, le=16)
    length: int = Field(2, ge=1, le=4)
    n: int = Field(9, ge=2, le=256)

    @model_validator(mode="after")
    def _size(self) -> SequenceGameTask:
        if self.matrix is None and self.n != self.alphabet**self.length:
            raise ValueError(
                f"n={self.n} must equal alphabet**length = {self.alphabet}**{self.length}"
                f" = {self.alphabet**self.length}"
            )
        return self


class PromptsTask(Strict):
    """Prompts from a dataset (`datasets`): a local .jsonl/.json/.csv/.parquet file,
    a `save_to_disk` directory, or a hub name."""

    kind: Literal["prompts"] = "prompts"
    dataset: str
    split: str = "train"
    prompt_column: str = "prompt"
    eval_split: str | None = None
    eval_fraction: float = Field(0.0, ge=0, lt=1)
    max_prompt_tokens: int = Field(512, ge=1)
    shuffle: bool = True
    chat_template: bool = Field(
        False, description="wrap a string prompt as one user message in the chat template"
    )
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_eval_source(self) -> PromptsTask:
        if self.eval_split is not None and self.eval_fraction > 0:
            raise ValueError("give task.eval_split or task.eval_fraction, not both")
        return self


TASK_KINDS = ("token_game", "sequence_game", "prompts")


def _task_kind(v: Any) -> str:
    """The union's tag: `kind`, token_game when a task section leaves it out."""
    return v.get("kind", "token_game") if isinstance(v, dict) else getattr(v, "kind", "")


TaskConfig = Annotated[
    Annotated[TokenGameTask, Tag("token_game")]
    | Annotated[SequenceGameTask, Tag("sequence_game")]
    | Annotated[PromptsTask, Tag("prompts")],
    Discriminator(_task_kind),
]
