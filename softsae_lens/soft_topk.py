"""Differentiable Soft Top-K (the LapSum operator) in pure PyTorch.

For a row ``x`` of ``n`` values, a target ``k`` in ``(0, n)`` and a Laplace scale ``alpha > 0``,
``soft_topk`` returns weights ``w_i = F((x_i - t) / alpha)`` where ``F`` is the standard Laplace CDF
and ``t`` is the unique threshold with ``sum_i w_i = k``. As ``alpha -> 0`` the weights tend to the
0/1 mask of the ``k`` largest entries. The threshold is found exactly, in closed form per
segment of the sorted row (:mod:`softsae_lens.soft_topk_threshold`).

The backward pass uses the implicit-function-theorem gradients (no autograd through the
solve). With ``z_i = (x_i - t) / alpha``, ``p_i = exp(-|z_i|) / 2`` and ``P = sum_i p_i``::

    dL/dx_i   = (p_i / alpha) * (g_i - sum_j p_j g_j / P)
    dL/dk     = sum_j p_j g_j / P
    dL/dalpha = (1 / alpha) * (sum_j p_j g_j * sum_j p_j z_j / P - sum_j p_j g_j z_j)

Ratios of ``p`` are formed relative to the row's largest ``p`` so that a threshold sitting in a
gap many ``alpha`` wide (where every ``p_i`` underflows) still gives a finite ``dL/dk``.

Host synchronisation (each one stalls a GPU's queue), and why each that remains is needed:

* :func:`soft_topk`, the public entry point, reads from the device to validate its arguments
  once (x finite and its spread for the alpha range, k inside ``(0, n)``, alpha's value), then
  the solve reads ``k.max()`` (how many candidates to sort) and, per round of the
  candidate-growth loop, whether any row needs the tail pass or more candidates.
* :class:`SoftTopKFunction` called with a ``k_bound`` on rows that are their own candidate set
  (what ``SoftTrainingSAE`` does after taking each row's top ``candidate_count(k_max, d_sae)``
  pre-activations): no reads at all, forward or backward; alpha stays a device tensor.
* ``SoftTrainingSAE``'s soft phase reads one boolean per step: whether every weight left out
  of the candidates is below float32 rounding. Without it the candidate shortcut could not be
  exact; a batch that fails (alpha still large early in the run) takes the dense path above.
  SAELens's TopK aux loss, which SoftSAE inherits, reads the dead-latent count when the trainer
  passes a dead mask (its top-k width depends on it). The hard phase reads nothing else.
* ``SoftSAE.decode`` reads the largest number of active latents in any row, to decode only
  those rows' decoder entries when that is exact and fall back to the dense product otherwise.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from softsae_lens.soft_topk_threshold import (
    candidate_count,
    exp_or_zero_,
    laplace_cdf,
    laplace_cdf_,
    scaled_distance,
    solve_threshold,
)

# candidate_count and laplace_cdf are part of the operator's interface (SoftTrainingSAE sizes its
# candidate set with the first), so they are importable from here too.
__all__ = ["alpha_range", "candidate_count", "laplace_cdf", "soft_topk"]


class SoftTopKFunction(torch.autograd.Function):
    """LapSum Soft Top-K on ``[R, n]`` rows with exact implicit gradients.

    ``forward(x, k, alpha, k_bound=None, rows_sorted=False)``: ``x`` ``[R, n]``
    float32/float64, ``k`` ``[R]`` of the same dtype, ``alpha`` a 0-dim floating tensor,
    ``k_bound`` an optional Python upper bound on ``k``, ``rows_sorted`` whether every row of
    ``x`` is already in descending order; returns ``w`` ``[R, n]`` with ``w_i = F((x_i - t) / alpha)`` and
    ``sum_i w_i = k`` per row. Use :func:`soft_topk`, which validates and reshapes its
    arguments; this class assumes they are valid (callers inside the package that produce
    valid arguments themselves call it directly and skip the validation's device reads).
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        k: torch.Tensor,
        alpha: torch.Tensor,
        k_bound: float | None = None,
        rows_sorted: bool = False,
    ) -> torch.Tensor:
        if x.shape[0] == 0:
            # Still an autograd node, so an empty batch keeps its graph (zero gradients).
            ctx.save_for_backward(x, x.new_empty(0, dtype=torch.float64), alpha)
            return torch.empty_like(x)
        alpha64 = alpha.detach().double()
        w = torch.empty_like(x)  # also the scratch for the tail sums
        t = solve_threshold(x, k.double(), alpha64, w, k_bound, rows_sorted)
        laplace_cdf_(scaled_distance(x, t, alpha64, out=w))
        ctx.save_for_backward(x, t, alpha)
        return w

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        x, t, alpha = ctx.saved_tensors
        need_x, need_k, need_alpha = ctx.needs_input_grad[:3]
        if x.shape[0] == 0:
            return (
                torch.zeros_like(x) if need_x else None,
                x.new_zeros(0) if need_k else None,
                torch.zeros_like(alpha) if need_alpha else None,
                None,
                None,
            )
        alpha64 = alpha.detach().double()
        alpha_x = alpha64.to(x.dtype)
        grad_w = grad_w.contiguous()
        z = scaled_distance(x, t, alpha64, out=torch.empty_like(x)) if need_alpha else None
        q = (
            z.abs()
            if need_alpha
            else scaled_distance(x, t, alpha64, out=torch.empty_like(x)).abs_()
        )
        closest = q.amin(dim=1, keepdim=True)
        # q = p / max(p) = exp(closest - |z|): well-scaled even where every p_i underflows.
        exp_or_zero_(q.sub_(closest).neg_())
        q_sum = q.sum(dim=1, keepdim=True)
        weighted = torch.mul(q, grad_w)
        mean_g = weighted.sum(dim=1, keepdim=True) / q_sum  # sum p g / P
        p_scale = 0.5 * torch.exp(-closest)  # p = q * p_scale
        grad_x = grad_k = grad_alpha = None
        if need_alpha:
            mean_z = (q * z).sum(dim=1, keepdim=True) / q_sum
            mean_gz = (weighted.mul_(z)).sum(dim=1, keepdim=True) / q_sum
            p_total = p_scale * q_sum
            grad_alpha = ((p_total / alpha_x) * (mean_g * mean_z - mean_gz)).sum()
            grad_alpha = grad_alpha.to(alpha.dtype).reshape(alpha.shape)
        if need_x:
            grad_x = torch.sub(grad_w, mean_g, out=weighted).mul_(q).mul_(p_scale / alpha_x)
        if need_k:
            grad_k = mean_g.squeeze(1)
        return grad_x, grad_k, grad_alpha, None, None


