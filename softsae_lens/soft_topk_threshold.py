"""The threshold solve behind :func:`softsae_lens.soft_topk.soft_topk`, and the Laplace CDF.

How the threshold is found (exactly, no iteration on ``t``):

* On the segment ``s_{m+1} <= t <= s_m`` of the descending-sorted row, the sum is
  ``m - (A/2) u + (B/2) / u`` with ``u = exp((t - r) / alpha)`` for a reference point ``r``:
  a quadratic in ``u`` whose positive root is taken in the cancellation-free form.
* Only the top ``M`` entries need sorting: everything below ``s_M`` lies below ``t`` once
  ``t >= s_M`` and contributes ``exp((x_i - t) / alpha) / 2`` each, which one reduction over
  the row (the "tail sum") accounts for exactly. ``M`` starts just above ``k`` and grows only
  for the rows where ``t`` falls below ``s_M`` (large ``alpha`` or ``k`` close to ``n``).
* The small ``[rows, M]`` part runs in float64 and in log space, so ``alpha`` many orders of
  magnitude below the row's spread neither overflows nor loses the threshold's precision.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "candidate_count",
    "exp_or_zero_",
    "laplace_cdf",
    "laplace_cdf_",
    "scaled_distance",
    "solve_threshold",
]

# Extra candidates sorted beyond ceil(k) on the first try; rows that need more get 4x as many.
_CANDIDATE_PADDING = 32
_CANDIDATE_GROWTH = 4


def _exp_floor(dtype: torch.dtype) -> float:
    """Smallest exponent whose ``exp`` is still a normal number of ``dtype``.

    Vectorised ``exp`` takes a slow path (about 8x) for arguments that underflow; clamping at
    this floor first changes results only below the dtype's smallest normal number.
    """
    return math.log(torch.finfo(dtype).tiny) + 1.0


def _exp_cut(dtype: torch.dtype) -> float:
    """Exponent below which a weight (or a backward ratio) is taken as exactly zero: ``exp`` of
    it is below ``sqrt(tiny)`` (float32: 1e-19), far below anything a float32 sum of O(1) terms
    can see. Weights left at ``tiny`` instead turn the products that follow (activations times
    weights, their decode) into subnormal numbers, which x86 CPUs compute tens of times slower.
    """
    return 0.5 * math.log(torch.finfo(dtype).tiny)


def exp_or_zero_(exponent: torch.Tensor) -> torch.Tensor:
    """In-place ``exp`` that gives exactly 0 at or below :func:`_exp_cut` (``exp(-inf)`` is
    fast, unlike arguments that underflow)."""
    cut = _exp_cut(exponent.dtype)
    return torch.nn.functional.threshold_(exponent, cut, -math.inf).exp_()


def laplace_cdf(z: torch.Tensor) -> torch.Tensor:
    """Standard Laplace CDF, ``1 - exp(-z)/2`` for ``z >= 0`` and ``exp(z)/2`` below."""
    return laplace_cdf_(z.clone())


def laplace_cdf_(z: torch.Tensor) -> torch.Tensor:
    """In-place Laplace CDF of ``z`` (one scratch tensor), 0 below ``exp(_exp_cut)/2``.

    ``F(z) = e + H(z) (1 - 2e)`` with ``e = exp(-|z|)/2`` and ``H`` the step function, so the
    lower side is ``e`` itself, accurate to the last bit down to the cut. In-place ops,
    because at SAE sizes each fresh full-size tensor costs more than the arithmetic.
    """
    half_tail = exp_or_zero_(z.abs().neg_()).mul_(0.5)
    step = torch.heaviside(z, torch.ones((), dtype=z.dtype, device=z.device), out=z)
    return torch.addcmul(step, step, half_tail, value=-2.0, out=step).add_(half_tail)


def _threshold_from_top_candidates(
    top: torch.Tensor, log_tail: torch.Tensor | None, k: torch.Tensor, alpha: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve for the threshold using the ``M`` largest entries of each row.

    Args:
        top: ``[R, M]`` float64, each row sorted descending.
        log_tail: ``[R]`` float64, ``log sum_{i not in top} exp((x_i - top[:, -1]) / alpha)``,
            or ``None`` when nothing is left out (or it is below rounding).
        k: ``[R]`` float64 targets.
        alpha: the Laplace scale, a 0-dim float64 tensor.
        n: the full row length.

    Returns:
        ``(t, ok)``: the float64 threshold per row and whether it lies at or above ``top[:, -1]``
        (only then is the answer exact; rows with ``ok == False`` need more candidates, unless
        ``M == n``).
    """
    rows, m_top = top.shape
    first = top[:, :1]
    last = top[:, -1:]
    # log sum_{j<=m} exp((s_1 - s_j)/alpha), then shifted to the reference s_m.
    down = (first - top) / alpha
    log_a = torch.logcumsumexp(down, dim=1).sub_(down)
    # log of sum_{j>m} exp((s_j - s_M)/alpha) (exclusive, top part plus tail), then shifted to s_m.
    up = (top - last) / alpha
    rev_incl = torch.logcumsumexp(up.flip(1), dim=1).flip(1)
    excl_top = torch.cat([rev_incl[:, 1:], rev_incl.new_full((rows, 1), -math.inf)], dim=1)
    if log_tail is not None:
        excl_top = torch.logaddexp(excl_top, log_tail[:, None])
    log_b = excl_top.sub_(up)
    # Sum of weights with t placed exactly at s_m, for m = 1..M; non-decreasing in m.
    counts = torch.arange(1, m_top + 1, dtype=top.dtype, device=top.device)
    sum_at = counts - 0.5 * log_a.exp() + 0.5 * log_b.exp()
    segment = (sum_at <= k[:, None]).sum(dim=1)  # t lies in [s_{m+1}, s_m] with m = segment
    ok = (segment < m_top) | (m_top == n)

    # Segment m (1-based) uses reference r = s_m; segment 0 (t above the max) uses r = s_1, A = 0.
    # Everything stays in log space: across a gap many alpha wide, A*B underflows while the
    # root u = sqrt(B/A) is still an ordinary number in log space.
    idx = (segment - 1).clamp(min=0)[:, None]
    ref = top.gather(1, idx).squeeze(1)
    log_a_m = log_a.gather(1, idx).squeeze(1)
    log_b_m = log_b.gather(1, idx).squeeze(1)
    above_max = segment == 0
    log_a_m = torch.where(above_max, torch.full_like(log_a_m, -math.inf), log_a_m)
    log_b_m = torch.where(above_max, torch.logaddexp(log_b_m, torch.zeros_like(log_b_m)), log_b_m)
    d = segment.to(top.dtype) - k
    log_abs_d = d.abs().log()
    # log sqrt(d^2 + A B)
    log_disc = 0.5 * torch.logaddexp(2.0 * log_abs_d, log_a_m + log_b_m)
    # Positive root of A u^2 - 2 d u - B = 0, in whichever form avoids cancellation:
    # u = (d + disc) / A for d >= 0, u = B / (disc - d) for d < 0.
    log_u = torch.where(
        d >= 0,
        torch.logaddexp(log_abs_d, log_disc) - log_a_m,
        log_b_m - torch.logaddexp(log_abs_d, log_disc),
    )
    return ref + alpha * log_u, ok


