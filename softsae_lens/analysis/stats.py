"""Corpus statistics over token records, on numpy and scipy.

Holds :func:`quantile_summary` (the package's one summary of a distribution: count, mean, std,
min, p5, p25, median, p75, p95, max), :func:`k_stats_by_class`, :func:`spearman` (paired
values, ``scipy.stats.spearmanr``), :func:`k_loss_spearman` (``k_hat`` against a token field) and :func:`corpus_stats` (everything ``corpus_stats.json`` holds).
Records marked ``excluded`` (special tokens the SAE was not spliced at) count in no statistic.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from softsae_lens.analysis.records import TOKEN_CLASSES, TokenRecord, sae_info

__all__ = [
    "QUANTILE_KEYS",
    "corpus_stats",
    "counted",
    "k_loss_spearman",
    "k_stats_by_class",
    "quantile_summary",
    "spearman",
]

# The keys of quantile_summary's result, in order.
QUANTILE_KEYS: tuple[str, ...] = (
    "count",
    "mean",
    "std",
    "min",
    "p5",
    "p25",
    "median",
    "p75",
    "p95",
    "max",
)
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def quantile_summary(values: Iterable[float] | Any) -> dict[str, float | int | None]:
    """Summary of a distribution: ``count, mean, std, min, p5, p25, median, p75, p95, max``.

    Args:
        values: numbers (a list, a numpy array or a torch tensor of any shape; flattened).

    Returns:
        A dict with the keys of :data:`QUANTILE_KEYS`, in that order. NaNs are dropped first:
        ``count`` is the number of values summarised. ``std`` is the sample standard deviation
        (ddof=1; 0.0 for one value). Quantiles interpolate linearly (numpy's default, as
        ``torch.quantile``). With no values left, ``count`` is 0 and every other entry None.
    """
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values), np.float64)
    array = array.ravel()
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n == 0:
        return {key: 0 if key == "count" else None for key in QUANTILE_KEYS}
    p5, p25, median, p75, p95 = np.quantile(array, _QUANTILES).tolist()
    return {
        "count": n,
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if n > 1 else 0.0,
        "min": float(array.min()),
        "p5": p5,
        "p25": p25,
        "median": median,
        "p75": p75,
        "p95": p95,
        "max": float(array.max()),
    }


def counted(records: Sequence[TokenRecord]) -> list[TokenRecord]:
    """The records statistics count: all but the ``excluded`` special tokens."""
    return [r for r in records if not r.excluded]


def k_stats_by_class(records: Sequence[TokenRecord]) -> dict[str, dict[str, Any]]:
    """``k_hat`` summary (:func:`quantile_summary`) per token class, plus the class's mean L0
    and label, under ``"all"`` for every token as well. Classes with no counted tokens are left
    out."""
    records = counted(records)
    out: dict[str, dict[str, Any]] = {}
    for cls in [*TOKEN_CLASSES, "all"]:
        members = [r for r in records if cls == "all" or r.token_class == cls]
        if not members:
            continue
        summary: dict[str, Any] = quantile_summary([r.k_hat for r in members])
        summary["l0_mean"] = sum(r.l0 for r in members) / len(members)
        summary["label"] = TOKEN_CLASSES.get(cls, "all tokens")
        out[cls] = summary
    return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def k_loss_spearman(
    records: Sequence[TokenRecord], target: str = "loss", include_first: bool = False
) -> dict[str, Any]:
    """Spearman rank correlation between ``k_hat`` and a per-token quantity.

    Args:
        target: ``"loss"`` (the clean model's next-token loss at the token's position),
            ``"surprisal"`` (the loss of the token itself), ``"loss_spliced"``, ``"recon_error"``
            or ``"l0"``.
        include_first: include position 0, whose residual is an outlier in most models (even
            when it is no special token, e.g. token ids given without BOS).

    Returns:
        ``{"target", "rho", "p_value", "n"}`` from ``scipy.stats.spearmanr`` (ties share their
        average rank; the p-value is its two-sided t approximation). ``rho`` and ``p_value`` are
        None when fewer than 3 tokens have the target or either side is constant.
    """
    pairs = [
        (r.k_hat, getattr(r, target))
        for r in counted(records)
        if getattr(r, target) is not None and (include_first or r.position > 0)
    ]
    return {"target": target, **spearman([p[0] for p in pairs], [float(p[1]) for p in pairs])}


def spearman(x: Sequence[float] | Any, y: Sequence[float] | Any) -> dict[str, Any]:
    """``{"rho", "p_value", "n"}`` of ``scipy.stats.spearmanr`` on paired values (ties share
    their average rank; the p-value is its two-sided t approximation). ``rho`` and ``p_value``
    are None when there are fewer than 3 pairs or either side is constant."""
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.shape != ys.shape:
        raise ValueError(f"spearman needs paired values, got {xs.size} and {ys.size}")
    out: dict[str, Any] = {"rho": None, "p_value": None, "n": int(xs.size)}
    if xs.size < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return out  # spearmanr would warn and return NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = scipy_stats.spearmanr(xs, ys)
    rho = _finite_or_none(float(result.statistic))
    if rho is not None:
        out["rho"], out["p_value"] = rho, _finite_or_none(float(result.pvalue))
    return out


def _mean_of(records: Sequence[TokenRecord], attr: str) -> float | None:
    values = [getattr(r, attr) for r in records if getattr(r, attr) is not None]
    return sum(values) / len(values) if values else None


def corpus_stats(records: Sequence[TokenRecord], sae: Any | None = None) -> dict[str, Any]:
    """Everything ``corpus_stats.json`` holds: per-class ``k_hat`` statistics, Spearman of
    ``k_hat`` with the next-token loss, the token's surprisal and the reconstruction error,
    and mean losses, all over the counted records (``n_excluded`` special tokens left out;
    ``n_tokens`` counts every record)."""
    kept = counted(records)
    out: dict[str, Any] = {
        "n_tokens": len(records),
        "n_texts": len({r.text_index for r in records}),
        "n_excluded": len(records) - len(kept),
        "k_hat_mean": _mean_of(kept, "k_hat"),
        "l0_mean": _mean_of(kept, "l0"),
        "recon_error_rel_mean": _mean_of(kept, "recon_error_rel"),
        "loss_clean_mean": _mean_of(kept, "loss"),
        "loss_spliced_mean": _mean_of(kept, "loss_spliced"),
        "k_hat_by_class": k_stats_by_class(records),
        "spearman_k_hat_vs_loss": k_loss_spearman(records, "loss"),
        "spearman_k_hat_vs_surprisal": k_loss_spearman(records, "surprisal"),
        "spearman_k_hat_vs_recon_error": k_loss_spearman(records, "recon_error"),
    }
    if sae is not None:
        out["sae"] = sae_info(sae)
    return out
