"""The experiment's PNG plots, drawn from the result JSON alone (``--replot`` redraws them).

``k_hat_vs_true_l0.png`` (SoftSAE's k_hat against the true L0), ``error_by_true_l0.png``
(reconstruction error and realised L0 per true-L0 bucket), ``l0_vs_true_l0.png`` (every SAE's
per-input L0 at inference against the true L0: bucket means with the within-bucket spread, one
line per SAE, one panel per regime) and ``true_l0_hist.png``. Figures are
built with matplotlib's object-oriented API (:class:`~matplotlib.figure.Figure`), never pyplot's
global state.

Depends on numpy and matplotlib only: nothing about torch, SAELens or training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

PLOT_FILES = (
    "k_hat_vs_true_l0.png",
    "error_by_true_l0.png",
    "true_l0_hist.png",
    "l0_vs_true_l0.png",
)
SAE_COLORS = {
    "soft": "tab:red",
    "topk": "tab:blue",
    "topk_plus1": "tab:cyan",
    "batchtopk": "tab:green",
    "matryoshka_batchtopk": "tab:olive",
    "jumprelu": "tab:purple",
    "matching_pursuit": "tab:brown",
}
# Colours of the variants SAE_COLORS does not name (ablations), in order.
_PALETTE = (
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:gray",
    "gold",
    "black",
    "tab:cyan",
)


def _colors(names: list[str]) -> dict[str, str]:
    extra = [nm for nm in names if nm not in SAE_COLORS]
    return {nm: SAE_COLORS.get(nm) or _PALETTE[extra.index(nm) % len(_PALETTE)] for nm in names}


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return str(path)


def _k_hat_panel(ax: Axes, result: dict[str, Any], regime: dict[str, Any], name: str, cols: int):
    agg = result["summary"][regime["name"]]
    points = [
        r["scatter"][name]
        for r in result["per_seed"]
        if r["regime"] == regime["name"] and name in r.get("scatter", {})
    ]
    t = np.concatenate([p["true_l0"] for p in points]).astype(float)
    k = np.concatenate([p["k_hat"] for p in points])
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=t.shape)
    ax.scatter(t + jitter, k, s=4, alpha=0.2, color="tab:red", label="k̂ per input (jittered)")
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
    title = f"{regime['name']}: {result['labels'].get(name, name)}"
    if rho:
        title += (
            f"\nSpearman(k̂, true L0) = {rho['mean']:.3f} (mean of {len(rho['per_seed'])} seeds)"
        )
    ax.set_title(title, fontsize=10 if cols <= 2 else 8)
    ax.set_xlabel("true L0 (active ground-truth features)")
    ax.set_ylabel("k̂ (SoftSAE's predicted k)")
    ax.set_xlim(-1, hi)
    ax.set_ylim(0, hi)
    ax.grid(alpha=0.3)


def plot_k_hat(result: dict[str, Any], path: Path) -> str | None:
    """k_hat (and realised L0) against true L0, all seeds pooled; one panel per SoftSAE
    variant and regime, regime-major, at most 5 a row. None when no SoftSAE ran."""
    specs = [
        (regime, nm)
        for regime in result["regimes"]
        for nm, a in result["summary"][regime["name"]].items()
        if a["kind"] == "soft"
    ]
    if not specs:
        return None
    cols = min(len(specs), 5)
    rows = math.ceil(len(specs) / cols)
    size = 5.2 if cols <= 2 else 3.8
    fig = Figure(figsize=(size * cols, 0.92 * size * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(specs) :]:
        ax.set_visible(False)
    for index, (ax, (regime, name)) in enumerate(zip(axes.flat, specs, strict=False)):
        _k_hat_panel(ax, result, regime, name, cols)
        if index == 0 or cols <= 2:
            ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def _errorbar(ax: Axes, buckets: list[dict[str, Any]], key: str, color: str, label: str) -> None:
    ax.errorbar(
        [r["true_l0"] for r in buckets],
        [r[key] for r in buckets],
        yerr=[r[f"{key}_std"] for r in buckets],
        marker="o",
        ms=4,
        capsize=2,
        color=color,
        label=label,
    )


def plot_error_by_true_l0(result: dict[str, Any], path: Path) -> str:
    """Relative reconstruction error (top) and realised L0 (bottom) per true-L0 bucket."""
    regimes = result["regimes"]
    labels = result["labels"]
    color_of = _colors(list(dict.fromkeys(n for agg in result["summary"].values() for n in agg)))
    n = len(regimes)
    fig = Figure(figsize=(5.2 * n, 7.5))
    axes = fig.subplots(2, n, squeeze=False, sharex="col")
    for col, regime in enumerate(regimes):
        agg = result["summary"][regime["name"]]
        err_ax, l0_ax = axes[0][col], axes[1][col]
        # A collapsed variant (seed-mean relative error above 1 in every bucket) would squash
        # every other curve: it is named on the panel instead of drawn.
        off_chart = [nm for nm, a in agg.items() if min(r["rel_err"] for r in a["buckets"]) > 1]
        for name, a in agg.items():
            label = labels.get(name, name)
            if name not in off_chart:
                _errorbar(err_ax, a["buckets"], "rel_err", color_of[name], label)
            _errorbar(l0_ax, a["buckets"], "l0", color_of[name], label)
        lim = max(r["true_l0"] for r in next(iter(agg.values()))["buckets"]) + 1
        l0_ax.plot([0, lim], [0, lim], color="black", lw=1, label="identity")
        err_ax.set_title(f"{regime['name']}: reconstruction error per true-L0 bucket", fontsize=10)
        err_ax.set_ylabel("relative error  Σ‖x−x̂‖² / Σ‖x‖²")
        err_ax.set_yscale("log")
        if off_chart:
            err_ax.text(
                0.98,
                0.02,
                "not drawn (mean error > 1: collapsed): "
                + ", ".join(labels.get(nm, nm) for nm in off_chart),
                transform=err_ax.transAxes,
                fontsize=7,
                ha="right",
                va="bottom",
            )
        l0_ax.set_ylabel("realised L0 (bucket mean)")
        l0_ax.set_xlabel("true L0 (bucket mean; mean ± std over seeds)")
        for ax in (err_ax, l0_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_true_l0_hist(result: dict[str, Any], path: Path) -> str:
    """The true-L0 distribution of each regime."""
    regimes = result["regimes"]
    fig = Figure(figsize=(5.2 * len(regimes), 3.2))
    axes = fig.subplots(1, len(regimes), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        d = regime["true_l0_distribution"]
        xs = [int(v) for v in d["histogram"]]
        ax.bar(xs, [d["histogram"][str(v)] for v in xs], width=0.9, color="gray")
        ax.set_title(
            f"{regime['name']}: true L0 (mean {d['mean']:.1f}, std {d['std']:.1f})", fontsize=10
        )
        ax.set_xlabel("true L0")
        ax.set_ylabel("inputs")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_l0_vs_true_l0(result: dict[str, Any], path: Path) -> str:
    """Every SAE's per-input L0 at inference against the true L0, one panel per regime: the
    mean L0 of each true-L0 bucket (over inputs, then over seeds) and a band of ± the spread
    (standard deviation) of the per-input L0 within the bucket, mean over seeds."""
    regimes = result["regimes"]
    labels = result["labels"]
    color_of = _colors(list(dict.fromkeys(n for agg in result["summary"].values() for n in agg)))
    fig = Figure(figsize=(5.4 * len(regimes), 4.6))
    axes = fig.subplots(1, len(regimes), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        agg = result["summary"][regime["name"]]
        for name, a in agg.items():
            b = a["buckets"]
            x = np.array([r["true_l0"] for r in b])
            y = np.array([r["l0"] for r in b])
            spread = np.array([r.get("l0_spread", 0.0) for r in b])
            rho = a.get("spearman_l0")
            label = labels.get(name, name)
            label += f" (ρ {rho['mean']:.2f})" if rho else " (ρ -)"
            ax.plot(x, y, "o-", ms=3, color=color_of[name], label=label)
            ax.fill_between(x, y - spread, y + spread, color=color_of[name], alpha=0.12)
        lim = max(r["true_l0"] for a in agg.values() for r in a["buckets"]) + 1
        ax.plot([0, lim], [0, lim], color="black", lw=1, ls=":", label="identity")
        ax.set_title(
            f"{regime['name']}: L0 at inference per true-L0 bucket\n"
            "(mean; band ± sd over the bucket's inputs; ρ = Spearman over inputs)",
            fontsize=9,
        )
        ax.set_xlabel("true L0 (bucket mean)")
        ax.set_ylabel("SAE's L0 on the input (encode)")
        ax.set_xlim(0, lim)
        ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def make_plots(result: dict[str, Any], out_dir: Path) -> list[str]:
    """Every PNG of the result into ``out_dir``; returns the paths written."""
    k_hat, error, hist, l0 = (out_dir / name for name in PLOT_FILES)
    written = [plot_k_hat(result, k_hat)]
    written += [plot_error_by_true_l0(result, error), plot_true_l0_hist(result, hist)]
    written.append(plot_l0_vs_true_l0(result, l0))
    return [p for p in written if p is not None]
