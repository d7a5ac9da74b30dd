"""Policy weights as one contiguous byte buffer, for moving versions between actors.

`FlatWeights` is a single numpy uint8 buffer plus a table of
(name, dtype, shape, offset). Ray stores a numpy array zero-copy in its
object store, so one `ray.put(flat)` / `ray.get(ref)` moves a whole policy as
one object without pickling tensors one by one, and the reader's tensors are
views into the shared buffer (no copy on CPU).

Every tensor keeps its own dtype (bfloat16 included: it is stored as raw bytes,
numpy has no bfloat16). Offsets are aligned to `ALIGN` bytes so each view is
aligned for its dtype. Tied tensors (one storage under two names, e.g. tied
embeddings) are stored once; both entries point at the same bytes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

ALIGN = 64


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "float32", "bfloat16"
    shape: tuple[int, ...]
    offset: int  # byte offset into FlatWeights.buffer
    nbytes: int


@dataclass
class FlatWeights:
    """buffer: [nbytes] uint8, read-only is fine; entries in state-dict order."""

    buffer: np.ndarray
    entries: tuple[TensorEntry, ...]

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def tensor(self, entry: TensorEntry) -> torch.Tensor:
        """A CPU tensor viewing the buffer (no copy). Do not write to it."""
        raw = self.buffer[entry.offset : entry.offset + entry.nbytes]
        with warnings.catch_warnings():
            # Buffers from the Ray object store are read-only; we only read them.
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(raw)
        return t.view(getattr(torch, entry.dtype)).reshape(entry.shape)

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for e in self.entries:
            yield e.name, self.tensor(e)

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.named_tensors())


def _state_dict(
    model_or_sd: torch.nn.Module | Mapping[str, torch.Tensor],
) -> Mapping[str, torch.Tensor]:
    return model_or_sd.state_dict() if isinstance(model_or_sd, torch.nn.Module) else model_or_sd


def flatten_state_dict(model_or_sd: torch.nn.Module | Mapping[str, torch.Tensor]) -> FlatWeights:
    """Copy every tensor of the state dict into one aligned buffer (one copy, any device)."""
    sd = _state_dict(model_or_sd)
    entries: list[TensorEntry] = []
    offset = 0
    shared: dict[tuple, int] = {}  # tied tensors (same storage) are stored once
    for name, t in sd.items():
        nbytes = t.numel() * t.element_size()
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        at = shared.get(key) if nbytes else None
        entries.append(
            TensorEntry(
                name,
                str(t.dtype).removeprefix("torch."),
                tuple(t.shape),
                offset if at is None else at,
                nbytes,
            )
        )
        if at is None:
            shared[key] = offset
            offset += -(-nbytes // ALIGN) * ALIGN
    buffer = np.zeros(offset, dtype=np.uint8)
    out = torch.from_numpy(buffer)
    written: set[int] = set()
    for e, t in zip(entries, sd.values(), strict=True):
        if e.nbytes and e.offset not in written:
            written.add(e.offset)
            src = t.detach().contiguous().reshape(-1).view(torch.uint8)
            out[e.offset : e.offset + e.nbytes].copy_(src)
    return FlatWeights(buffer=buffer, entries=tuple(entries))


def load_flat(model: torch.nn.Module, flat: FlatWeights) -> None:
    """Copy `flat` into `model` in place (names and shapes must match exactly)."""
    sd = flat.to_state_dict()
    own = model.state_dict()
    if set(sd) != set(own):
        missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        raise ValueError(
            f"weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, t in sd.items():
            own[name].copy_(t)
