"""The algorithms' CLI names and the loss forms, written once: the config's types, the
registry's keys, the losses' forms."""

from typing import Literal, get_args

AlgoName = Literal["mpo", "nash-mp", "omwu", "egpo", "nash-md", "online-ipo", "sppo", "mwu"]
NAMES: tuple[str, ...] = get_args(AlgoName)

#: The LLM loss forms (docs/algorithms.md#llm-loss-forms): the config's type, the losses'.
LossForm = Literal["regression", "ipo", "pg"]
FORMS: tuple[str, ...] = get_args(LossForm)