def _log_tail_sums(
    rows: torch.Tensor, last: torch.Tensor, alpha: torch.Tensor, m_top: int, scratch: torch.Tensor
) -> torch.Tensor:
    """``log sum_{i not in top-M} exp((x_i - s_M) / alpha)`` per row, in one pass over ``rows``.

    Every top-M entry is ``>= s_M`` and contributes exactly ``exp(0) = 1`` to the clamped sum, so
    subtracting ``M`` leaves the tail, entries tied with ``s_M`` outside the top M included.
    """
    torch.sub(rows, last, out=scratch).mul_(alpha.reciprocal().to(rows.dtype))
    scratch.clamp_(_exp_floor(rows.dtype), 0.0).exp_()
    tail = scratch.sum(dim=1).double() - m_top
    return tail.clamp_min_(0.0).log()


def candidate_count(k_bound: float, n: int) -> int:
    """How many of a row's largest entries the threshold solve sorts first, for targets up to
    ``k_bound``: ``ceil(k_bound) + 32``, at most the row length ``n``."""
    return min(n, math.ceil(k_bound) + _CANDIDATE_PADDING)


def solve_threshold(
    x: torch.Tensor,
    k: torch.Tensor,
    alpha: torch.Tensor,
    scratch: torch.Tensor,
    k_bound: float | None = None,
    rows_sorted: bool = False,
) -> torch.Tensor:
    """Exact threshold per row of ``x`` ``[R, n]`` (``k`` float64 ``[R]``, ``alpha`` a 0-dim
    float64 tensor); float64 ``[R]``.

    ``scratch`` is a tensor like ``x`` that may be overwritten. ``k_bound``, an upper bound on
    ``k`` known to the caller, saves reading ``k.max()`` from the device; when the candidates
    it implies are the whole row, the solve is one pass with no host synchronisation, and
    ``rows_sorted`` (each row already in descending order, as ``topk`` returns it) saves its sort.
    """
    rows, n = x.shape
    if k_bound is None:
        k_bound = float(k.max())
    m_top = candidate_count(k_bound, n)
    if m_top == n:
        ordered = x if rows_sorted else torch.sort(x, dim=1, descending=True).values
        ordered = ordered.double()
        return _threshold_from_top_candidates(ordered, None, k, alpha, n)[0]
    t = torch.empty(rows, dtype=torch.float64, device=x.device)
    pending = torch.arange(rows, device=x.device)
    # A tail whose total contribution is below this (relative to k) is below rounding.
    tolerance = torch.finfo(x.dtype).eps
    while pending.numel() > 0:
        every_row = pending.numel() == rows
        xs = x if every_row else x.index_select(0, pending)
        ks = k if every_row else k.index_select(0, pending)
        top = xs.topk(m_top, dim=1, sorted=True).values
        top64 = top.double()
        t_rows, ok = _threshold_from_top_candidates(top64, None, ks, alpha, n)
        if m_top < n:
            # Each left-out entry is <= s_M <= t, so it adds at most exp((s_M - t)/alpha)/2.
            tail_bound = 0.5 * (n - m_top) * torch.exp((top64[:, -1] - t_rows) / alpha)
            needs_tail = ~(ok & (tail_bound <= tolerance * ks))
            if bool(needs_tail.any()):
                sel = needs_tail.nonzero().squeeze(1)
                all_sel = sel.numel() == xs.shape[0]
                sub_rows = xs if all_sel else xs.index_select(0, sel)
                sub_scratch = scratch[: sel.numel()] if every_row else torch.empty_like(sub_rows)
                log_tail = _log_tail_sums(sub_rows, top[sel, -1:], alpha, m_top, sub_scratch)
                t_sel, ok_sel = _threshold_from_top_candidates(
                    top64.index_select(0, sel), log_tail, ks.index_select(0, sel), alpha, n
                )
                t_rows = t_rows.index_copy(0, sel, t_sel)
                ok = ok.index_copy(0, sel, ok_sel)
        t[pending[ok]] = t_rows[ok]
        pending = pending[~ok]
        m_top = min(n, m_top * _CANDIDATE_GROWTH)
    return t


def scaled_distance(
    x: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """``z = (x - t) / alpha`` into ``out``, with the float64 ``t`` split into two parts of
    ``x``'s dtype so its rounding does not move entries near the threshold."""
    t_hi = t.to(x.dtype)
    t_lo = (t - t_hi.double()).to(x.dtype)
    inverse = alpha.reciprocal().to(x.dtype)
    return torch.sub(x, t_hi[:, None], out=out).sub_(t_lo[:, None]).mul_(inverse)