def alpha_range(dtype: torch.dtype, n: int, spread: float = 0.0) -> tuple[float, float]:
    """The alphas ``soft_topk`` accepts for rows of ``n`` values computed in ``dtype``.

    ``1/alpha`` must stay finite (it scales every distance to the threshold), the threshold,
    which lies within about ``alpha * log(2n)`` of the data, must stay representable, and the
    float64 solve divides differences of entries (up to ``spread``, the largest minus the
    smallest entry) by alpha. Outside this range the computation overflows to NaN instead of
    approximating anything.
    """
    info = torch.finfo(dtype)
    low = max(2.0 / info.max, 4.0 * spread / torch.finfo(torch.float64).max)
    return low, info.max / (2.0 * (math.log(2 * n) + 2.0))


def _as_alpha_tensor(alpha, device: torch.device) -> tuple[torch.Tensor, float]:
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1 or alpha.dim() != 0:
            raise ValueError(
                f"alpha must be a positive float or a 0-dim tensor, got a tensor of shape {tuple(alpha.shape)}"
            )
        value = float(alpha.detach())
    elif isinstance(alpha, Real) and not isinstance(alpha, bool):
        value = float(alpha)
        alpha = torch.tensor(value, dtype=torch.float64, device=device)
    else:
        raise ValueError(
            f"alpha must be a positive float or a 0-dim tensor, got {type(alpha).__name__}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"alpha must be positive and finite, got alpha={value}")
    return alpha, value


def soft_topk(x: torch.Tensor, k, alpha) -> torch.Tensor:
    """Differentiable Soft Top-K: weights in (0, 1) that sum to ``k`` along the last dim.

    ``w_i = F((x_i - t) / alpha)`` with ``F`` the standard Laplace CDF and ``t`` the row's
    threshold solving ``sum_i w_i = k`` (computed exactly, in closed form). Gradients with
    respect to ``x``, ``k`` and a tensor ``alpha`` are the exact implicit ones.

    Args:
        x: float tensor ``[..., n]`` on any device. float16/bfloat16 are computed in float32
            and the result cast back.
        k: per-row targets, a Python number or a tensor broadcastable to ``x.shape[:-1]``;
            every value must lie in the open interval ``(0, n)``.
        alpha: the Laplace scale, a positive float or 0-dim tensor (smaller is harder; as
            ``alpha -> 0`` the weights approach the 0/1 mask of the ``k`` largest entries).

    Returns:
        ``w`` with ``x``'s shape and dtype. In float32 and float64, ``0 < w < 1`` wherever the
        dtype can tell a weight from 0 and 1: a weight within ``eps/2`` of 1 rounds to 1, and
        one below ``sqrt(tiny)/2`` (float32: 5e-20; float64: 7e-155) is exactly 0, so that
        products with it never become slow subnormal numbers. ``w.sum(-1)`` equals ``k`` to a few
        units of ``eps * k`` (float32: relative error below 1e-6 in the tests, for alpha from
        1e-4 to 10x the row's spread and rows up to 65,536 long). That holds down to alphas
        about 1e-12 times the row's largest magnitude; far below that, float64 can no longer
        place the threshold within alpha of an entry, the weights are a hard top-k mask and
        a row sum may miss ``k`` by its fractional part (under 1). In bfloat16 and float16 the
        weights are computed in float32 and rounded once to the input dtype: each weight then
        carries a relative error up to ``2**-9`` (bf16) or ``2**-11`` (fp16), weights near 1
        become exactly 1, and row sums equal ``k`` only to that precision (about ``2**-9 * k``
        for bf16).

    Raises:
        ValueError: on non-finite ``x``, ``k`` outside ``(0, n)`` or not broadcastable,
            or ``alpha`` that is not a positive finite scalar inside :func:`alpha_range`.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point tensor, got {type(x).__name__}"
            + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else "")
        )
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    n = x.shape[-1]
    spread = 0.0
    if x.numel() > 0:
        lowest, highest = torch.aminmax(x.detach())
        if not bool(torch.isfinite(torch.stack([lowest, highest])).all()):
            raise ValueError("x contains NaN or inf; soft_topk needs finite inputs")
        spread = float(highest.double() - lowest.double())
    alpha_t, alpha_value = _as_alpha_tensor(alpha, x.device)

    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    low, high = alpha_range(compute_dtype, n, spread)
    if not low <= alpha_value <= high:
        raise ValueError(
            f"alpha must lie in [{low:.3g}, {high:.3g}] for these rows ({n} values, spread "
            f"{spread:.3g}, computed in {str(compute_dtype).removeprefix('torch.')}; 1/alpha "
            f"and the threshold must stay finite), got alpha={alpha_value:g}"
        )
    if isinstance(k, torch.Tensor):
        k_t = k.to(device=x.device, dtype=compute_dtype)
    elif isinstance(k, Real) and not isinstance(k, bool):
        k_t = torch.tensor(float(k), dtype=compute_dtype, device=x.device)
    else:
        raise ValueError(f"k must be a number or a tensor, got {type(k).__name__}")
    batch_shape = x.shape[:-1]
    try:
        k_t = k_t.expand(batch_shape) if k_t.dim() <= len(batch_shape) else None
    except RuntimeError:
        k_t = None
    if k_t is None:
        raise ValueError(
            f"k of shape {tuple(k.shape)} is not broadcastable to x.shape[:-1] = {tuple(batch_shape)}"
        )
    k_detached = k_t.detach()
    if k_detached.numel() > 0 and not bool(((k_detached > 0) & (k_detached < n)).all()):
        bad = k_detached[~((k_detached > 0) & (k_detached < n))].flatten()[0].item()
        raise ValueError(f"k must lie in the open interval (0, n) = (0, {n}), got k={bad}")

    rows = x.reshape(-1, n).to(compute_dtype)
    w = SoftTopKFunction.apply(rows, k_t.reshape(-1), alpha_t, None, False)
    return w.reshape(x.shape).to(x.dtype)
