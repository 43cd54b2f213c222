"""The realistic regime: SynthSAEBench-style ground truth from :mod:`sae_lens.synthetic`.

SAELens's SynthSAEBench-16k model (16,384 true features in 768 dimensions) combines Zipfian
firing probabilities, a feature hierarchy whose children are mutually exclusive and scaled by
their parent, low-rank correlations between features, and per-feature firing magnitudes (mean
linear from 5 to 4, standard deviation folded-normal). :class:`RealisticRegime` is the same
recipe scaled down to run on 2 CPU cores (the number of hierarchy roots scales with the number
of features, so about two thirds of the features sit in trees, as in the 16k model), and
:func:`build_model` builds its :class:`~sae_lens.synthetic.SyntheticModel` for one seed.

The SAEs of a seed must see the same training batches, and on 2 cores generating a batch costs
more than a SoftSAE step (the hierarchy and correlation passes touch every one of the
``batch x num_features`` entries). :class:`RecordedActivationGenerator` samples the stream
once from SAELens's own generator and replays it, batch for batch, to every SAE of the seed.

Depends on torch and :mod:`sae_lens.synthetic` only: nothing about SAEs, training or reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens.synthetic import (
    ActivationGenerator,
    FoldedNormalMagnitudeConfig,
    HierarchyConfig,
    LinearMagnitudeConfig,
    LowRankCorrelationConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
)


@dataclass(frozen=True)
class RealisticRegime:
    """A scaled-down SynthSAEBench-16k: the 16k recipe at ``num_features`` in ``hidden_dim``.

    ``d_sae = num_features * width_fraction`` (a quarter, as SynthSAEBench recommends: an SAE
    narrower than the true feature count). Orthogonalisation of the feature directions is left
    out: at the 16k recipe's 100 steps of lr 3e-4 it barely moves random directions, and at
    4,096 features it took 6 minutes of a shared core.
    """

    name: str
    num_features: int
    hidden_dim: int
    width_fraction: float = 0.25
    hierarchy_roots: int | None = None  # default: num_features / 128, as 128 of 16,384
    branching_factor: int = 4
    max_depth: int = 3
    zipf_exponent: float = 0.5
    max_prob: float = 0.4
    min_prob: float = 5e-4
    correlation_rank: int = 25
    correlation_scale: float = 0.1
    bias: float = 0.5
    # SynthSAEBench orthogonalises the feature directions (SAELens's default optimisation);
    # off by default here because it costs minutes at thousands of features.
    orthogonalize: bool = False
    kind: str = "realistic"

    def __post_init__(self) -> None:
        if self.num_features < 128 or self.hidden_dim < 1:
            raise ValueError(
                f"RealisticRegime needs num_features >= 128 and hidden_dim >= 1, got "
                f"num_features={self.num_features}, hidden_dim={self.hidden_dim}"
            )
        if not 0 < self.width_fraction <= 1:
            raise ValueError(f"width_fraction must lie in (0, 1], got {self.width_fraction}")

    @property
    def d_in(self) -> int:
        return self.hidden_dim

    @property
    def d_sae(self) -> int:
        return max(1, round(self.num_features * self.width_fraction))

    @property
    def roots(self) -> int:
        return self.hierarchy_roots or max(1, self.num_features // 128)

    def model_config(self, seed: int) -> SyntheticModelConfig:
        """The :class:`~sae_lens.synthetic.SyntheticModelConfig` of this regime for ``seed``."""
        return SyntheticModelConfig(
            num_features=self.num_features,
            hidden_dim=self.hidden_dim,
            firing_probability=ZipfianFiringProbabilityConfig(
                exponent=self.zipf_exponent, max_prob=self.max_prob, min_prob=self.min_prob
            ),
            hierarchy=HierarchyConfig(
                total_root_nodes=self.roots,
                branching_factor=self.branching_factor,
                max_depth=self.max_depth,
                mutually_exclusive_portion=1.0,
                compensate_probabilities=True,
                scale_children_by_parent=True,
            ),
            correlation=LowRankCorrelationConfig(
                rank=self.correlation_rank, correlation_scale=self.correlation_scale
            ),
            mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
            std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
            orthogonalization=OrthogonalizationConfig() if self.orthogonalize else None,
            bias=self.bias,
            seed=seed,
        )

    def describe(self) -> str:
        return (
            f"SynthSAEBench-16k recipe scaled down: {self.num_features} features in "
            f"{self.hidden_dim} dims, Zipfian firing (exponent {self.zipf_exponent:g}, "
            f"p {self.min_prob:g}..{self.max_prob:g}), {self.roots} hierarchy roots x branching "
            f"{self.branching_factor} x depth {self.max_depth} with mutually exclusive children, "
            f"low-rank correlation (rank {self.correlation_rank}, scale {self.correlation_scale:g}), "
            f"magnitudes mean 5..4, std folded-normal"
            f"{', directions orthogonalised' if self.orthogonalize else ''}; d_sae = {self.d_sae}"
        )


def build_model(regime: RealisticRegime, seed: int) -> SyntheticModel:
    """The ground truth of one seed (SAELens seeds every part of it from ``seed``)."""
    model = SyntheticModel(regime.model_config(seed))
    model.feature_dict.eval()
    for p in model.feature_dict.parameters():
        p.requires_grad_(False)
    return model


def width_features(frequencies: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Indices of the ``d_sae`` most frequent true features: the ones the width can hold.

    ``frequencies`` are measured firing rates, not the generator's ``firing_probabilities``:
    the hierarchy's probability compensation raises a child's probability by
    ``1 / P(parent)``, so the latter overrate children that fire only with their parent.
    """
    return frequencies.argsort(descending=True)[:d_sae]


