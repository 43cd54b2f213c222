"""The example's written results: the Markdown report (``results.md``) and what goes into
``results.json`` (everything but the per-sentence arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softsae_lens.experiments.tables import markdown_table

__all__ = ["jsonable", "markdown_report"]


def _row(name: str, run: dict[str, Any]) -> list[str]:
    m, k_hat = run["metrics"], run["metrics"].get("k_hat")
    k_text = (
        f"{k_hat['mean']:.1f} ({k_hat['p5']:.1f} / {k_hat['median']:.1f} / {k_hat['p95']:.1f})"
        if k_hat
        else "-"
    )
    return [
        name,
        f"{m['explained_variance']:.3f}",
        f"{m['mse']:.4f}",
        f"{m['l0']:.1f}",
        f"{m['l0_dist']['std']:.1f}",
        k_text,
        f"{m['dead_latents']} / {m['d_sae']}",
        f"{run['seconds']:.0f}",
    ]


def markdown_report(result: dict[str, Any]) -> str:
    """``results.md``: the settings, both SAEs' held-out metrics, the Spearman correlations,
    mean k_hat by category and source, and the sentences with the fewest and the most latents."""
    s, runs, a = result["settings"], result["runs"], result["analysis"]
    lines = [
        "# SoftSAE vs TopK on all-MiniLM-L6-v2 sentence embeddings",
        "",
        f"{result['n_sentences']} sentences of Python's documentation ({result['n_held_out']} held out), "
        f"384-d mean-pooled, L2-normalised embeddings; d_sae {s['d_sae']}, k {s['k']}, "
        f"{runs['steps']} steps of {s['batch_size']}, lr {s['lr']}, seed {s['seed']}.",
        "",
        *markdown_table(
            [
                "SAE",
                "EV",
                "MSE",
                "mean L0",
                "L0 std",
                "k_hat mean (5% / 50% / 95%)",
                "dead",
                "train s",
            ],
            [_row("SoftSAE", runs["soft"]), _row("TopK", runs["topk"])],
        ),
        "",
        "Spearman correlation of SoftSAE's k_hat with, per held-out sentence:",
        "",
        *markdown_table(a["spearman_k_hat"], [[f"{v:+.2f}" for v in a["spearman_k_hat"].values()]]),
        "",
        "Mean k_hat by category: "
        + "; ".join(f"{c} {v['k_hat_mean']:.1f} (n={v['n']})" for c, v in a["by_category"].items()),
        "",
    ]
    by_source = list(a["by_source"].items())
    if by_source:
        ends = (
            by_source[:5] + [("...", None)] + by_source[-5:] if len(by_source) > 10 else by_source
        )
        lines.append(
            "Mean k_hat by source (sources with >= 15 held-out sentences, lowest to highest): "
            + ", ".join(name if v is None else f"{name} {v['k_hat_mean']:.1f}" for name, v in ends)
        )
        lines.append("")
    for title, key in (("Fewest latents", "fewest"), ("Most latents", "most")):
        table = [
            [f"{p['k_hat']:.1f}", p["tokens"], p["rarity"], p["source"], p["text"][:140]]
            for p in a[key]
        ]
        lines += [
            f"{title}:",
            "",
            *markdown_table(["k_hat", "tokens", "rarity", "source", "sentence"], table),
            "",
        ]
    return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    """``obj`` without the per-sentence arrays, with numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {
            k: jsonable(v)
            for k, v in obj.items()
            if k not in ("rows", "per_sentence", "held_out", "categories")
        }
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
