"""Streaming per-latent statistics: one pass over the activations, nothing kept per token x latent.

Holds :class:`LatentCollector`. Each :meth:`LatentCollector.update` takes one batch of SAE
activations ``[batch, pos, d_sae]`` and folds it into fixed-size state:

* for every latent: how many counted tokens it fires on (activation > 0), the sum and maximum of
  its activations and, for an SAE that predicts its own k, the sum of ``k_hat`` where it fires;
* for the tracked latents (all, or a chosen few): the top-``n_top`` activations with the window
  of that latent's activations around each (a top-k heap, merged batch by batch with
  ``torch.topk``), a uniform random sample of ``n_random`` firing positions (the same merge on
  random keys: a reservoir) with their windows, and a histogram of nonzero activations on
  fixed log-spaced bins (1% wide), re-binned linearly once the maximum is known.

Per token it keeps only the token id, its row, its position in the row, ``k_hat`` and whether it
was excluded (special tokens): a few bytes, so contexts can be rebuilt afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LatentCollector", "LOG_BIN_RANGE", "state_bytes"]

# Log-spaced histogram bins for nonzero activations: 10**-4 .. 10**5, 256 bins a decade (~0.9%).
LOG_BIN_RANGE = (-4.0, 5.0)
_BINS_PER_DECADE = 256


def _n_log_bins() -> int:
    return int((LOG_BIN_RANGE[1] - LOG_BIN_RANGE[0]) * _BINS_PER_DECADE)


def state_bytes(
    d_sae: int, n_tracked: int, n_top: int, n_random: int, window: int, n_tokens: int
) -> int:
    """Bytes :class:`LatentCollector` holds at the end of a stream of ``n_tokens`` tokens."""
    per_latent = 8 * 4  # count, sums, max, k_hat sum
    heaps = n_tracked * (n_top + n_random) * (4 + 8 + 4 + 4 * window)
    hist = n_tracked * _n_log_bins() * 4
    per_token = n_tokens * (8 + 4 + 4 + 4 + 4 + 1)
    return d_sae * per_latent + heaps + hist + per_token


@dataclass
class Heap:
    """Up to ``size`` entries per tracked latent, best key first: ``key`` orders them, ``value``
    is the activation, ``index`` the global token index (-1: empty slot) and ``window`` the
    latent's activations at offsets ``-before .. +after`` around it (NaN outside its row)."""

    key: torch.Tensor  # [n_tracked, size] float32
    value: torch.Tensor  # [n_tracked, size] float32
    index: torch.Tensor  # [n_tracked, size] int64
    window: torch.Tensor  # [n_tracked, size, width] float32

    @classmethod
    def empty(cls, n: int, size: int, width: int) -> Heap:
        return cls(
            key=torch.full((n, size), -math.inf),
            value=torch.zeros(n, size),
            index=torch.full((n, size), -1, dtype=torch.long),
            window=torch.full((n, size, width), math.nan),
        )

    def merge_rows(
        self,
        rows: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        index: torch.Tensor,
        window: torch.Tensor,
    ) -> None:
        """Merge ``[len(rows), k]`` new entries into heap rows ``rows``, keeping the best
        ``size`` of old and new by key, best first."""
        size = self.key.shape[1]
        all_key = torch.cat([self.key[rows], key], dim=1)
        best = all_key.topk(size, dim=1).indices
        self.key[rows] = all_key.gather(1, best)
        self.value[rows] = torch.cat([self.value[rows], value], dim=1).gather(1, best)
        self.index[rows] = torch.cat([self.index[rows], index], dim=1).gather(1, best)
        all_win = torch.cat([self.window[rows], window], dim=1)
        self.window[rows] = all_win.gather(1, best.unsqueeze(-1).expand(-1, -1, self.width))

    @property
    def width(self) -> int:
        return self.window.shape[-1]


