import math

import pytest
import torch

from softsae_lens import soft_topk
from softsae_lens.soft_topk import alpha_range, laplace_cdf


def reference_soft_topk(x: torch.Tensor, k: float, alpha: float) -> torch.Tensor:
    """Slow independent reference: per-row bisection on t in float64."""
    x = x.double()
    out = torch.empty_like(x)
    for i, row in enumerate(x.reshape(-1, x.shape[-1])):
        kk = float(k[i]) if isinstance(k, torch.Tensor) else float(k)

        def total(t, row=row):
            z = (row - t) / alpha
            w = torch.where(
                z >= 0, 1 - 0.5 * torch.exp(-z.clamp(min=0)), 0.5 * torch.exp(z.clamp(max=0))
            )
            return w.sum().item()

        lo, hi = row.min().item() - 60 * alpha - 1, row.max().item() + 60 * alpha + 1
        while total(lo) < kk:
            lo -= hi - lo
        while total(hi) > kk:
            hi += hi - lo
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if total(mid) > kk:
                lo = mid
            else:
                hi = mid
        t = 0.5 * (lo + hi)
        z = (row - t) / alpha
        out.view(-1, x.shape[-1])[i] = torch.where(
            z >= 0, 1 - 0.5 * torch.exp(-z.clamp(min=0)), 0.5 * torch.exp(z.clamp(max=0))
        )
    return out


def _post_relu(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).relu()


@pytest.mark.parametrize("alpha", [1e-3, 0.05, 0.7, 20.0])
@pytest.mark.parametrize("k", [0.3, 3.0, 17.5, 60.0])
def test_matches_bisection_reference_float64(alpha, k):
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = soft_topk(x, k, alpha)
    ref = reference_soft_topk(x, k, alpha)
    torch.testing.assert_close(w, ref, atol=1e-5, rtol=0)


def test_matches_reference_with_per_row_k_and_zeros():
    x = _post_relu((6, 200), seed=2, dtype=torch.float64)
    k = torch.tensor([0.5, 2.0, 10.0, 99.0, 150.0, 199.5], dtype=torch.float64)
    w = soft_topk(x, k, 0.02)
    torch.testing.assert_close(w, reference_soft_topk(x, k, 0.02), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [10, 1000, 65536])
