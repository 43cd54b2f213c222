"""The example's figure (``k_hat.png``): k_hat's distribution against TopK's k, k_hat against
sentence length and word rarity, and the sources with the lowest and highest mean k_hat.

Matplotlib's object-oriented API on the Agg canvas (no pyplot state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_plot"]


def make_plot(result: dict[str, Any], path: Path) -> Path:
    """k_hat against sentence length and word rarity, its distribution, and by category."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a = result["analysis"]
    per = a["per_sentence"]
    k_hat, k = per["k_hat"], result["settings"]["k"]
    fig = Figure(figsize=(13, 9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    ax.hist(k_hat, bins=40, color="tab:blue", alpha=0.8, label="SoftSAE k_hat")
    ax.axvline(k, color="tab:red", ls="--", label=f"TopK k = {k}")
    ax.set(
        xlabel="k_hat (predicted latents per sentence)",
        ylabel="held-out sentences",
        title="How many latents each sentence gets",
    )
    ax.legend()
    for ax, key, label in (
        (axes[0, 1], "tokens", "sentence length (MiniLM tokens)"),
        (axes[1, 0], "rarity", "mean word rarity (-log10 corpus frequency)"),
    ):
        x = per[key]
        ax.scatter(x, k_hat, s=4, alpha=0.25, color="tab:blue")
        edges = np.unique(np.quantile(x, np.linspace(0, 1, 11)))
        which = np.clip(np.digitize(x, edges[1:-1]), 0, len(edges) - 2)
        centers = [x[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        means = [k_hat[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        ax.plot(centers, means, "o-", color="black", label="decile means")
        rho = a["spearman_k_hat"][key]
        ax.set(xlabel=label, ylabel="k_hat", title=f"k_hat vs {key} (Spearman {rho:+.2f})")
        ax.legend()
    ax = axes[1, 1]
    by_source = list(a["by_source"].items())
    shown = by_source[:8] + by_source[-8:] if len(by_source) > 16 else by_source
    names = [n for n, _ in shown]
    values = [v["k_hat_mean"] for _, v in shown]
    colors = ["tab:orange" if n in _reference_sources(a) else "tab:green" for n in names]
    ax.barh(range(len(names)), values, color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.axvline(float(k_hat.mean()), color="black", lw=0.8)
    if values:
        ax.set_xlim(min(values) - 0.5, max(values) + 0.5)
    ax.set(
        xlabel="mean k_hat (black line: all held-out sentences)",
        title="Lowest and highest sources (orange: language reference)",
    )
    fig.tight_layout()
    fig.savefig(path)
    return path


def _reference_sources(analysis: dict[str, Any]) -> set[str]:
    return set(analysis.get("reference_sources", []))
