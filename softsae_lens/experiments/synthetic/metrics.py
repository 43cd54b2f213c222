"""Evaluation of one trained SAE against the ground truth.

:func:`evaluate` runs SAELens's :func:`~sae_lens.synthetic.eval_sae_on_synthetic_data` (EV, L0,
MCC, F1, uniqueness, dead latents) and, on the very same inputs, per-input statistics: realised
L0, squared error, SoftSAE's ``k_hat``, their correlations with the true L0 and the error per
true-L0 bucket.

Depends on torch, numpy, scipy, :mod:`sae_lens.synthetic` and :mod:`.data`: nothing about which
SAEs are compared, how they train, reports or plots.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sae_lens import SAE
from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, eval_sae_on_synthetic_data
from scipy.stats import spearmanr

from softsae_lens.experiments.synthetic.data import BUCKET_OPEN_END, modifier_of


def _finite_or_none(v: float | None) -> float | None:
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
    """Latents, realised L0, squared reconstruction error and (SoftSAE) ``k_hat`` of every input."""
    latents = sae.encode(x)
    x_hat = sae.decode(latents)
    out = {
        "l0": (latents != 0).sum(-1),
        "sq_err": (x - x_hat).pow(2).sum(-1),
        "latents": latents,
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
            "hi": hi if hi < BUCKET_OPEN_END else None,
            "n": n,
            "true_l0": float(true_l0[sel].double().mean()),
            "mse": float(stats["sq_err"][sel].double().mean() / x.shape[-1]),
            "rel_err": float(stats["sq_err"][sel].double().sum() / sq_norm[sel].double().sum()),
            "l0": float(stats["l0"][sel].double().mean()),
            # The spread of the per-input L0 within the bucket (0 for a single input).
            "l0_spread": float(stats["l0"][sel].double().std()) if n > 1 else 0.0,
        }
        if "k_hat" in stats:
            row["k_hat"] = float(stats["k_hat"][sel].double().mean())
        rows.append(row)
    return rows


def _by_mode(
    metrics: dict[str, Any], stats: dict[str, torch.Tensor], mode: torch.Tensor, sq_norm
) -> None:
    """Bimodal regime: how each SAE spends its L0 (and SoftSAE its k_hat) per mode."""
    if not (bool((mode == 1).any()) and bool((mode == 0).any())):
        return
    true_l0 = stats["true_l0"]
    if "k_hat" in stats:
        # Does k_hat follow true L0 *within* each mode, beyond telling the modes apart?
        metrics["spearman_k_hat_within_mode"] = {
            name: correlations(stats["k_hat"][mode == m], true_l0[mode == m])["spearman"]
            for name, m in (("simple", 0), ("complex", 1))
        }
    for name, m in (("simple", 0), ("complex", 1)):
        metrics[f"l0_{name}_mode"] = float(stats["l0"][mode == m].double().mean())
        metrics[f"rel_err_{name}_mode"] = float(
            stats["sq_err"][mode == m].double().sum() / sq_norm[mode == m].double().sum()
        )


@torch.no_grad()
def sample_inputs(
    feature_dict: FeatureDictionary, generator: ActivationGenerator, n: int, batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``n`` inputs drawn exactly as ``eval_sae_on_synthetic_data(..., batch_size=batch)`` draws
    them under the same RNG state: true features, hidden activations, and the bimodal mode labels
    (None for a generator without a :class:`~.data.ComplexityModifier`)."""
    feats, xs, modes = [], [], []
    modifier = _complexity_modifier(generator)
    for start in range(0, n, batch):
        f = generator.sample(min(batch, n - start))
        feats.append(f)
        xs.append(feature_dict(f))
        if modifier is not None:
            modes.append(modifier.last_mode)
    return torch.cat(feats), torch.cat(xs), torch.cat(modes) if modes else None


def _complexity_modifier(generator: ActivationGenerator) -> Any:
    try:
        return modifier_of(generator)
    except (AttributeError, TypeError):
        return None


def evaluate(
    sae: SAE[Any],
    feature_dict: FeatureDictionary,
    generator: ActivationGenerator,
    eval_seed: int,
    n_eval: int,
    edges: list[int],
    batch_size: int | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens's synthetic eval plus per-input stats on the very same inputs.

    The returned stats hold per-input tensors (``l0``, ``sq_err``, ``true_l0``, ``k_hat`` for
    SoftSAE) and the inputs themselves (``features``, ``latents``) for further diagnostics.
    """
    sae.eval()
    batch = batch_size or n_eval
    torch.manual_seed(eval_seed)
    result = eval_sae_on_synthetic_data(
        sae, feature_dict, generator, num_samples=n_eval, batch_size=batch
    )
    # Same seed, same batches: the same inputs eval_sae_on_synthetic_data just used.
    torch.manual_seed(eval_seed)
    feats, x, mode = sample_inputs(feature_dict, generator, n_eval, batch)
    true_l0 = (feats != 0).sum(-1)
    if abs(float(true_l0.double().mean()) - result.true_l0) > 1e-6 * max(1.0, result.true_l0):
        raise RuntimeError("evaluation inputs differ from eval_sae_on_synthetic_data's")
    stats = per_input_stats(sae, x)
    stats["true_l0"] = true_l0
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
    if mode is not None:
        _by_mode(metrics, stats, mode, sq_norm)
    stats["features"] = feats
    return metrics, stats