class LatentCollector:
    """Per-latent statistics of an SAE over a stream of token batches (see the module docstring).

    Args:
        d_sae: number of latents.
        tracked: indices of the latents whose contexts and histograms are kept (default all).
        n_top: top activating positions kept per tracked latent.
        n_random: random firing positions kept per tracked latent (for lower-activation samples).
        before, after: window of tokens kept around each kept position.
        seed: seed of the random sample.
    """

    def __init__(
        self,
        d_sae: int,
        tracked: torch.Tensor | None = None,
        *,
        n_top: int = 20,
        n_random: int = 40,
        before: int = 10,
        after: int = 4,
        seed: int = 0,
    ) -> None:
        self.d_sae = d_sae
        self.tracked = (
            torch.arange(d_sae) if tracked is None else torch.as_tensor(tracked, dtype=torch.long)
        )
        self.before, self.after = before, after
        self.width = before + after + 1
        n = len(self.tracked)
        # latent -> its row among the tracked ones (-1: not tracked)
        self._row_of = torch.full((d_sae,), -1, dtype=torch.long)
        self._row_of[self.tracked] = torch.arange(n)
        self.n_tokens = 0  # counted (not excluded) tokens
        self.n_positions = 0  # every position streamed, excluded ones included
        self.n_rows = 0
        self.count = torch.zeros(d_sae, dtype=torch.long)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.act_max = torch.zeros(d_sae)
        self.k_hat_sum_fired = torch.zeros(d_sae, dtype=torch.float64)
        self.k_hat_sum = 0.0
        self.has_k_hat = False
        self.top = Heap.empty(n, n_top, self.width)
        self.random = Heap.empty(n, n_random, self.width)
        self.hist = torch.zeros(n, _n_log_bins(), dtype=torch.int32)
        self.generator = torch.Generator().manual_seed(seed)
        self._tokens: list[torch.Tensor] = []
        self._row: list[torch.Tensor] = []
        self._pos: list[torch.Tensor] = []
        self._row_len: list[torch.Tensor] = []
        self._k_hat: list[torch.Tensor] = []
        self._excluded: list[torch.Tensor] = []

    @torch.no_grad()
    def update(
        self,
        tokens: torch.Tensor,
        acts: torch.Tensor,
        k_hat: torch.Tensor | None = None,
        excluded: torch.Tensor | None = None,
    ) -> None:
        """Fold one batch in: ``tokens`` ``[batch, pos]``, ``acts`` ``[batch, pos, d_sae]``,
        ``k_hat`` ``[batch, pos]`` (SAEs that predict k), ``excluded`` ``[batch, pos]`` (positions
        left out of every statistic and never chosen as a context, e.g. special tokens).

        Works on the nonzero activations only (an SAE's are sparse): per-latent sums with
        ``index_add``, and each heap merged only for the latents with a candidate that beats the
        heap's current minimum."""
        batch, n_pos = tokens.shape
        n = batch * n_pos
        acts = acts.detach().float().reshape(n, self.d_sae).cpu()
        keep = (
            torch.ones(n, dtype=torch.bool)
            if excluded is None
            else ~excluded.reshape(n).bool().cpu()
        )
        if excluded is not None:
            acts = acts * keep.unsqueeze(1)  # excluded positions never fire
        pos, lat = (acts > 0).nonzero(as_tuple=True)
        vals = acts[pos, lat]
        self.count += torch.bincount(lat, minlength=self.d_sae)
        self.act_sum.index_add_(0, lat, vals.double())
        self.act_max.scatter_reduce_(0, lat, vals, reduce="amax")
        k_flat = None
        if k_hat is not None:
            self.has_k_hat = True
            k_flat = k_hat.detach().float().reshape(n).cpu()
            self.k_hat_sum += float((k_flat * keep).sum(dtype=torch.float64))
            self.k_hat_sum_fired.index_add_(0, lat, k_flat[pos].double())

        row = self._row_of[lat]
        mine = row >= 0
        pos, lat, row, vals = pos[mine], lat[mine], row[mine], vals[mine]
        self._histogram(row, vals)
        base = self.n_positions
        beats = vals > self.top.key[:, -1][row]
        self._merge(
            self.top,
            acts,
            row[beats],
            lat[beats],
            pos[beats],
            vals[beats],
            vals[beats],
            base,
            n_pos,
        )
        if self.random.key.shape[1]:
            keys = torch.rand(vals.shape, generator=self.generator)
            beats = keys > self.random.key[:, -1][row]
            self._merge(
                self.random,
                acts,
                row[beats],
                lat[beats],
                pos[beats],
                vals[beats],
                keys[beats],
                base,
                n_pos,
            )

        self._tokens.append(tokens.detach().reshape(n).to(torch.int64).cpu())
        self._row.append(
            (torch.arange(batch) + self.n_rows).repeat_interleave(n_pos).to(torch.int32)
        )
        self._pos.append(torch.arange(n_pos, dtype=torch.int32).repeat(batch))
        self._row_len.append(torch.full((n,), n_pos, dtype=torch.int32))
        self._excluded.append(~keep)
        if k_flat is not None:
            self._k_hat.append(k_flat)
        self.n_tokens += int(keep.sum())
        self.n_positions += n
        self.n_rows += batch

    def _merge(
        self,
        heap: Heap,
        acts: torch.Tensor,
        row: torch.Tensor,
        lat: torch.Tensor,
        pos: torch.Tensor,
        value: torch.Tensor,
        key: torch.Tensor,
        base: int,
        n_pos: int,
    ) -> None:
        """Merge candidate entries (tracked row, latent, flat position, value, key) into
        ``heap``: the best ``size`` candidates of each affected row, then a top-k merge of those
        rows with what the heap holds."""
        if row.numel() == 0:
            return
        size = heap.key.shape[1]
        affected, local = torch.unique(row, return_inverse=True)
        # Group the candidates by row, best key first, and rank them within their row.
        order = torch.argsort(key, descending=True, stable=True)
        order = order[torch.argsort(local[order], stable=True)]
        local_sorted = local[order]
        counts = torch.bincount(local_sorted, minlength=len(affected))
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order)) - starts[local_sorted]
        keep = rank < size
        order, local_sorted, rank = order[keep], local_sorted[keep], rank[keep]
        shape = (len(affected), size)
        new_key = torch.full(shape, -math.inf)
        new_val = torch.zeros(shape)
        new_idx = torch.full(shape, -1, dtype=torch.long)
        new_win = torch.full((*shape, self.width), math.nan)
        new_key[local_sorted, rank] = key[order]
        new_val[local_sorted, rank] = value[order]
        new_idx[local_sorted, rank] = pos[order] + base
        new_win[local_sorted, rank] = self._windows(acts, pos[order], lat[order], n_pos)
        heap.merge_rows(affected, new_key, new_val, new_idx, new_win)

    def _histogram(self, row: torch.Tensor, values: torch.Tensor) -> None:
        if row.numel() == 0:
            return
        n_bins = self.hist.shape[1]
        lo = LOG_BIN_RANGE[0]
        bins = ((values.log10() - lo) * _BINS_PER_DECADE).floor().long().clamp(0, n_bins - 1)
        flat = row * n_bins + bins
        self.hist.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))

    def _windows(
        self, acts: torch.Tensor, pos: torch.Tensor, lat: torch.Tensor, n_pos: int
    ) -> torch.Tensor:
        """Latent ``lat``'s activations at offsets ``-before..after`` around flat batch position
        ``pos`` (``acts`` is ``[n, d_sae]``), NaN where the window leaves the row."""
        offsets = torch.arange(-self.before, self.after + 1)
        in_row = (pos % n_pos).unsqueeze(-1) + offsets
        inside = (in_row >= 0) & (in_row < n_pos)
        flat = (pos - pos % n_pos).unsqueeze(-1) + in_row.clamp(0, n_pos - 1)
        win = acts[flat, lat.unsqueeze(-1).expand_as(flat)]
        return torch.where(inside, win, math.nan)

    # ------------------------------------------------------------ after the stream

    def finish(self) -> dict[str, torch.Tensor]:
        """The per-token arrays, concatenated: ``tokens``, ``row``, ``pos``, ``row_len``,
        ``excluded`` and (SAEs that predict k) ``k_hat``."""
        out = {
            "tokens": torch.cat(self._tokens),
            "row": torch.cat(self._row),
            "pos": torch.cat(self._pos),
            "row_len": torch.cat(self._row_len),
            "excluded": torch.cat(self._excluded),
        }
        if self._k_hat:
            out["k_hat"] = torch.cat(self._k_hat)
        return out

    def density(self) -> torch.Tensor:
        """Fraction of counted tokens each latent fires on (activation > 0), ``[d_sae]``."""
        return self.count.double() / max(self.n_tokens, 1)

    def mean_k_hat(self) -> float | None:
        """Mean ``k_hat`` over the counted tokens (None for SAEs without k_hat)."""
        return self.k_hat_sum / max(self.n_tokens, 1) if self.has_k_hat else None

    def mean_k_hat_fired(self) -> torch.Tensor | None:
        """Per latent, mean ``k_hat`` of the tokens it fires on (NaN for dead latents)."""
        if not self.has_k_hat:
            return None
        return self.k_hat_sum_fired / self.count.double()

    def histogram(self, row: int, n_bins: int = 40) -> tuple[list[float], list[int], float]:
        """The nonzero activations of tracked latent number ``row`` on ``n_bins`` equal-width
        bins from the smallest to the largest nonzero value: (bin centres, counts, bin width).

        Re-binned from the log-spaced bins (each log bin's count goes to the linear bin holding
        its geometric centre), so counts near a bin edge may land one bin off.
        """
        counts = self.hist[row]
        nz = counts.nonzero().flatten()
        if nz.numel() == 0:
            return [], [], 0.0
        lo_edge = LOG_BIN_RANGE[0]
        centres = 10 ** (lo_edge + (torch.arange(len(counts)).double() + 0.5) / _BINS_PER_DECADE)
        vmax = float(self.act_max[self.tracked[row]])
        vmin = float(10 ** (lo_edge + nz[0].item() / _BINS_PER_DECADE))
        vmin = min(vmin, vmax)
        width = (vmax - vmin) / n_bins if vmax > vmin else 1.0
        which = ((centres - vmin) / width).floor().long().clamp(0, n_bins - 1)
        heights = torch.zeros(n_bins, dtype=torch.long).index_add_(0, which, counts.long())
        mids = [vmin + (i + 0.5) * width for i in range(n_bins)]
        return mids, heights.tolist(), width

    def count_between(self, row: int, lo: float, hi: float) -> int:
        """Nonzero activations of tracked latent ``row`` in ``[lo, hi]`` (from the log bins)."""
        counts = self.hist[row]
        centres = 10 ** (
            LOG_BIN_RANGE[0] + (torch.arange(len(counts)).double() + 0.5) / _BINS_PER_DECADE
        )
        inside = (centres >= lo) & (centres <= hi)
        return int(counts[inside].sum())
