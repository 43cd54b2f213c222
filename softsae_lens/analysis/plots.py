"""PNG views of token records, drawn with matplotlib's object-oriented API on an Agg canvas.

Holds :func:`plot_tokens_png` (the HTML page's view as an image) and :func:`plot_corpus_stats`
(k_hat per token class, and k_hat against the next-token loss). Figures are bare ``Figure``
objects with their own canvas: no pyplot, so no global backend switch or open windows. Must not
depend on models, splicing, pages or files other than the PNG it writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from softsae_lens.analysis.colors import EXCLUDED_COLORS, color_for, k_colormap, k_range
from softsae_lens.analysis.records import TOKEN_CLASSES, TokenRecord
from softsae_lens.analysis.stats import counted, k_loss_spearman

__all__ = ["plot_corpus_stats", "plot_tokens_png"]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path)
    return path


def _png_token_pieces(token: str) -> list[str]:
    """A token's text split into one piece per line (newlines become a trailing arrow)."""
    if token == "":
        return ["\u2205"]
    lines = token.replace("\t", "    ").split("\n")
    return [line + "\u21b5" for line in lines[:-1]] + [lines[-1]]


def plot_tokens_png(
    records: Sequence[TokenRecord],
    path: str | Path,
    *,
    title: str = "SoftSAE: latents per token (k_hat)",
    vmin: float | None = None,
    vmax: float | None = None,
    width_in: float = 12.0,
    max_tokens: int = 1500,
) -> Path:
    """The HTML page's view as a PNG: tokens laid out as monospace text, each on a background
    coloured by ``k_hat`` (same scale as :func:`~softsae_lens.analysis.render_html`; excluded
    special tokens grey), a colorbar below. Shows the first ``max_tokens`` tokens."""
    lo, hi = k_range(r.k_hat for r in counted(records))
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    if vmax <= vmin:
        vmax = vmin + 1.0
    shown = list(records[:max_tokens])
    font_size = 10.0
    char_w = 0.602 * font_size  # DejaVu Sans Mono advance width, in points
    line_h = 1.75 * font_size
    margin = 30.0
    usable = width_in * 72 - 2 * margin

    # Layout in points, y growing downwards.
    boxes: list[tuple[float, float, float, str, TokenRecord, bool]] = []
    labels: list[tuple[float, str]] = []
    y = 0.0
    x = 0.0
    current_doc = None
    id_docs = {r.text_index for r in shown if r.token_class == "token_id"}
    for r in shown:
        ids = r.text_index in id_docs
        if r.text_index != current_doc:
            y += line_h * (0.6 if current_doc is None else 1.5)
            labels.append((y, f"text {r.text_index}"))
            y += line_h
            x = 0.0
            current_doc = r.text_index
        pieces = _png_token_pieces(r.token)
        for i, text in enumerate(pieces):
            if i > 0:  # the token held a newline: the rest goes on the next line
                x, y = 0.0, y + line_h
            if not text:
                continue
            w = len(text) * char_w + (char_w * 0.6 if ids else 0)
            if x > 0 and x + w > usable:
                x, y = 0.0, y + line_h
            boxes.append((x, y, w, text, r, ids))
            x += w + (char_w * 0.6 if ids else 0)
    content_h = y + line_h
    header_h, footer_h = 40.0, 70.0
    height_pt = header_h + content_h + footer_h
    fig = _figure(width_in, height_pt / 72)
    ax = fig.add_axes((0, footer_h / height_pt, 1, content_h / height_pt))
    ax.set_xlim(-margin, usable + margin)
    ax.set_ylim(content_h, 0)
    ax.axis("off")
    norm = Normalize(vmin=vmin, vmax=vmax)
    rects, colors = [], []
    for bx, by, w, text, r, ids in boxes:
        rects.append(Rectangle((bx, by - line_h * 0.78), w, line_h * 0.92))
        bg, fg = EXCLUDED_COLORS if r.excluded else color_for(r.k_hat, vmin, vmax)
        colors.append(bg)
        ax.text(
            bx + (char_w * 0.3 if ids else 0),
            by - line_h * 0.27,
            text,
            fontsize=font_size,
            family="DejaVu Sans Mono",
            color=fg,
            va="baseline",
            ha="left",
        )
    ax.add_collection(PatchCollection(rects, facecolors=colors, edgecolors="white", linewidths=0.4))
    for ly, label in labels:
        ax.text(0, ly - line_h * 0.2, label, fontsize=8, color="#666666", style="italic")
    suffix = f" (first {max_tokens} of {len(records)} tokens)" if len(records) > max_tokens else ""
    fig.suptitle(title + suffix, y=1 - 12 / height_pt, fontsize=12)
    cax = fig.add_axes((0.25, 28 / height_pt, 0.5, 12 / height_pt))
    bar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=k_colormap(256)), cax=cax, orientation="horizontal"
    )
    bar.formatter.set_useOffset(False)
    bar.update_ticks()
    bar.set_label("k_hat (latents the SoftSAE predicts for the token)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    return _save(fig, path)


def plot_corpus_stats(
    records: Sequence[TokenRecord],
    path: str | Path,
    *,
    k_target: float | None = None,
    title: str = "SoftSAE k_hat over the corpus",
) -> Path:
    """Two panels: ``k_hat`` per token class (box plot with the points jittered on top), and
    ``k_hat`` against the clean model's next-token loss with the Spearman rho in the title.
    Excluded special tokens are left out (the title says how many)."""
    n_excluded = len(records) - len(counted(records))
    records = counted(records)
    if n_excluded:
        title = f"{title} ({n_excluded} special tokens left out)"
    fig = _figure(12.5, 4.8)
    ax_box, ax_scatter = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    classes = [c for c in TOKEN_CLASSES if any(r.token_class == c for r in records)]
    palette = dict(
        zip(
            TOKEN_CLASSES,
            ("#7f7f7f", "#e4572e", "#17becf", "#1d4e89", "#9467bd", "#8c564b"),
            strict=False,
        )
    )
    data = [[r.k_hat for r in records if r.token_class == c] for c in classes]
    if data:
        ax_box.boxplot(data, showfliers=False, widths=0.55)
        gen = torch.Generator().manual_seed(0)
        for i, (c, values) in enumerate(zip(classes, data, strict=True), start=1):
            jitter = (torch.rand(len(values), generator=gen) - 0.5) * 0.35
            ax_box.scatter(
                (i + jitter).tolist(), values, s=7, alpha=0.45, color=palette[c], linewidths=0
            )
        ax_box.set_xticks(
            range(1, len(classes) + 1),
            [f"{TOKEN_CLASSES[c]}\n(n={len(v)})" for c, v in zip(classes, data, strict=True)],
            fontsize=8,
        )
    if k_target is not None:
        ax_box.axhline(k_target, color="#999999", ls="--", lw=1, label=f"SAE k = {k_target:g}")
        ax_box.legend(fontsize=8, loc="upper right")
    ax_box.set_ylabel("k_hat")
    ax_box.set_title("k_hat per token class", fontsize=11)

    spearman = k_loss_spearman(records, "loss")
    for c in classes:
        pts = [(r.loss, r.k_hat) for r in records if r.token_class == c and r.loss is not None]
        pts = [p for p in pts if c != "first"]  # position 0 is left out of the correlation
        if pts:
            ax_scatter.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                s=10,
                alpha=0.6,
                color=palette[c],
                label=TOKEN_CLASSES[c],
                linewidths=0,
            )
    rho = spearman["rho"]
    rho_text = "n/a" if rho is None else f"{rho:+.3f}"
    p_value = spearman["p_value"]
    p_text = "" if p_value is None else f", p = {p_value:.2g}"
    ax_scatter.set_title(
        f"k_hat vs next-token loss: Spearman \u03c1 = {rho_text} (n = {spearman['n']}{p_text})",
        fontsize=11,
    )
    ax_scatter.set_xlabel("clean model's next-token loss (nats), positions > 0")
    ax_scatter.set_ylabel("k_hat")
    if classes:
        ax_scatter.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)