class RecordedActivationGenerator(ActivationGenerator):
    """Replays a recorded stream of feature activations, batch for batch.

    ``record(source, n_batches, batch_size)`` samples the stream from ``source`` (SAELens's
    generator, under the caller's RNG state) and stores it sparsely; every call of
    :meth:`sample` returns the next recorded batch, and :meth:`rewind` starts over, so every
    SAE trained from it sees exactly the same batches. Asking for another batch size or for
    more batches than recorded raises.
    """

    def __init__(self, source: ActivationGenerator):
        super().__init__(
            source.num_features,
            firing_probabilities=source.firing_probabilities,
            std_firing_magnitudes=source.std_firing_magnitudes,
            mean_firing_magnitudes=source.mean_firing_magnitudes,
        )
        self.source = source
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.batch_size = 0
        self.position = 0

    @torch.no_grad()
    def record(self, n_batches: int, batch_size: int, progress=None) -> RecordedActivationGenerator:
        self.batches, self.batch_size, self.position = [], batch_size, 0
        for _ in range(n_batches):
            acts = self.source.sample(batch_size)
            rows, cols = acts.nonzero(as_tuple=True)
            # int16 indices where they fit: a stream of 2M samples stays in the hundreds of MB.
            self.batches.append(
                (_small(rows, batch_size), _small(cols, self.num_features), acts[rows, cols])
            )
            if progress is not None:
                progress.update()
        return self

    def rewind(self) -> None:
        self.position = 0

    @torch.no_grad()
    def sample(self, batch_size: int) -> torch.Tensor:
        if batch_size != self.batch_size:
            raise ValueError(
                f"batch_size must be the recorded {self.batch_size}, got batch_size={batch_size}"
            )
        if self.position >= len(self.batches):
            raise RuntimeError(f"all {len(self.batches)} recorded batches have been replayed")
        rows, cols, values = self.batches[self.position]
        self.position += 1
        out = torch.zeros(batch_size, self.num_features, dtype=values.dtype)
        out[rows.long(), cols.long()] = values
        return out


def _small(index: torch.Tensor, bound: int) -> torch.Tensor:
    return index.to(torch.int16 if bound <= 2**15 else torch.int32)


@torch.no_grad()
def sample_true_l0(
    model: SyntheticModel, n: int, seed: int, batch: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """True L0 of ``n`` fresh inputs and every feature's measured firing rate."""
    torch.manual_seed(seed)
    l0s, fired = [], torch.zeros(model.cfg.num_features, dtype=torch.float64)
    for start in range(0, n, batch):
        active = model.activation_generator.sample(min(batch, n - start)) != 0
        l0s.append(active.sum(-1))
        fired += active.sum(0)
    return torch.cat(l0s), fired / n


def width_l0(frequencies: torch.Tensor, d_sae: int) -> float:
    """Mean true L0 over the ``d_sae`` most frequent features: the L0 the width can hold."""
    return float(frequencies[width_features(frequencies, d_sae)].sum())
