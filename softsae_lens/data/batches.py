"""Rows of activations on disk served in batches: a seeded train/held-out split, the endless
shuffled ``data_provider`` SAELens's ``SAETrainer`` takes, ordered passes for evaluation, and a
scan for non-finite rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from softsae_lens.data.activations import ActivationRows, bad_argument

__all__ = ["ActivationBatches", "find_nonfinite_rows", "iter_row_batches", "split_rows"]


def split_rows(
    n_rows: int, eval_fraction: float, max_eval_rows: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n_rows)`` into (train, held-out) sorted index arrays.

    The held-out part has ``round(eval_fraction * n_rows)`` rows, at most ``max_eval_rows``.
    Rows are drawn from the whole array, not its tail, so data written in order (one
    document or class after another) is represented in both parts.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise bad_argument("eval_fraction", eval_fraction, "must be in [0, 1)")
    n_eval = round(eval_fraction * n_rows)
    if max_eval_rows is not None:
        if max_eval_rows < 0:
            raise bad_argument("max_eval_rows", max_eval_rows, "must be >= 0")
        n_eval = min(n_eval, max_eval_rows)
    if eval_fraction > 0 and n_eval == 0:
        raise bad_argument(
            "eval_fraction",
            eval_fraction,
            f"holds out no rows of {n_rows}; raise it to at least {1 / n_rows:.3g} or set it to 0",
        )
    order = np.random.default_rng(seed).permutation(n_rows)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def _checked(batch: torch.Tensor, rows: ActivationRows, indices: np.ndarray) -> torch.Tensor:
    finite = torch.isfinite(batch).all(dim=-1)
    if not bool(finite.all()):
        bad = int(indices[int((~finite).nonzero()[0])])
        raise ValueError(f"{rows.source}: row {bad} holds NaN or inf; activations must be finite")
    return batch


@dataclass
class ActivationBatches(Iterator[torch.Tensor]):
    """Endless shuffled ``[batch_size, d_in]`` batches over ``indices`` of ``rows``.

    Each pass visits every row once in a new seeded order; a batch may span the end of one
    pass and the start of the next, so every batch is full. Batches are converted to
    ``dtype`` on the CPU and checked for NaN/inf (a ValueError names the row).

    Attributes:
        rows: the activation source.
        indices: the rows to serve (for example the training part of :func:`split_rows`).
        batch_size: rows per batch; at most ``len(indices)``.
        seed: seed of the shuffling.
        dtype: dtype of the served batches.
    """

    rows: ActivationRows
    indices: np.ndarray
    batch_size: int
    seed: int = 0
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise bad_argument("batch_size", self.batch_size, "must be a positive integer")
        if self.batch_size > len(self.indices):
            raise bad_argument(
                "batch_size",
                self.batch_size,
                f"must be at most the {len(self.indices)} training rows of {self.rows.source}",
            )
        self._rng = np.random.default_rng(self.seed)
        self._new_pass()
        self._position = 0
        self.passes = 0

    def _new_pass(self) -> None:
        # The generator's state before drawing this pass's order: the order is redrawn from it
        # on resume instead of being stored (it has one entry per row).
        self._pass_rng_state = self._rng.bit_generator.state
        self._order = self._rng.permutation(self.indices)

    def state_dict(self) -> dict[str, Any]:
        """Where the iterator stands (JSON-ready): enough to continue with the same batches."""
        return {
            "n_indices": len(self.indices),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "passes": self.passes,
            "position": self._position,
            "pass_rng_state": self._pass_rng_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` of an iterator over the same rows and indices."""
        for name, value in (
            ("n_indices", len(self.indices)),
            ("batch_size", self.batch_size),
            ("seed", self.seed),
        ):
            if state.get(name) != value:
                raise bad_argument(
                    name,
                    value,
                    f"the saved data position was taken with {name}={state.get(name)}; they must match",
                )
        self._rng.bit_generator.state = state["pass_rng_state"]
        self._new_pass()
        self._position, self.passes = int(state["position"]), int(state["passes"])

    def __next__(self) -> torch.Tensor:
        take = self._order[self._position : self._position + self.batch_size]
        self._position += len(take)
        if len(take) < self.batch_size:
            self._new_pass()
            self.passes += 1
            self._position = self.batch_size - len(take)
            take = np.concatenate([take, self._order[: self._position]])
        # Sorted reads touch the file in order; row order inside a batch does not matter.
        take = np.sort(take)
        return _checked(self.rows.rows(take).to(self.dtype), self.rows, take)


def find_nonfinite_rows(
    rows: ActivationRows,
    indices: np.ndarray | None = None,
    batch_size: int = 4096,
    progress: bool = True,
    desc: str = "checking activations",
) -> np.ndarray:
    """The rows among ``indices`` (default: all) that hold NaN or inf, in one streaming pass
    (``batch_size`` rows at a time, a progress bar unless ``progress`` is False)."""
    from tqdm.auto import tqdm

    if indices is None:
        indices = np.arange(rows.n_rows)
    bad = []
    with tqdm(total=len(indices), desc=desc, unit="rows", disable=not progress) as bar:
        for start in range(0, len(indices), batch_size):
            take = indices[start : start + batch_size]
            finite = torch.isfinite(rows.rows(take)).all(dim=-1).numpy()
            if not finite.all():
                bad.append(take[~finite])
            bar.update(len(take))
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def iter_row_batches(
    rows: ActivationRows,
    indices: np.ndarray | None = None,
    batch_size: int = 4096,
    dtype: torch.dtype = torch.float32,
) -> Iterator[torch.Tensor]:
    """``rows`` at ``indices`` (default: all) in order, ``batch_size`` at a time, as ``dtype``."""
    if indices is None:
        indices = np.arange(rows.n_rows)
    for start in range(0, len(indices), batch_size):
        take = indices[start : start + batch_size]
        yield _checked(rows.rows(take).to(dtype), rows, take)
