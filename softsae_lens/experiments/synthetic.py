"""Ground truth for SoftSAE's central claim: does ``k_hat`` track how many features an input holds?

SoftSAE predicts a per-input number of active latents ``k_hat``. Its claim is that ``k_hat``
follows the input's complexity and that this buys better reconstruction than a fixed k at the
same mean L0. Real LLM activations have no ground truth for "how many features are active";
synthetic activations do. This experiment builds data where the true number of active features
varies strongly from input to input and compares, on the same data stream (the very same
batches), with the same steps and learning rate:

* SoftSAE (architecture ``"soft"``, this package) with ``k`` = the true mean L0 (rounded);
* SAELens TopK with ``k`` = the true mean L0 (rounded), and TopK with ``k + 1``: TopK's
  realised L0 ends below its k (ReLU zeroes some of its top-k entries) while SoftSAE's ends
  near k, so the two TopKs bracket SoftSAE's L0 and the comparison is made at matched L0;
* SAELens BatchTopK with ``k`` = the true mean L0 (a float).

Everything is built on :mod:`sae_lens.synthetic`: a :class:`~sae_lens.synthetic.FeatureDictionary`
(orthogonalised feature directions), an :class:`~sae_lens.synthetic.ActivationGenerator` whose
``modify_activations`` hook thins each input's firing features with a per-input "complexity"
(:class:`ComplexityModifier`), :func:`~sae_lens.synthetic.train_toy_sae` for training and
:func:`~sae_lens.synthetic.eval_sae_on_synthetic_data` for explained variance, L0, MCC and F1.

Regimes (true L0 = number of nonzero ground-truth feature activations of an input):

* ``bimodal``: half the inputs are simple (about 2 true features), half complex (about 24);
* ``spread``: each input's complexity is uniform, so true L0 spreads continuously from about
  1 to about 26.

SoftSAE settings: the package defaults except ``k_max = 4k`` (complex inputs hold about
``1.9k`` features on average and up to ``3k``; the default ``2k`` caps them) and
``alpha_end = 0.05`` (:data:`EXPERIMENT_SOFT_OVERRIDES`). ``--ablation`` shows why and where
the limits are: with the default ``alpha_end = 0.01`` MCC trails TopK's by 0.017 in both
regimes (inside the 0.02 tolerance, barely) and EV is 0.014 to 0.017 lower than with 0.05,
which gives the latents just below the threshold a share of the gradient and lifts MCC above
TopK's. Larger values (0.1 on the spread regime, 0.15 on the bimodal one) collapse
training into a dense soft code that hard top-k cannot reproduce (EV far below 0), and with
``k_max = 2k`` even 0.05 collapsed in 2 of 8 bimodal seeds (the k-estimator's hidden units
died first). With ``k_max = 4k`` and 0.05, none of 16 runs (8 seeds per regime) collapsed.

Evaluation uses each SAE's *inference* form, obtained as SAELens does at the end of training:
``save_inference_model`` then ``SAE.load_from_disk``. That matters for BatchTopK: its training
class selects the top ``k * batch`` activations of the whole batch (so an input's latents
depend on the other inputs), while its inference form is a JumpReLU SAE whose threshold is the
running ``topk_threshold`` learned during training; TopK and SoftSAE fold their decoder norms
on saving. Per input we record the true L0, the realised L0 ``(encode(x) != 0).sum(-1)``,
the squared reconstruction error, and for SoftSAE ``predict_k(x)`` (``k_hat`` before rounding).

Run (defaults: 2 regimes x 3 seeds x 4 SAEs, about 5 minutes on 2 CPU cores)::

    python -m softsae_lens.experiments.synthetic [--json PATH] [--out DIR]
    python -m softsae_lens.experiments.synthetic --quick      # seconds; for the test suite
    python -m softsae_lens.experiments.synthetic --ablation   # SoftSAE variants vs TopK
    python -m softsae_lens.experiments.synthetic --replot out/synthetic/results.json  # redraw

SAEs train in ``--workers`` processes (default 2) of ``--threads`` PyTorch threads (default 1):
on a 2-core machine shared with other work, one 2-thread process ran 30x slower per step than
a 1-thread one. Results do not depend on the number of workers.

Outputs in ``--out`` (default ``out/synthetic``; ``out/synthetic_ablation`` with ``--ablation``,
``out/synthetic_quick`` with ``--quick``): ``results.json`` (or ``--json PATH``),
``results.md`` and PNG plots ``k_hat_vs_true_l0.png`` (k_hat against true L0 with the identity
line), ``error_by_true_l0.png`` (reconstruction error and realised L0 per true-L0 bucket) and
``true_l0_hist.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.synthetic import (
    ActivationGenerator,
    FeatureDictionary,
    eval_sae_on_synthetic_data,
    orthogonal_initializer,
    train_toy_sae,
)
from scipy.stats import spearmanr
from tqdm.auto import tqdm

import softsae_lens  # noqa: F401  (registers the "soft" architecture with SAELens)
from softsae_lens.soft_sae import SoftTrainingSAE, SoftTrainingSAEConfig

SAE_KINDS = ("soft", "topk", "batchtopk")
# The main comparison. Every SAE targets k = round(true mean L0); "topk_plus1" (TopK with k + 1)
# brackets SoftSAE's realised L0 from above, since TopK's realised L0 ends below its k (ReLU
# zeroes some of its top-k entries) and SoftSAE's ends near k.
MAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "soft": {"kind": "soft"},
    "topk": {"kind": "topk"},
    "topk_plus1": {"kind": "topk", "k_offset": 1},
    "batchtopk": {"kind": "batchtopk"},
}
SAE_LABELS = {
    "soft": "SoftSAE",
    "topk": "TopK",
    "topk_plus1": "TopK (k+1)",
    "batchtopk": "BatchTopK",
}
SAE_COLORS = {
    "soft": "tab:red",
    "topk": "tab:blue",
    "topk_plus1": "tab:cyan",
    "batchtopk": "tab:green",
}
# SoftSAE settings of this experiment that differ from the package defaults (see the ablation):
# alpha_end 0.05 (relative) instead of 0.01.
EXPERIMENT_SOFT_OVERRIDES: dict[str, Any] = {"alpha_end": 0.05}

# Seed offsets: the data stream, the evaluation set and the true-L0 estimate each get their own
# stream, so every SAE of a seed sees exactly the same training batches and evaluation inputs.
_DATA_SEED_OFFSET = 1_000
_EVAL_SEED_OFFSET = 2_000
_ESTIMATE_SEED_OFFSET = 3_000


# --------------------------------------------------------------------------------------------
# Data: per-input complexity on top of SAELens's ActivationGenerator
# --------------------------------------------------------------------------------------------


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


@torch.no_grad()
def sample_true_l0(generator: ActivationGenerator, n: int, seed: int, batch: int = 8192):
    """True per-input L0 (and bimodal mode labels) of ``n`` fresh inputs."""
    torch.manual_seed(seed)
    modifier = _modifier(generator)
    l0s, modes = [], []
    for start in range(0, n, batch):
        acts = generator.sample(min(batch, n - start))
        l0s.append((acts != 0).sum(-1))
        modes.append(modifier.last_mode)
    return torch.cat(l0s), torch.cat(modes)


def _modifier(generator: ActivationGenerator) -> ComplexityModifier:
    fn = generator.modify_activations._fn  # type: ignore[union-attr]
    assert isinstance(fn, ComplexityModifier)
    return fn


def l0_distribution(true_l0: torch.Tensor, mode: torch.Tensor, regime: Regime) -> dict[str, Any]:
    x = true_l0.double()
    qs = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    out: dict[str, Any] = {
        "n": int(x.numel()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": int(x.min()),
        "max": int(x.max()),
        "quantiles": {str(q): float(torch.quantile(x, q)) for q in qs},
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
    edges.append(10**9)
    return edges


# --------------------------------------------------------------------------------------------
# SAEs
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything a run depends on (stored in the JSON).

    ``aux_loss_coefficient`` (None: each SAE's own default) is moot in these runs:
    ``train_toy_sae`` counts a latent as dead after 1000 steps without firing, which no run
    of 1000 steps reaches, so no SAE's dead-latent loss ever switches on.
    """

    regimes: list[Regime]
    seeds: list[int]
    training_samples: int
    batch_size: int
    lr: float
    lr_warm_up_steps: int
    lr_decay_steps: int
    n_eval: int
    k_max_factor: float = 4.0
    aux_loss_coefficient: float | None = None
    soft_overrides: dict[str, Any] = field(default_factory=lambda: dict(EXPERIMENT_SOFT_OVERRIDES))

    @property
    def total_steps(self) -> int:
        return self.training_samples // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["total_steps"] = self.total_steps
        return d


