"""Held-out metrics of any SAELens SAE on rows of activations stored on disk.

Holds :func:`evaluate_on_rows` (explained variance, MSE, L0 and its distribution, dead latents,
and for SAEs that predict their own k, the distribution of ``k_hat``) and
:class:`HeldOutEvaluator`, the same metrics in the shape ``sae_lens.SAETrainer`` calls during training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sae_lens import SAE
from sae_lens.evals import ExplainedVarianceCalculator
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.util import str_to_dtype
from tqdm.auto import tqdm

from softsae_lens.data.activations import ActivationRows
from softsae_lens.data.batches import iter_row_batches

__all__ = ["HeldOutEvaluator", "evaluate_on_rows"]


@torch.no_grad()
def evaluate_on_rows(
    sae: SAE[Any],
    rows: ActivationRows,
    indices: np.ndarray | None = None,
    batch_size: int = 4096,
    scaler: ActivationScaler | None = None,
    per_row: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``sae`` (inference behaviour, ``sae.eval()``) on ``rows`` at ``indices``.

    Returns a dict with ``explained_variance`` (SAELens's definition: 1 - E||x - x_hat||^2 /
    E||x - E x||^2), ``mse`` (squared error summed over dimensions, averaged over rows, as
    SAELens's evals), ``cossim``, ``l0`` (mean number of nonzero latents) and its
    distribution ``l0_dist``, ``dead_latents`` (latents that never fire on these rows) and
    ``n_rows``; for an SAE with ``predict_k`` (SoftSAE), ``k_hat`` (the predicted k before
    rounding). Both distributions are :func:`~softsae_lens.analysis.stats.quantile_summary`'s. ``per_row=True`` adds a ``rows`` entry of
    per-row numpy arrays (``l0``, ``sq_err``, ``norm_sq``, and ``k_hat`` for SoftSAEs).
    ``scaler`` maps raw rows to the SAE's input space (during training, before the trainer
    folds its normalisation into the weights).
    """
    was_training = sae.training
    sae.eval()
    ev = ExplainedVarianceCalculator()
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    per: dict[str, list[torch.Tensor]] = {"l0": [], "sq_err": [], "norm_sq": [], "cossim": []}
    from softsae_lens.analysis.stats import quantile_summary  # lazily: analysis loads matplotlib

    has_k = hasattr(sae, "predict_k")
    if has_k:
        per["k_hat"] = []
    dtype = str_to_dtype(sae.cfg.dtype)
    n = rows.n_rows if indices is None else len(indices)
    batches = iter_row_batches(rows, indices, batch_size, dtype)
    for x in tqdm(
        batches, total=math.ceil(n / batch_size), desc="Evaluating", disable=not progress
    ):
        x = x.to(sae.device)
        if scaler is not None:
            x = scaler(x)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        ev.add_batch(sae_output=x_hat.float(), hidden_acts=x.float())
        nonzero = acts != 0
        fired |= nonzero.any(dim=0).cpu()
        per["l0"].append(nonzero.sum(-1).cpu())
        per["sq_err"].append((x - x_hat).float().pow(2).sum(-1).cpu())
        per["norm_sq"].append(x.float().pow(2).sum(-1).cpu())
        per["cossim"].append(
            torch.nn.functional.cosine_similarity(x.float(), x_hat.float(), dim=-1).cpu()
        )
        if has_k:
            per["k_hat"].append(sae.predict_k(x).float().cpu())  # type: ignore[operator]
    if was_training:
        sae.train()
    cat = {name: torch.cat(values) for name, values in per.items()}
    metrics: dict[str, Any] = {
        "n_rows": n,
        "explained_variance": ev.compute(),
        "mse": cat["sq_err"].mean().item(),
        "cossim": cat["cossim"].mean().item(),
        "l0": cat["l0"].float().mean().item(),
        "l0_dist": quantile_summary(cat["l0"]),
        "dead_latents": int((~fired).sum()),
        "d_sae": sae.cfg.d_sae,
    }
    if has_k:
        metrics["k_hat"] = quantile_summary(cat["k_hat"])
    if per_row:
        metrics["rows"] = {name: values.numpy() for name, values in cat.items()}
    return metrics


class HeldOutEvaluator:
    """SAETrainer's evaluator (called on wandb eval steps): metrics on held-out rows."""

    def __init__(self, rows: ActivationRows, indices: np.ndarray, batch_size: int):
        self.rows, self.indices, self.batch_size = rows, indices, batch_size

    def __call__(self, sae: Any, data_provider: Any, scaler: ActivationScaler) -> dict[str, Any]:
        del data_provider  # held-out rows, not the training stream
        m = evaluate_on_rows(sae, self.rows, self.indices, self.batch_size, scaler=scaler)
        out = {f"eval/{k}": m[k] for k in ("explained_variance", "mse", "l0", "dead_latents")}
        if "k_hat" in m:
            out.update({f"eval/k_hat_{k}": v for k, v in m["k_hat"].items()})
        return out
