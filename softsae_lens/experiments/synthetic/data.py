"""Ground-truth data of the synthetic experiment: regimes and their generators.

Holds :class:`Regime` (how many true features an input holds and how that varies), the
``modify_activations`` hook that shapes it (:class:`ComplexityModifier`), the builder of one
seed's ground truth on :mod:`sae_lens.synthetic` (:func:`build_data`), and the true-L0 helpers
(:func:`sample_true_l0`, :func:`l0_distribution`, :func:`bucket_edges`).

Depends on torch, numpy and :mod:`sae_lens.synthetic` only: nothing about SAEs, training,
reports or plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, orthogonal_initializer

# Seed offsets: the data stream, the evaluation set and the true-L0 estimate each get their own
# stream, so every SAE of a seed sees exactly the same training batches and evaluation inputs.
DATA_SEED_OFFSET = 1_000
EVAL_SEED_OFFSET = 2_000
ESTIMATE_SEED_OFFSET = 3_000
PILOT_SEED_OFFSET = (
    4_000  # the pilot batch that starts JumpReLU's and matching pursuit's thresholds
)

# Quantiles reported for every true-L0 distribution.
L0_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
# The last true-L0 bucket edge, standing for "and above".
BUCKET_OPEN_END = 10**9


@dataclass(frozen=True)
class Regime:
    """How many features an input holds, and how that varies across inputs.

    Every feature fires with probability ``dense_l0 / num_features`` (SAELens's independent
    Bernoulli firing); :class:`ComplexityModifier` then keeps each firing feature of an input
    with that input's keep probability ``q``, so the input's expected true L0 is
    ``q * dense_l0``:

    * ``kind="bimodal"``: ``q = 1`` for a ``complex_fraction`` of the inputs and
      ``q = simple_l0 / dense_l0`` for the rest;
    * ``kind="spread"``: ``q ~ Uniform(min_l0 / dense_l0, 1)`` for every input.
    """

    name: str
    kind: str
    num_features: int
    d_in: int
    dense_l0: float
    simple_l0: float = 2.0
    complex_fraction: float = 0.5
    min_l0: float = 1.0
    magnitude_mean: float = 1.0
    magnitude_std: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in ("bimodal", "spread"):
            raise ValueError(f"Regime.kind must be 'bimodal' or 'spread', got {self.kind!r}")
        if not 0 < self.dense_l0 <= self.num_features:
            raise ValueError(f"dense_l0 must lie in (0, num_features], got {self.dense_l0}")
        low = self.simple_l0 if self.kind == "bimodal" else self.min_l0
        if not 0 < low <= self.dense_l0:
            raise ValueError(f"the sparsest inputs' L0 must lie in (0, dense_l0], got {low}")

    @property
    def d_sae(self) -> int:
        """The SAEs' width: as many latents as true features."""
        return self.num_features

    @property
    def firing_probability(self) -> float:
        return self.dense_l0 / self.num_features

    def describe(self) -> str:
        if self.kind == "bimodal":
            return (
                f"two-level mixture: {1 - self.complex_fraction:.0%} simple inputs "
                f"(~{self.simple_l0:g} true features), {self.complex_fraction:.0%} complex "
                f"(~{self.dense_l0:g}); {self.num_features} features in {self.d_in} dims"
            )
        return (
            f"continuous spread: per-input expected true L0 uniform in "
            f"[{self.min_l0:g}, {self.dense_l0:g}]; {self.num_features} features in {self.d_in} dims"
        )


