"""The algorithms' CLI names, written once: the config's type and the registry's keys."""

from typing import Literal, get_args

AlgoName = Literal["mpo", "nash-mp", "omwu", "egpo", "nash-md", "online-ipo", "sppo", "mwu"]
NAMES: tuple[str, ...] = get_args(AlgoName)