def default_regimes(quick: bool = False) -> list[Regime]:
    if quick:
        return [
            Regime("bimodal", "bimodal", num_features=64, d_in=32, dense_l0=12, simple_l0=2),
            Regime("spread", "spread", num_features=64, d_in=32, dense_l0=12, min_l0=1),
        ]
    return [
        Regime("bimodal", "bimodal", num_features=256, d_in=128, dense_l0=24, simple_l0=2),
        Regime("spread", "spread", num_features=256, d_in=128, dense_l0=26, min_l0=1),
    ]


def default_settings(quick: bool = False) -> Settings:
    if quick:
        return Settings(
            regimes=default_regimes(quick=True),
            seeds=[0],
            training_samples=256 * 200,
            batch_size=256,
            lr=3e-3,
            lr_warm_up_steps=0,
            lr_decay_steps=0,
            n_eval=4096,
        )
    return Settings(
        regimes=default_regimes(),
        seeds=[0, 1, 2],
        training_samples=1024 * 1000,
        batch_size=1024,
        lr=3e-3,
        lr_warm_up_steps=0,
        lr_decay_steps=200,
        n_eval=50_000,
    )


def build_sae(
    kind: str, regime: Regime, true_mean_l0: float, settings: Settings, **overrides: Any
) -> TrainingSAE[Any]:
    """A fresh training SAE; every kind targets the true mean L0.

    ``overrides`` are config fields, plus ``k_offset`` (shifts the integer k of TopK and
    SoftSAE) and, for SoftSAE, ``k_max_factor`` (``k_max = k_max_factor * k``); SoftSAE also
    takes ``settings.soft_overrides`` first.
    """
    overrides = dict(overrides)
    k = max(1, round(true_mean_l0) + int(overrides.pop("k_offset", 0)))
    common: dict[str, Any] = {"d_in": regime.d_in, "d_sae": regime.num_features}
    if settings.aux_loss_coefficient is not None:
        common["aux_loss_coefficient"] = settings.aux_loss_coefficient
    if kind == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common, **overrides))
    if kind == "batchtopk":
        return BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=float(true_mean_l0), **common, **overrides)
        )
    if kind == "soft":
        overrides = {**settings.soft_overrides, **overrides}
        factor = overrides.pop("k_max_factor", settings.k_max_factor)
        overrides.setdefault("k_max", float(min(regime.num_features, factor * k)))
        if overrides.get("k_estimator_width") == "d_sae":
            overrides["k_estimator_width"] = regime.num_features
        cfg = SoftTrainingSAEConfig(
            k=k, total_training_steps=settings.total_steps, **common, **overrides
        )
        return SoftTrainingSAE(cfg)
    raise ValueError(f"unknown SAE kind {kind!r}; expected one of {SAE_KINDS}")


def to_inference(sae: TrainingSAE[Any]) -> SAE[Any]:
    """The SAE as SAELens saves it for inference (BatchTopK becomes JumpReLU)."""
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp)
    inference.eval()
    return inference


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def correlations(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | None]:
    """Spearman and Pearson correlation across inputs (None where one side is constant)."""
    x, y = a.double().numpy(), b.double().numpy()
    if x.std() == 0 or y.std() == 0:
        return {"spearman": None, "pearson": None}
    return {
        "spearman": _finite_or_none(spearmanr(x, y).statistic),
        "pearson": _finite_or_none(np.corrcoef(x, y)[0, 1]),
    }