class ComplexityModifier:
    """``modify_activations`` hook for :class:`~sae_lens.synthetic.ActivationGenerator`.

    Thins each input's firing features with a per-input keep probability drawn as the
    :class:`Regime` says. The last batch's keep probabilities and mode labels (``1`` for a
    complex input of the bimodal regime) are kept in ``last_keep`` and ``last_mode``.
    """

    def __init__(self, regime: Regime):
        self.regime = regime
        self.last_keep: torch.Tensor | None = None
        self.last_mode: torch.Tensor | None = None

    def sample_keep(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.regime
        if r.kind == "bimodal":
            mode = (torch.rand(n, device=device) < r.complex_fraction).long()
            keep = torch.where(mode.bool(), 1.0, r.simple_l0 / r.dense_l0)
            return keep, mode
        low = r.min_l0 / r.dense_l0
        keep = low + (1 - low) * torch.rand(n, device=device)
        return keep, torch.zeros(n, dtype=torch.long, device=device)

    def __call__(self, activations: torch.Tensor) -> torch.Tensor:
        keep, mode = self.sample_keep(activations.shape[0], activations.device)
        self.last_keep, self.last_mode = keep, mode
        mask = torch.rand_like(activations) < keep.unsqueeze(-1).to(activations.dtype)
        return activations * mask


def build_data(regime: Regime, seed: int) -> tuple[FeatureDictionary, ActivationGenerator]:
    """The ground truth of one seed: orthogonalised feature directions and the generator."""
    feature_dict = FeatureDictionary(
        regime.num_features, regime.d_in, initializer=orthogonal_initializer(), seed=seed
    )
    feature_dict.eval()
    for p in feature_dict.parameters():
        p.requires_grad_(False)
    generator = ActivationGenerator(
        regime.num_features,
        firing_probabilities=regime.firing_probability,
        mean_firing_magnitudes=regime.magnitude_mean,
        std_firing_magnitudes=regime.magnitude_std,
        modify_activations=ComplexityModifier(regime),
    )
    return feature_dict, generator


def modifier_of(generator: ActivationGenerator) -> ComplexityModifier:
    """The :class:`ComplexityModifier` inside a generator built by :func:`build_data`."""
    # ActivationGenerator wraps the hook; `_fn` is the only way back to the object (no public path).
    fn = generator.modify_activations._fn  # type: ignore[union-attr]
    if not isinstance(fn, ComplexityModifier):
        raise TypeError(f"expected a generator from build_data, whose hook is {type(fn).__name__}")
    return fn


@torch.no_grad()
def sample_true_l0(
    generator: ActivationGenerator, n: int, seed: int, batch: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """True per-input L0 (and bimodal mode labels) of ``n`` fresh inputs."""
    torch.manual_seed(seed)
    modifier = modifier_of(generator)
    l0s, modes = [], []
    for start in range(0, n, batch):
        acts = generator.sample(min(batch, n - start))
        l0s.append((acts != 0).sum(-1))
        modes.append(modifier.last_mode)
    return torch.cat(l0s), torch.cat(modes)


def l0_distribution(true_l0: torch.Tensor, mode: torch.Tensor, regime: Regime) -> dict[str, Any]:
    """Mean, spread, quantiles and histogram of the true L0 (per mode for a bimodal regime)."""
    x = true_l0.double()
    out: dict[str, Any] = {
        "n": int(x.numel()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": int(x.min()),
        "max": int(x.max()),
        "quantiles": {str(q): float(torch.quantile(x, q)) for q in L0_QUANTILES},
        "histogram": {
            str(v): int(c)
            for v, c in zip(*np.unique(true_l0.numpy(), return_counts=True), strict=True)
        },
    }
    if regime.kind == "bimodal":
        out["simple_mean"] = float(x[mode == 0].mean())
        out["complex_mean"] = float(x[mode == 1].mean())
        out["complex_fraction"] = float((mode == 1).double().mean())
    return out


def bucket_edges(true_l0: torch.Tensor, max_buckets: int = 14) -> list[int]:
    """Integer bucket edges ``[e_0, e_1, ...)`` covering the bulk of the true-L0 distribution;
    the first bucket takes everything below ``e_1`` and the last everything from ``e_{-2}`` up."""
    lo = int(torch.quantile(true_l0.double(), 0.005))
    hi = int(torch.quantile(true_l0.double(), 0.995))
    width = max(1, math.ceil((hi - lo + 1) / max_buckets))
    edges = list(range(lo, hi + 1, width))
    if len(edges) < 2:
        edges.append(edges[0] + width)
    edges[0] = 0
    edges.append(BUCKET_OPEN_END)
    return edges
