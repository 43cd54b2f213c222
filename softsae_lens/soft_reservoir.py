"""A fixed-size uniform sample of training rows (reservoir sampling) whose only state is the
buffer of rows itself.

Which slots hold rows, and which rows a batch writes, follow from the number of rows seen before
that batch (the step index times the batch size), and the draws are seeded by that count: a run
resumed from a checkpoint holding the buffer keeps exactly the rows an uninterrupted one would.
A slot set to NaN holds no row (a buffer that started after the run did).
"""

from __future__ import annotations

import torch

__all__ = ["keep_rows", "held_rows"]


@torch.no_grad()
def keep_rows(kept: torch.Tensor, rows: torch.Tensor, seen: int) -> None:
    """Fold ``rows`` (``[..., d]``) into ``kept`` (``[size, d]``, in place) after ``seen`` rows:
    Vitter's algorithm R, a batch at a time, so that every row seen so far is held with
    probability ``size / rows seen``."""
    rows = rows.detach().reshape(-1, rows.shape[-1]).to(kept.device, kept.dtype)
    size = kept.shape[0]
    free = min(max(size - seen, 0), rows.shape[0])
    kept[seen : seen + free] = rows[:free]
    rest = rows[free:]
    if rest.shape[0]:
        generator = torch.Generator(device=kept.device).manual_seed(seen)
        index = seen + free + torch.arange(rest.shape[0], device=kept.device)
        draw = torch.rand(rest.shape[0], generator=generator, device=kept.device)
        slot = (draw * (index + 1)).long()
        chosen = slot < size
        kept[slot[chosen]] = rest[chosen]


def held_rows(kept: torch.Tensor, seen: int) -> torch.Tensor:
    """Per slot of ``kept`` after ``seen`` rows, 1.0 where it holds a row: a float mask, not an
    index, so no data-dependent shape and no device sync."""
    filled = torch.arange(kept.shape[0], device=kept.device) < seen
    return (filled & ~kept.isnan().any(-1)).float()