@torch.no_grad()
def per_input_stats(sae: SAE[Any], x: torch.Tensor) -> dict[str, torch.Tensor]:
    latents = sae.encode(x)
    x_hat = sae.decode(latents)
    out = {
        "l0": (latents != 0).sum(-1),
        "sq_err": (x - x_hat).pow(2).sum(-1),
    }
    if hasattr(sae, "predict_k"):
        out["k_hat"] = sae.predict_k(x)
    return out


def bucket_stats(
    edges: list[int], true_l0: torch.Tensor, x: torch.Tensor, stats: dict[str, torch.Tensor]
) -> list[dict[str, Any]]:
    """Reconstruction error and L0 per true-L0 bucket.

    ``rel_err`` = sum of squared errors / sum of squared input norms within the bucket (the
    bucket's fraction of energy not reconstructed); ``mse`` = mean squared error per element.
    """
    sq_norm = x.pow(2).sum(-1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (true_l0 >= lo) & (true_l0 < hi)
        n = int(sel.sum())
        if n == 0:
            continue
        row = {
            "lo": lo,
            "hi": hi if hi < 10**9 else None,
            "n": n,
            "true_l0": float(true_l0[sel].double().mean()),
            "mse": float(stats["sq_err"][sel].double().mean() / x.shape[-1]),
            "rel_err": float(stats["sq_err"][sel].double().sum() / sq_norm[sel].double().sum()),
            "l0": float(stats["l0"][sel].double().mean()),
        }
        if "k_hat" in stats:
            row["k_hat"] = float(stats["k_hat"][sel].double().mean())
        rows.append(row)
    return rows


def evaluate(
    sae: SAE[Any],
    feature_dict: FeatureDictionary,
    generator: ActivationGenerator,
    eval_seed: int,
    n_eval: int,
    edges: list[int],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens's synthetic eval plus per-input stats on the very same inputs."""
    sae.eval()
    torch.manual_seed(eval_seed)
    result = eval_sae_on_synthetic_data(
        sae, feature_dict, generator, num_samples=n_eval, batch_size=n_eval
    )
    # Same seed, same single batch: the same inputs eval_sae_on_synthetic_data just used.
    torch.manual_seed(eval_seed)
    with torch.no_grad():
        feats = generator.sample(n_eval)
        x = feature_dict(feats)
    true_l0 = (feats != 0).sum(-1)
    mode = _modifier(generator).last_mode
    assert mode is not None
    if abs(float(true_l0.double().mean()) - result.true_l0) > 1e-6 * max(1.0, result.true_l0):
        raise RuntimeError("evaluation inputs differ from eval_sae_on_synthetic_data's")
    stats = per_input_stats(sae, x)
    sq_norm = x.pow(2).sum(-1)
    metrics: dict[str, Any] = {
        "explained_variance": result.explained_variance,
        "mse": float(stats["sq_err"].double().mean() / x.shape[-1]),
        "rel_err": float(stats["sq_err"].double().sum() / sq_norm.double().sum()),
        "mean_l0": result.sae_l0,
        "l0_std": float(stats["l0"].double().std()),
        "l0_min": int(stats["l0"].min()),
        "l0_max": int(stats["l0"].max()),
        "mcc": result.mcc,
        "f1": result.classification.f1_score,
        "precision": result.classification.precision,
        "recall": result.classification.recall,
        "dead_latents": result.dead_latents,
        "shrinkage": result.shrinkage,
        "uniqueness": result.uniqueness,
        "true_l0": result.true_l0,
        "corr_l0_vs_true": correlations(stats["l0"], true_l0),
        "buckets": bucket_stats(edges, true_l0, x, stats),
    }
    if "k_hat" in stats:
        metrics["k_hat_mean"] = float(stats["k_hat"].double().mean())
        metrics["k_hat_std"] = float(stats["k_hat"].double().std())
        metrics["corr_k_hat_vs_true"] = correlations(stats["k_hat"], true_l0)
        if bool((mode == 1).any()) and bool((mode == 0).any()):
            # Does k_hat follow true L0 *within* each mode, beyond telling the modes apart?
            metrics["spearman_k_hat_within_mode"] = {
                name: correlations(stats["k_hat"][mode == m], true_l0[mode == m])["spearman"]
                for name, m in (("simple", 0), ("complex", 1))
            }
    if bool((mode == 1).any()) and bool((mode == 0).any()):
        # How each SAE spends its L0 on the bimodal regime's simple and complex inputs.
        for name, m in (("simple", 0), ("complex", 1)):
            metrics[f"l0_{name}_mode"] = float(stats["l0"][mode == m].double().mean())
            metrics[f"rel_err_{name}_mode"] = float(
                stats["sq_err"][mode == m].double().sum() / sq_norm[mode == m].double().sum()
            )
    stats["true_l0"] = true_l0
    return metrics, stats


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class SeedRun:
    """Every SAE of one (regime, seed)."""

    regime: str
    seed: int
    true_mean_l0: float
    k: int
    metrics: dict[str, dict[str, Any]]
    wall_s: dict[str, float]
    # Per SoftSAE variant, a subsample of (true L0, k_hat, realised L0) for plotting.
    scatter: dict[str, dict[str, list[float]]]


@dataclass
class Job:
    """One SAE to train and evaluate: ``spec`` is ``{"kind": ..., **config overrides}``."""

    regime: Regime
    seed: int
    name: str
    spec: dict[str, Any]
    settings: Settings
    edges: list[int]


@dataclass
class JobResult:
    job: Job
    true_mean_l0: float
    metrics: dict[str, Any]
    wall_s: float
    scatter: dict[str, list[float]]


def run_job(job: Job, n_scatter: int = 3000) -> JobResult:
    """Train and evaluate one SAE. Deterministic given the job: the ground truth, the
    training batches and the evaluation inputs depend only on (regime, seed), so every SAE
    of a seed sees the same data whichever process runs it."""
    regime, seed, settings = job.regime, job.seed, job.settings
    torch.manual_seed(seed)
    feature_dict, generator = build_data(regime, seed)
    true_l0, _ = sample_true_l0(generator, 100_000, seed + _ESTIMATE_SEED_OFFSET)
    true_mean = float(true_l0.double().mean())
    spec = dict(job.spec)
    kind = spec.pop("kind")
    torch.manual_seed(seed)
    sae = build_sae(kind, regime, true_mean, settings, **spec)
    torch.manual_seed(seed + _DATA_SEED_OFFSET)  # the same batches for every SAE of this seed
    start = time.perf_counter()
    train_toy_sae(
        sae,
        feature_dict,
        generator,
        training_samples=settings.training_samples,
        batch_size=settings.batch_size,
        lr=settings.lr,
        lr_warm_up_steps=settings.lr_warm_up_steps,
        lr_decay_steps=settings.lr_decay_steps,
    )
    wall = time.perf_counter() - start
    inference = to_inference(sae)
    metrics, stats = evaluate(
        inference, feature_dict, generator, seed + _EVAL_SEED_OFFSET, settings.n_eval, job.edges
    )
    metrics["kind"] = kind
    metrics["k"] = sae.cfg.k
    metrics["overrides"] = spec
    scatter: dict[str, list[float]] = {}
    if kind == "soft":
        metrics["k_max"] = sae.cfg.k_max
        metrics["soft_config"] = {
            f.name: getattr(sae.cfg, f.name)
            for f in dataclasses.fields(sae.cfg)
            if f.name in _SOFT_CONFIG_FIELDS
        }
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(stats["true_l0"]), generator=g)[:n_scatter]
        scatter = {
            "true_l0": stats["true_l0"][idx].tolist(),
            "k_hat": [round(v, 3) for v in stats["k_hat"][idx].tolist()],
            "l0": stats["l0"][idx].tolist(),
        }
    return JobResult(job, true_mean, metrics, wall, scatter)


_SOFT_CONFIG_FIELDS = (
    "k",
    "k_max",
    "k_rounding",
    "k_estimator_width",
    "rescale_acts_by_decoder_norm",
    "total_training_steps",
    "k_loss_coefficient",
    "k_loss_scale",
    "k_loss_beta",
    "k_target_start",
    "k_anneal_fraction",
    "alpha_start",
    "alpha_end",
    "alpha_anneal_fraction",
    "alpha_scale",
    "soft_topk_grad_to_pre",
    "hard_topk_fraction",
    "aux_loss_coefficient",
)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_jobs(jobs: list[Job], workers: int, threads: int, progress: bool = True) -> list[JobResult]:
    """Run jobs in this process (``workers <= 1``) or in a pool of spawned processes.

    Each process uses ``threads`` intra-op threads. One thread per process is the default:
    on a 2-core machine shared with other work, PyTorch's thread pool spin-waits for busy
    cores, and a 2-thread step measured 30x slower than a 1-thread one under load.
    """
    bar = tqdm(total=len(jobs), desc="SAEs trained", disable=not progress)
    results: list[JobResult] = []
    if workers <= 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for job in jobs:
                bar.set_postfix(regime=job.regime.name, seed=job.seed, sae=job.name)
                results.append(run_job(job))
                bar.update()
        finally:
            torch.set_num_threads(previous)
    else:
        import multiprocessing as mp
        import os

        # Workers' own progress bars would interleave; tqdm reads TQDM_DISABLE on import.
        saved = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        try:
            pool = mp.get_context("spawn").Pool(
                workers, initializer=_init_worker, initargs=(threads,)
            )
        finally:
            if saved is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = saved
        with pool:
            for result in pool.imap_unordered(run_job, jobs):
                results.append(result)
                bar.set_postfix(
                    regime=result.job.regime.name, seed=result.job.seed, sae=result.job.name
                )
                bar.update()
            pool.close()
            pool.join()
    bar.close()
    by_key = {(r.job.regime.name, r.job.seed, r.job.name): r for r in results}
    return [by_key[(j.regime.name, j.seed, j.name)] for j in jobs]


def group_runs(results: list[JobResult]) -> dict[str, list[SeedRun]]:
    runs: dict[str, dict[int, SeedRun]] = {}
    for r in results:
        by_seed = runs.setdefault(r.job.regime.name, {})
        run = by_seed.get(r.job.seed)
        if run is None:
            run = by_seed[r.job.seed] = SeedRun(
                r.job.regime.name,
                r.job.seed,
                r.true_mean_l0,
                max(1, round(r.true_mean_l0)),
                {},
                {},
                {},
            )
        run.metrics[r.job.name] = r.metrics
        run.wall_s[r.job.name] = r.wall_s
        if r.scatter:
            run.scatter[r.job.name] = r.scatter
    return {name: list(by_seed.values()) for name, by_seed in runs.items()}


_SCALAR_KEYS = (
    "explained_variance",
    "mse",
    "rel_err",
    "mean_l0",
    "l0_std",
    "mcc",
    "f1",
    "dead_latents",
    "k_hat_mean",
    "l0_simple_mode",
    "l0_complex_mode",
    "rel_err_simple_mode",
    "rel_err_complex_mode",
)


def _get(m: dict[str, Any], key: str) -> float | None:
    if key in ("spearman_k_hat", "pearson_k_hat"):
        return (m.get("corr_k_hat_vs_true") or {}).get(key.split("_")[0])
    if key in ("spearman_l0", "pearson_l0"):
        return (m.get("corr_l0_vs_true") or {}).get(key.split("_")[0])
    v = m.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def aggregate(runs: list[SeedRun]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of every scalar metric and every bucket, per SAE."""
    names = list(runs[0].metrics)
    keys = (*_SCALAR_KEYS, "spearman_k_hat", "pearson_k_hat", "spearman_l0", "pearson_l0")
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        entry: dict[str, Any] = {}
        for key in keys:
            vals = [_get(r.metrics[name], key) for r in runs]
            vals = [v for v in vals if v is not None]
            if vals:
                entry[key] = {
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals)),
                    "per_seed": vals,
                }
        within = [r.metrics[name].get("spearman_k_hat_within_mode") for r in runs]
        if all(w is not None for w in within):
            entry["spearman_k_hat_within_mode"] = {
                mode: float(np.mean([w[mode] for w in within if w[mode] is not None]))
                for mode in ("simple", "complex")
            }
        # Buckets: every seed of a regime uses the same edges.
        bucket_rows = []
        for i, row in enumerate(runs[0].metrics[name]["buckets"]):
            rows = [
                b
                for r in runs
                for b in r.metrics[name]["buckets"]
                if b["lo"] == row["lo"] and b["hi"] == row["hi"]
            ]
            agg = {"lo": row["lo"], "hi": row["hi"], "n": sum(b["n"] for b in rows)}
            for key in ("true_l0", "mse", "rel_err", "l0", "k_hat"):
                if key in row:
                    vals = [b[key] for b in rows]
                    agg[key] = float(np.mean(vals))
                    agg[f"{key}_std"] = float(np.std(vals))
            bucket_rows.append(agg)
            del i
        entry["buckets"] = bucket_rows
        out[name] = entry
    return out


def acceptance(summary: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The issue's acceptance checks on the mean over seeds (None without "soft" and "topk").

    Also records every SAE's measured mean L0 and, where present, SoftSAE's EV against
    TopK with k + 1 (whose L0 is at or above SoftSAE's), as information.
    """
    checks: dict[str, Any] = {}
    for regime, agg in summary.items():
        soft, topk = agg.get("soft"), agg.get("topk")
        if soft is None or topk is None:
            continue
        rho = soft["spearman_k_hat"]["mean"]
        ev_s, ev_t = soft["explained_variance"]["mean"], topk["explained_variance"]["mean"]
        mcc_s, mcc_t = soft["mcc"]["mean"], topk["mcc"]["mean"]
        checks[regime] = {
            "spearman_k_hat_ge_0.9": {"value": rho, "pass": rho >= 0.9},
            "ev_soft_ge_topk": {"soft": ev_s, "topk": ev_t, "pass": ev_s >= ev_t},
            "mcc_soft_ge_topk_minus_0.02": {
                "soft": mcc_s,
                "topk": mcc_t,
                "pass": mcc_s >= mcc_t - 0.02,
            },
            "mean_l0": {name: a["mean_l0"]["mean"] for name, a in agg.items()},
        }
        plus1 = agg.get("topk_plus1")
        if plus1 is not None:
            l0_s, l0_t = soft["mean_l0"]["mean"], topk["mean_l0"]["mean"]
            l0_p, ev_p = plus1["mean_l0"]["mean"], plus1["explained_variance"]["mean"]
            # TopK's EV at SoftSAE's mean L0, linear in L0 through TopK(k) and TopK(k+1).
            ev_at = ev_t + (ev_p - ev_t) * (l0_s - l0_t) / (l0_p - l0_t) if l0_p != l0_t else ev_p
            checks[regime]["info_soft_vs_topk_plus1"] = {
                "ev_soft": ev_s,
                "ev_topk_plus1": ev_p,
                "l0_soft": l0_s,
                "l0_topk_plus1": l0_p,
                "ev_topk_interpolated_at_l0_soft": ev_at,
            }
    if not checks:
        return None
    checks["all_pass"] = all(
        c["pass"] for r in checks.values() if isinstance(r, dict) for c in r.values() if "pass" in c
    )
    return checks


# --------------------------------------------------------------------------------------------
# Ablation: SoftSAE variants on the bimodal regime
# --------------------------------------------------------------------------------------------

# Every SoftSAE variant sets all the fields it is about, so it reads the same whatever the
# experiment's own overrides are; all use k_max = 4k unless they say otherwise.
_PACKAGE_DEFAULTS = {"alpha_scale": "relative", "alpha_end": 1e-2, "soft_topk_grad_to_pre": False}
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "topk": {"kind": "topk"},
    "a_defaults": {"kind": "soft", **_PACKAGE_DEFAULTS},
    "b_grad_to_pre": {"kind": "soft", **_PACKAGE_DEFAULTS, "soft_topk_grad_to_pre": True},
    "c_paper": {
        "kind": "soft",
        "k_loss_scale": "absolute",
        "alpha_scale": "absolute",
        "alpha_end": 1e-4,
        "soft_topk_grad_to_pre": True,
        "k_rounding": "floor",
        "k_estimator_width": "d_sae",
    },
    "alpha_end_0.05": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.05},
    "alpha_end_0.1": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.1},
    "alpha_end_0.2": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.2},
    "alpha_abs_0.02": {
        "kind": "soft",
        **_PACKAGE_DEFAULTS,
        "alpha_scale": "absolute",
        "alpha_end": 0.02,
    },
    "k_max_2k": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.05, "k_max_factor": 2.0},
    "k_loss_absolute": {
        "kind": "soft",
        **_PACKAGE_DEFAULTS,
        "alpha_end": 0.05,
        "k_loss_scale": "absolute",
    },
}
ABLATION_DESCRIPTIONS = {
    "topk": "SAELens TopK, k = round(true mean L0) (reference)",
    "a_defaults": "(a) SoftSAE package defaults: alpha_scale relative, alpha_end 1e-2, soft_topk_grad_to_pre False",
    "b_grad_to_pre": "(b) (a) with soft_topk_grad_to_pre=True",
    "c_paper": "(c) the paper's settings: k_loss_scale absolute, alpha_scale absolute, alpha_end 1e-4, soft_topk_grad_to_pre True, k_rounding floor, k_estimator_width d_sae",
    "alpha_end_0.05": "(a) with alpha_end 0.05 (relative): the main run's SoftSAE",
    "alpha_end_0.1": "(a) with alpha_end 0.1 (relative)",
    "alpha_end_0.2": "(a) with alpha_end 0.2 (relative)",
    "alpha_abs_0.02": "(a) with alpha_scale absolute, alpha_end 0.02 (activation units; true features have magnitude ~1)",
    "k_max_2k": "alpha_end 0.05 with k_max = 2k (the package default) instead of 4k",
    "k_loss_absolute": "alpha_end 0.05 with the paper's k penalty (k_loss_scale absolute) instead of the MSE-scaled one",
}


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _fmt(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _fmt_seeds(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return ", ".join(f"{v:.{digits}f}" for v in stat["per_seed"])


def markdown_report(result: dict[str, Any]) -> str:
    lines = [f"# {result['title']}", ""]
    s = result["settings"]
    lines += [
        f"Command: `{result['command']}`  ",
        f"Seeds {s['seeds']}; {s['training_samples']:,} training samples, batch {s['batch_size']} "
        f"({s['total_steps']} steps), lr {s['lr']:g} (decay over the last {s['lr_decay_steps']} "
        f"steps); evaluation on {s['n_eval']:,} fresh inputs per seed. Wall time {result['wall_s']:.0f} s.",
        "",
    ]
    for regime in result["regimes"]:
        name = regime["name"]
        dist = regime["true_l0_distribution"]
        q = dist["quantiles"]
        lines += [f"## Regime `{name}`: {regime['description']}", ""]
        extra = ""
        if "simple_mean" in dist:
            extra = (
                f"; simple inputs {dist['simple_mean']:.2f}, complex {dist['complex_mean']:.2f} "
                f"({dist['complex_fraction']:.0%} complex)"
            )
        lines += [
            f"True L0: mean {dist['mean']:.2f}, std {dist['std']:.2f}, min {dist['min']}, "
            f"max {dist['max']}; quantiles 1/10/50/90/99%: {q['0.01']:.0f}/{q['0.1']:.0f}/"
            f"{q['0.5']:.0f}/{q['0.9']:.0f}/{q['0.99']:.0f}{extra}.",
            "",
        ]
        agg = result["summary"][name]
        names = list(agg)
        lines += [
            "| SAE | EV | MSE | rel. err | mean L0 | L0 std | MCC | F1 | dead | Spearman(k_hat, true) | Pearson(k_hat, true) | Spearman(L0, true) | Pearson(L0, true) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n in names:
            a = agg[n]
            lines.append(
                f"| {result['labels'].get(n, n)} | {_fmt(a.get('explained_variance'))} | "
                f"{_fmt(a.get('mse'), 5)} | {_fmt(a.get('rel_err'))} | {_fmt(a.get('mean_l0'), 2)} | "
                f"{_fmt(a.get('l0_std'), 2)} | {_fmt(a.get('mcc'))} | {_fmt(a.get('f1'))} | "
                f"{_fmt(a.get('dead_latents'), 1)} | {_fmt(a.get('spearman_k_hat'))} | "
                f"{_fmt(a.get('pearson_k_hat'))} | {_fmt(a.get('spearman_l0'))} | "
                f"{_fmt(a.get('pearson_l0'))} |"
            )
        lines += ["", "Per seed (EV / mean L0 / MCC / Spearman(k_hat)):", ""]
        lines += [
            "| SAE | EV | mean L0 | MCC | F1 | Spearman(k_hat, true) |",
            "|---|---|---|---|---|---|",
        ]
        for n in names:
            a = agg[n]
            lines.append(
                f"| {result['labels'].get(n, n)} | {_fmt_seeds(a.get('explained_variance'))} | "
                f"{_fmt_seeds(a.get('mean_l0'), 2)} | {_fmt_seeds(a.get('mcc'))} | "
                f"{_fmt_seeds(a.get('f1'))} | {_fmt_seeds(a.get('spearman_k_hat'))} |"
            )
        if any("l0_simple_mode" in agg[n] for n in names):
            lines += [
                "",
                "Simple vs complex inputs (mean over seeds); Spearman(k_hat, true L0) within each "
                "mode asks whether k_hat follows true L0 beyond telling the modes apart:",
                "",
                "| SAE | L0 simple | L0 complex | rel. err simple | rel. err complex | "
                "Spearman within simple | Spearman within complex |",
                "|---|---|---|---|---|---|---|",
            ]
            for n in names:
                a = agg[n]
                w = a.get("spearman_k_hat_within_mode") or {}
                within = [
                    f"{w[m]:.3f}" if w.get(m) is not None else "-" for m in ("simple", "complex")
                ]
                lines.append(
                    f"| {result['labels'].get(n, n)} | {_fmt(a.get('l0_simple_mode'), 2)} | "
                    f"{_fmt(a.get('l0_complex_mode'), 2)} | {_fmt(a.get('rel_err_simple_mode'))} | "
                    f"{_fmt(a.get('rel_err_complex_mode'))} | {within[0]} | {within[1]} |"
                )
        lines += [
            "",
            "Relative reconstruction error (and mean L0) per true-L0 bucket, mean over seeds:",
            "",
        ]
        header = (
            "| true L0 | inputs (all seeds) | "
            + " | ".join(result["labels"].get(n, n) for n in names)
            + " |"
        )
        lines += [header, "|---|---|" + "---|" * len(names)]
        for i, row in enumerate(agg[names[0]]["buckets"]):
            rng = f"{row['lo']}-{row['hi'] - 1}" if row["hi"] is not None else f"≥{row['lo']}"
            cells = []
            for n in names:
                b = agg[n]["buckets"][i]
                cell = f"{b['rel_err']:.3f} (L0 {b['l0']:.1f}"
                cell += f", k̂ {b['k_hat']:.1f})" if "k_hat" in b else ")"
                cells.append(cell)
            lines.append(f"| {rng} | {row['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    acc = result.get("acceptance")
    if acc:
        lines += ["## Acceptance (mean over seeds)", ""]
        for regime, checks in acc.items():
            if not isinstance(checks, dict):
                continue
            for check, c in checks.items():
                vals = ", ".join(f"{k} {v:.3f}" for k, v in c.items() if k != "pass")
                verdict = f": **{'pass' if c['pass'] else 'FAIL'}**" if "pass" in c else ""
                lines.append(f"- {regime} / {check}: {vals}{verdict}")
        lines += ["", f"All pass: **{acc['all_pass']}**", ""]
    return "\n".join(lines)


def make_plots(result: dict[str, Any], out_dir: Path) -> list[str]:
    """The PNGs, from the result JSON alone (``--replot`` redraws them from a saved one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    regimes = result["regimes"]
    labels = result["labels"]
    n = len(regimes)
    palette = [
        "tab:orange",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:olive",
        "tab:gray",
        "gold",
        "black",
        "tab:cyan",
    ]
    names = list(result["summary"][regimes[0]["name"]])
    extra = [nm for nm in names if nm not in SAE_COLORS]
    color_of = {nm: SAE_COLORS.get(nm) or palette[extra.index(nm) % len(palette)] for nm in names}

    # 1. k_hat (and realised L0) against true L0, all seeds pooled; one panel per SoftSAE
    #    variant and regime.
    soft_names = [nm for nm in names if result["summary"][regimes[0]["name"]][nm]["kind"] == "soft"]
    if soft_names:
        # Regime-major panels, at most 5 a row (one SoftSAE: the regimes side by side).
        specs = [(regime, nm) for regime in regimes for nm in soft_names]
        cols = min(len(specs), 5)
        rows = math.ceil(len(specs) / cols)
        size = 5.2 if cols <= 2 else 3.8
        fig, axes = plt.subplots(
            rows, cols, figsize=(size * cols, 0.92 * size * rows), squeeze=False
        )
        for ax in axes.flat[len(specs) :]:
            ax.set_visible(False)
        panels = [(ax, regime, nm) for ax, (regime, nm) in zip(axes.flat, specs, strict=False)]
        for index, (ax, regime, name) in enumerate(panels):
            agg = result["summary"][regime["name"]]
            points = [
                r["scatter"][name]
                for r in result["per_seed"]
                if r["regime"] == regime["name"] and name in r.get("scatter", {})
            ]
            t = np.concatenate([p["true_l0"] for p in points]).astype(float)
            k = np.concatenate([p["k_hat"] for p in points])
            jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=t.shape)
            ax.scatter(
                t + jitter, k, s=4, alpha=0.2, color="tab:red", label="k̂ per input (jittered)"
            )
            b = agg[name]["buckets"]
            ax.plot(
                [r["true_l0"] for r in b],
                [r["l0"] for r in b],
                "o-",
                color="darkred",
                ms=4,
                label="realised L0, bucket mean",
            )
            topk = next((a for a in agg.values() if a.get("kind") == "topk"), None)
            if topk:
                ax.axhline(topk["mean_l0"]["mean"], color="tab:blue", ls="--", label="TopK L0")
            hi = float(max(t.max(), k.max())) + 1
            ax.plot([0, hi], [0, hi], color="black", lw=1, label="identity")
            rho = agg[name].get("spearman_k_hat")
            title = f"{regime['name']}: {labels.get(name, name)}"
            if rho:
                title += f"\nSpearman(k̂, true L0) = {rho['mean']:.3f} (mean of {len(rho['per_seed'])} seeds)"
            ax.set_title(title, fontsize=10 if cols <= 2 else 8)
            ax.set_xlabel("true L0 (active ground-truth features)")
            ax.set_ylabel("k̂ (SoftSAE's predicted k)")
            ax.set_xlim(-1, hi)
            ax.set_ylim(0, hi)
            if index == 0 or cols <= 2:
                ax.legend(fontsize=8, loc="upper left")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "k_hat_vs_true_l0.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))

    # 2. Error and L0 per true-L0 bucket.
    fig, axes = plt.subplots(2, n, figsize=(5.2 * n, 7.5), squeeze=False, sharex="col")
    for col, regime in enumerate(regimes):
        agg = result["summary"][regime["name"]]
        # A collapsed variant (seed-mean relative error above 1 in every bucket) would squash
        # every other curve: it is named on the panel instead of drawn.
        off_chart = [nm for nm, a in agg.items() if min(r["rel_err"] for r in a["buckets"]) > 1]
        for name, a in agg.items():
            b = a["buckets"]
            x = [r["true_l0"] for r in b]
            color = color_of.get(name)
            if name not in off_chart:
                axes[0][col].errorbar(
                    x,
                    [r["rel_err"] for r in b],
                    yerr=[r["rel_err_std"] for r in b],
                    marker="o",
                    ms=4,
                    capsize=2,
                    color=color,
                    label=labels.get(name, name),
                )
            axes[1][col].errorbar(
                x,
                [r["l0"] for r in b],
                yerr=[r["l0_std"] for r in b],
                marker="o",
                ms=4,
                capsize=2,
                color=color,
                label=labels.get(name, name),
            )
        lim = max(r["true_l0"] for r in next(iter(agg.values()))["buckets"]) + 1
        axes[1][col].plot([0, lim], [0, lim], color="black", lw=1, label="identity")
        axes[0][col].set_title(
            f"{regime['name']}: reconstruction error per true-L0 bucket", fontsize=10
        )
        axes[0][col].set_ylabel("relative error  Σ‖x−x̂‖² / Σ‖x‖²")
        axes[0][col].set_yscale("log")
        if off_chart:
            axes[0][col].text(
                0.98,
                0.02,
                "not drawn (mean error > 1: collapsed): "
                + ", ".join(labels.get(nm, nm) for nm in off_chart),
                transform=axes[0][col].transAxes,
                fontsize=7,
                ha="right",
                va="bottom",
            )
        axes[1][col].set_ylabel("realised L0 (bucket mean)")
        axes[1][col].set_xlabel("true L0 (bucket mean; mean ± std over seeds)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "error_by_true_l0.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))

    # 3. The true-L0 distributions.
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.2), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        hist = regime["true_l0_distribution"]["histogram"]
        xs = [int(v) for v in hist]
        ax.bar(xs, [hist[str(v)] for v in xs], width=0.9, color="gray")
        d = regime["true_l0_distribution"]
        ax.set_title(
            f"{regime['name']}: true L0 (mean {d['mean']:.1f}, std {d['std']:.1f})", fontsize=10
        )
        ax.set_xlabel("true L0")
        ax.set_ylabel("inputs")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "true_l0_hist.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))
    return written


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def run_experiment(
    settings: Settings,
    variants: dict[str, dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    title: str = "SoftSAE vs TopK vs BatchTopK on synthetic data with known true L0",
    command: str = "",
    progress: bool = True,
    workers: int = 1,
    threads: int = 1,
) -> tuple[dict[str, Any], dict[str, list[SeedRun]]]:
    """Train and evaluate every (regime, seed, SAE); returns the JSON-able result and the runs.

    ``variants`` maps a name to ``{"kind": "soft" | "topk" | "batchtopk", **config overrides}``;
    by default :data:`MAIN_VARIANTS`.
    """
    start = time.perf_counter()
    if variants is None:
        variants = MAIN_VARIANTS
    regimes_out = []
    edges_by_regime: dict[str, list[int]] = {}
    for regime in settings.regimes:
        _, generator = build_data(regime, settings.seeds[0])
        true_l0, mode = sample_true_l0(generator, 100_000, _ESTIMATE_SEED_OFFSET)
        edges_by_regime[regime.name] = bucket_edges(true_l0)
        regimes_out.append(
            {
                "name": regime.name,
                "description": regime.describe(),
                "spec": dataclasses.asdict(regime),
                "bucket_edges": edges_by_regime[regime.name][:-1],
                "true_l0_distribution": l0_distribution(true_l0, mode, regime),
            }
        )
    jobs = [
        Job(regime, seed, name, spec, settings, edges_by_regime[regime.name])
        for regime in settings.regimes
        for seed in settings.seeds
        for name, spec in variants.items()
    ]
    results = run_jobs(jobs, workers=workers, threads=threads, progress=progress)
    runs = group_runs(results)
    summary = {name: aggregate(rs) for name, rs in runs.items()}
    for name, agg in summary.items():
        for sae_name in agg:
            agg[sae_name]["kind"] = runs[name][0].metrics[sae_name]["kind"]
    names = list(next(iter(summary.values())))
    result: dict[str, Any] = {
        "title": title,
        "command": command,
        "settings": settings.to_dict(),
        "labels": {n: (labels or SAE_LABELS).get(n, n) for n in names},
        "regimes": regimes_out,
        "summary": summary,
        "acceptance": acceptance(summary),
        "per_seed": [
            {
                "regime": r.regime,
                "seed": r.seed,
                "true_mean_l0": r.true_mean_l0,
                "k": r.k,
                "train_wall_s": r.wall_s,
                "metrics": r.metrics,
                "scatter": r.scatter,
            }
            for rs in runs.values()
            for r in rs
        ],
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "workers": workers,
            "threads_per_worker": threads,
        },
    }
    result["wall_s"] = time.perf_counter() - start
    return result, runs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m softsae_lens.experiments.synthetic",
        description="Does SoftSAE's k_hat track the true number of active features? Trains "
        "SoftSAE, TopK (k and k+1) and BatchTopK on synthetic data with known per-input L0.",
    )
    p.add_argument("--quick", action="store_true", help="tiny run (seconds) for the test suite")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="instead of the main comparison, compare SoftSAE variants (package defaults, "
        "gradient to the pre-activations, the paper's settings, alpha_end, k_max) with TopK",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default out/synthetic, out/synthetic_ablation or out/synthetic_quick)",
    )
    p.add_argument("--json", type=Path, default=None, help="JSON path (default OUT/results.json)")
    p.add_argument(
        "--regimes",
        nargs="+",
        choices=["bimodal", "spread"],
        default=None,
        help="regimes to run (default: both)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--training-samples", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--k-max-factor", type=float, default=None, help="SoftSAE k_max = factor * k (default 4)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes training SAEs in parallel (default 2; 1 with --quick)",
    )
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads per process (default 1)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="train nothing: redraw the Markdown and PNGs of a saved results JSON into --out "
        "(default: the JSON's folder)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.replot is not None:
        result = json.loads(args.replot.read_text())
        out_dir = args.out if args.out is not None else args.replot.parent
        out_dir.mkdir(parents=True, exist_ok=True)
        files = make_plots(result, out_dir)
        (out_dir / "results.md").write_text(markdown_report(result))
        print("wrote " + ", ".join([str(out_dir / "results.md"), *files]))
        return result
    settings = default_settings(quick=args.quick)
    variants = None
    labels = None
    title = "SoftSAE vs TopK vs BatchTopK on synthetic data with known true L0"
    if args.ablation:
        variants = ABLATION_VARIANTS
        labels = {n: n for n in ABLATION_VARIANTS}
        title = "Ablation: SoftSAE variants against TopK"
    if args.regimes is not None:
        settings.regimes = [r for r in settings.regimes if r.name in args.regimes]
    if args.seeds is not None:
        settings.seeds = list(args.seeds)
    if args.training_samples is not None:
        settings.training_samples = args.training_samples
    if args.lr is not None:
        settings.lr = args.lr
    if args.k_max_factor is not None:
        settings.k_max_factor = args.k_max_factor
    suffix = "_ablation" if args.ablation else ("_quick" if args.quick else "")
    out_dir = args.out if args.out is not None else Path("out") / f"synthetic{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.json if args.json is not None else out_dir / "results.json"
    command = "python -m softsae_lens.experiments.synthetic " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    workers = args.workers if args.workers is not None else (1 if args.quick else 2)
    result, _ = run_experiment(
        settings,
        variants,
        labels,
        title,
        command.strip(),
        progress=not args.no_progress,
        workers=workers,
        threads=args.threads,
    )
    if args.ablation:
        result["ablation_descriptions"] = ABLATION_DESCRIPTIONS
    files = [str(json_path), str(out_dir / "results.md")]
    if not args.no_plots:
        files += make_plots(result, out_dir)
    result["files"] = files
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    report = markdown_report(result)
    (out_dir / "results.md").write_text(report)
    print(report)
    print("wrote " + ", ".join(files))
    return result


if __name__ == "__main__":
    main()
