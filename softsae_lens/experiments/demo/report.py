"""The demo's outputs besides the SAEs: the side-by-side table, ``report.md`` and the k_hat
histogram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softsae_lens.evals.lm import HEADLINE_KEYS
from softsae_lens.evals.token_stats import fmt_rho
from softsae_lens.experiments.tables import markdown_table

__all__ = ["headline_table", "plot_k_hist", "write_report"]


def plot_k_hist(k_hat: list[float], path: Path, k_target: int) -> None:
    """Histogram of k_hat over held-out tokens."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    mean = sum(k_hat) / len(k_hat)
    ax.hist(k_hat, bins=40, color="#3b6ea8", alpha=0.85)
    ax.axvline(k_target, color="#c0392b", linestyle="--", label=f"TopK's fixed k = {k_target}")
    ax.axvline(mean, color="#27ae60", label=f"mean k_hat = {mean:.1f}")
    ax.set_xlabel("k_hat (latents the SoftSAE gives the token)")
    ax.set_ylabel("held-out tokens (special tokens excluded)")
    ax.set_title("SoftSAE: how many latents each token gets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def headline_table(rows: dict[str, dict[str, float | None]]) -> str:
    """Side-by-side table of the headline metrics."""
    cells = [
        [key, *("n/a" if r.get(key) is None else f"{r[key]:.4g}" for r in rows.values())]
        for key in HEADLINE_KEYS
    ]
    return "\n".join(markdown_table(["metric", *rows], cells))


def _l0_on_target_lines(summary: dict[str, Any]) -> list[str]:
    """One line per SAE: its held-out mean L0 against the k both were trained for."""
    k = summary["k"]
    lines = []
    for name, metrics in summary["metrics"].items():
        l0 = metrics.get("l0")
        if l0 is not None:
            lines.append(f"- {name}: held-out L0 {l0:.2f} for k {k} ({(l0 - k) / k:+.1%})")
    return [*lines, ""] if lines else []


def write_report(out: Path, summary: dict[str, Any]) -> str:
    """Write ``report.md`` and return the table."""
    table = headline_table(summary["metrics"])
    k = summary["softsae_k_hat"]
    ev = summary["eval_budget"]
    lines = [
        "# SoftSAE vs TopK on a real model",
        "",
        f"- Model: {summary['model']}, hook `{summary['hook_name']}`",
        f"- Text: {summary['corpus']}",
        *(f"  - {line.strip()}" for line in summary["corpus_sources"].splitlines()),
        f"- Training: {summary['training_tokens']:,} tokens, {summary['steps']} steps of {summary['batch_tokens']} "
        f"tokens, lr {summary['lr']}, d_sae {summary['d_sae']}, k {summary['k']}, "
        f"decoder bias from {summary.get('b_dec_init', 'zeros')} (both SAEs, same activations)",
        f"- Evaluation: CE/KL on {ev['ce_tokens']:,} held-out tokens, explained variance and L0 on "
        f"{ev['variance_tokens']:,} (special tokens excluded)",
        f"- Wall time: {summary['wall_time_s']:.0f} s (training {summary['train_time_s']:.0f} s)",
        "",
        "## Held-out evaluation (SAELens `run_evals`)",
        "",
        table,
        "",
        *_l0_on_target_lines(summary),
        "## SoftSAE's per-token k",
        "",
        f"k_hat over {k['count']} held-out tokens ({k['special_tokens_excluded']} special tokens "
        f"excluded): mean {k['mean']:.2f}, std {k['std']:.2f}, "
        + ", ".join(f"{name} {k[name]:.1f}" for name in ("p5", "p25", "median", "p75", "p95")),
        "",
        f"Spearman(k_hat, next-token loss) = {fmt_rho(k['spearman_with_next_token_loss'])}; "
        f"Spearman(k_hat, the token's own surprisal) = {fmt_rho(k['spearman_with_token_surprisal'])}",
        "",
        "![k_hat histogram](k_hat_hist.png)",
        "",
        "![sample text coloured by k_hat](sample_tokens.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return table
