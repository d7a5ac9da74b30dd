"""selfplay: Nash learning from human feedback on Ray.

Kept import-light on purpose: `selfplay --help` must not import torch or ray.
"""

__version__ = "0.1.0"
