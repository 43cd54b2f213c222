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
was excluded (special tokens): a few bytes, so contexts can be rebuilt afterwards. Must not depend
on models, files or pages.
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

    def merge(self, key: torch.Tensor, value: torch.Tensor, index: torch.Tensor, window) -> None:
        size = self.key.shape[1]
        all_key = torch.cat([self.key, key], dim=1)
        best = all_key.topk(min(size, all_key.shape[1]), dim=1).indices
        self.key = all_key.gather(1, best)
        self.value = torch.cat([self.value, value], dim=1).gather(1, best)
        self.index = torch.cat([self.index, index], dim=1).gather(1, best)
        all_win = torch.cat([self.window, window], dim=1)
        self.window = all_win.gather(1, best.unsqueeze(-1).expand(-1, -1, all_win.shape[-1]))


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
        left out of every statistic and never chosen as a context, e.g. special tokens)."""
        batch, n_pos = tokens.shape
        n = batch * n_pos
        acts = acts.detach().float().reshape(n, self.d_sae).cpu()
        keep = (
            torch.ones(n, dtype=torch.bool)
            if excluded is None
            else ~excluded.reshape(n).bool().cpu()
        )
        acts = acts * keep.unsqueeze(1)  # excluded positions never fire
        fired = acts > 0
        self.count += fired.sum(0)
        self.act_sum += acts.clamp(min=0).sum(0, dtype=torch.float64)
        self.act_max = torch.maximum(self.act_max, acts.max(0).values)
        k_flat = None
        if k_hat is not None:
            self.has_k_hat = True
            k_flat = k_hat.detach().float().reshape(n).cpu()
            k_kept = k_flat * keep
            self.k_hat_sum += float(k_kept.sum(dtype=torch.float64))
            self.k_hat_sum_fired += (fired.T.float() @ k_kept).double()

        base = self.n_positions
        sub = acts[:, self.tracked].T.contiguous()  # [n_tracked, n]
        self._histogram(sub)
        size = min(self.top.key.shape[1], n)
        val, idx = sub.topk(size, dim=1)
        self.top.merge(
            torch.where(val > 0, val, -math.inf),
            val,
            torch.where(val > 0, idx + base, -1),
            self._windows(sub, idx, n_pos),
        )
        if self.random.key.shape[1]:
            keys = torch.rand(sub.shape, generator=self.generator)
            keys = torch.where(sub > 0, keys, -math.inf)
            rk, ridx = keys.topk(min(self.random.key.shape[1], n), dim=1)
            self.random.merge(
                rk,
                sub.gather(1, ridx),
                torch.where(rk > -math.inf, ridx + base, -1),
                self._windows(sub, ridx, n_pos),
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

    def _histogram(self, sub: torch.Tensor) -> None:
        rows, cols = (sub > 0).nonzero(as_tuple=True)
        if rows.numel() == 0:
            return
        values = sub[rows, cols]
        n_bins = self.hist.shape[1]
        lo = LOG_BIN_RANGE[0]
        bins = ((values.log10() - lo) * _BINS_PER_DECADE).floor().long().clamp(0, n_bins - 1)
        flat = rows * n_bins + bins
        counts = torch.bincount(flat, minlength=self.hist.numel())
        self.hist += counts.view_as(self.hist).to(torch.int32)

    def _windows(self, sub: torch.Tensor, idx: torch.Tensor, n_pos: int) -> torch.Tensor:
        """The tracked latents' activations at offsets ``-before..after`` around ``idx`` (flat
        batch positions), NaN where the window leaves the row."""
        offsets = torch.arange(-self.before, self.after + 1)
        pos = (idx % n_pos).unsqueeze(-1) + offsets
        inside = (pos >= 0) & (pos < n_pos)
        flat = (idx - idx % n_pos).unsqueeze(-1) + pos.clamp(0, n_pos - 1)
        win = sub.gather(1, flat.reshape(sub.shape[0], -1)).reshape(flat.shape)
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