@pytest.mark.parametrize("alpha_over_spread", [1e-4, 1e-2, 1.0, 10.0])
def test_row_sums_exact_in_float32(n, alpha_over_spread):
    x = _post_relu((4, n), seed=n)
    x[1, : n // 2] = 0.0  # mostly exact zeros
    x[2] = torch.round(x[2] * 4) / 4  # many ties
    spread = (x.amax(-1) - x.amin(-1)).max().item()
    alpha = alpha_over_spread * spread
    for k in [0.5, 1.0, min(32.0, n / 3), n / 2, n - 1.5]:
        w = soft_topk(x, k, alpha)
        rel = ((w.double().sum(-1) - k).abs() / k).max().item()
        assert rel < 1e-4, (k, alpha, rel)
        assert bool(((w >= 0) & (w <= 1)).all())


def test_weights_strictly_inside_unit_interval_when_representable():
    x = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w = soft_topk(x, 7.0, 0.5)
    assert bool(((w > 0) & (w < 1)).all())


def test_gradcheck_x_k_alpha_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 12, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([1.5, 4.0, 9.25], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(soft_topk, (x, k, alpha), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.05, 2.0])
def test_gradcheck_post_relu_rows_with_ties(alpha):
    x = _post_relu((2, 16), seed=5, dtype=torch.float64)
    x[0, :3] = x[0, 5]  # ties among nonzeros; zeros tie as well
    x.requires_grad_()
    k = torch.tensor([3.0, 6.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: soft_topk(a, b, alpha), (x, k), eps=1e-7, atol=1e-5
    )


def test_gradient_matches_implicit_formula():
    x = torch.randn(
        4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True
    )
    k = torch.full((4,), 5.0, dtype=torch.float64, requires_grad=True)
    alpha = 0.4
    w = soft_topk(x, k, alpha)
    g = torch.randn_like(w)
    w.backward(g)
    # p_i = min(w_i, 1 - w_i), from the forward output alone
    p = torch.minimum(w, 1 - w).detach()
    mean = (p * g).sum(-1, keepdim=True) / p.sum(-1, keepdim=True)
    torch.testing.assert_close(x.grad, p / alpha * (g - mean))
    torch.testing.assert_close(k.grad, mean.squeeze(-1))


def test_k_gradient_finite_when_threshold_sits_in_a_wide_gap():
    x = torch.tensor([[10.0, 9.0, 0.0, -1.0]], requires_grad=True)
    k = torch.tensor([2.0], requires_grad=True)
    w = soft_topk(x, k, 1e-4)  # every Laplace density term underflows in float32
    (w * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert torch.isfinite(k.grad).all() and torch.isfinite(x.grad).all()
    assert 2.0 <= k.grad.item() <= 3.0  # dL/dk is a p-weighted mean of g, here of g_2 and g_3


def test_hard_limit_is_top_k_mask():
    x = torch.randn(8, 100, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for k in [1, 5, 37]:
        w = soft_topk(x, float(k), 1e-9)
        mask = torch.zeros_like(x).scatter_(1, x.topk(k, dim=1).indices, 1.0)
        torch.testing.assert_close(w, mask, atol=1e-6, rtol=0)


def test_shift_invariance_and_permutation_equivariance():
    x = torch.randn(4, 40, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    w = soft_topk(x, 6.0, 0.3)
    torch.testing.assert_close(soft_topk(x + 3.7, 6.0, 0.3), w)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(soft_topk(x[:, perm], 6.0, 0.3), w[:, perm])


def test_monotone_in_x():
    x = torch.randn(3, 25, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    w = soft_topk(x, 4.0, 0.2)
    order = x.argsort(-1)
    assert bool((w.gather(-1, order).diff(dim=-1) >= -1e-12).all())
    bumped = x.clone()
    bumped[:, 3] += 0.1
    w2 = soft_topk(bumped, 4.0, 0.2)
    assert bool((w2[:, 3] > w[:, 3]).all())
    others = torch.ones(25, dtype=torch.bool)
    others[3] = False
    assert bool((w2[:, others] <= w[:, others] + 1e-12).all())


def test_leading_dims_and_broadcast_k():
    x = torch.randn(2, 3, 5, 30, generator=torch.Generator().manual_seed(11))
    k = torch.tensor([2.0, 4.0, 8.0, 1.0, 3.0])  # broadcast over the last leading dim
    w = soft_topk(x, k, 0.1)
    assert w.shape == x.shape
    torch.testing.assert_close(w.sum(-1), k.expand(2, 3, 5), atol=1e-4, rtol=0)
    flat = soft_topk(x.reshape(-1, 30), k.repeat(6), 0.1)
    torch.testing.assert_close(flat.reshape(x.shape), w)


def test_broadcast_k_gradient_sums_over_broadcast_dims():
    x = torch.randn(4, 3, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    k = torch.tensor([2.0, 5.0, 7.0], dtype=torch.float64, requires_grad=True)
    soft_topk(x, k, 0.5)[..., 0].sum().backward()
    assert k.grad.shape == (3,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_round_trip(dtype):
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(13)).to(dtype).requires_grad_()
    w = soft_topk(x, 10.0, 0.1)
    assert w.dtype == dtype and w.shape == x.shape
    w.float().pow(2).sum().backward()
    assert x.grad.dtype == dtype
    # against the independent reference on the same (rounded) inputs, to the dtype's precision
    expected = reference_soft_topk(x.detach().double(), 10.0, 0.1)
    eps = max(torch.finfo(dtype).eps, 1e-12)  # the bisection reference is good to ~1e-13
    torch.testing.assert_close(w.double(), expected, atol=eps, rtol=eps)
    torch.testing.assert_close(
        w.double().sum(-1), torch.full((4,), 10.0).double(), atol=0, rtol=64 * eps
    )


def test_laplace_cdf():
    z = torch.tensor([-800.0, -2.0, 0.0, 2.0, 800.0], dtype=torch.float64)
    expected = torch.tensor(
        [0.0, 0.5 * math.exp(-2), 0.5, 1 - 0.5 * math.exp(-2), 1.0], dtype=torch.float64
    )
    torch.testing.assert_close(laplace_cdf(z), expected, atol=1e-300, rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0.0), r"k must lie in the open interval \(0, n\) = \(0, 10\), got k=0.0"),
        (dict(k=10.0), r"k must lie in the open interval"),
        (dict(k=-1.0), r"k must lie in the open interval"),
        (dict(k=torch.tensor([1.0, 11.0, 2.0])), r"got k=11.0"),
        (
            dict(k=torch.ones(4)),
            r"k of shape \(4,\) is not broadcastable to x.shape\[:-1\] = \(3,\)",
        ),
        (dict(k=torch.ones(2, 3)), r"not broadcastable"),
        (dict(alpha=0.0), r"alpha must be positive and finite, got alpha=0.0"),
        (dict(alpha=-1.0), r"alpha must be positive"),
        (dict(alpha=float("nan")), r"alpha must be positive and finite"),
        (dict(alpha=float("inf")), r"alpha must be positive and finite"),
        (dict(alpha=torch.ones(2)), r"alpha must be a positive float or a 0-dim tensor"),
        (dict(alpha="0.1"), r"alpha must be a positive float"),
        (dict(k="3"), r"k must be a number or a tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = dict(x=torch.randn(3, 10), k=3.0, alpha=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        soft_topk(**args)


@pytest.mark.parametrize(
    "x_dtype, alpha", [(torch.float32, 1e-39), (torch.float32, 1e39), (torch.bfloat16, 1e39)]
)
def test_alpha_outside_the_compute_dtype_range_raises(x_dtype, alpha):
    """These alphas gave NaN row sums in float32 (1/alpha or the threshold overflows)."""
    x = torch.randn(3, 10).relu().to(x_dtype)
    with pytest.raises(ValueError, match=r"alpha must lie in \[5.88e-39, .*float32.*got alpha="):
        soft_topk(x, 3.5, alpha)


def test_float64_alpha_bound_accounts_for_the_spread_of_x():
    x = torch.linspace(-1e10, 1e10, 64, dtype=torch.float64)[None]
    low, _ = alpha_range(torch.float64, 64, spread=2e10)
    assert low > 2.0 / torch.finfo(torch.float64).max
    with pytest.raises(ValueError, match="alpha must lie in"):
        soft_topk(x, 3.5, low / 2)
    assert torch.isfinite(soft_topk(x, 3.5, low * 2)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_sums_stay_finite_and_within_one_at_the_edges_of_the_alpha_range(dtype):
    x = _post_relu((6, 256), seed=21, dtype=dtype)
    k = torch.linspace(1.5, 80.0, 6, dtype=dtype)
    spread = float(x.max() - x.min())
    low, high = alpha_range(dtype, 256, spread)
    for alpha in (low * 1.01, high * 0.99):
        w = soft_topk(x, k, alpha)
        assert torch.isfinite(w).all(), alpha
        assert ((w.double().sum(-1) - k.double()).abs() < 1).all(), alpha
    # exact again from about 1e-12 of the rows' magnitude up (see the docstring)
    w = soft_topk(x, k, 1e-11 * float(x.abs().max()))
    torch.testing.assert_close(w.double().sum(-1), k.double(), atol=0, rtol=1e-5)


def test_empty_batch_keeps_the_graph():
    x = torch.randn(0, 16, requires_grad=True)
    k = torch.ones(0, requires_grad=True)
    w = soft_topk(x, k, 0.1)
    assert w.shape == (0, 16) and w.grad_fn is not None
    w.sum().backward()
    assert x.grad.shape == (0, 16) and k.grad.shape == (0,)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x_raises(bad):
    x = torch.randn(3, 10)
    x[1, 4] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        soft_topk(x, 3.0, 0.1)


def test_integer_x_raises():
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        soft_topk(torch.arange(10), 3.0, 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _post_relu((64, 4096), seed=14)
    w_cpu = soft_topk(x, 32.0, 0.01)
    w_gpu = soft_topk(x.cuda(), 32.0, 0.01)
    torch.testing.assert_close(w_gpu.cpu(), w_cpu, atol=1e-5, rtol=0)
