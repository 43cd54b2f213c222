"""The HTML page of token records: every token shaded by k_hat, hover and click for details.

Holds :func:`render_html`, which fills ``templates/tokens.html.j2`` with jinja2 (autoescaped)
and inlines ``templates/tokens.css`` and ``templates/tokens.js`` so the page is one
self-contained file. The script never writes ``</`` and builds its DOM with ``textContent``,
never ``innerHTML``, so token text cannot inject markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from softsae_lens.analysis.colors import EXCLUDED_COLORS, K_COLORS, color_for, k_range
from softsae_lens.analysis.records import TokenRecord

__all__ = ["render_html"]

_TEMPLATES = "templates"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("softsae_lens.analysis", _TEMPLATES),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True),
        keep_trailing_newline=True,
    )


@cache
def _asset(name: str) -> str:
    # Read verbatim, not rendered (CSS and JavaScript braces are not template syntax); the
    # template inserts it with |safe.
    return (resources.files("softsae_lens.analysis") / _TEMPLATES / name).read_text("utf-8")


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    return (
        f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.{digits}f}"
    )


def _mean(values: Iterable[float]) -> str:
    values = list(values)
    return f"{sum(values) / len(values) if values else float('nan'):.2f}"


def _token_title(r: TokenRecord) -> str:
    top = ", ".join(f"#{i} {v:.2f}" for i, v in r.top_latents[:5])
    return (
        f"{r.token!r}  k_hat={r.k_hat:.2f} (k={r.k})  L0={r.l0}  "
        f"recon err={_fmt(r.recon_error)}\ntop: {top or 'none'}"
    )


def _token_view(r: TokenRecord, vmin: float, vmax: float) -> dict[str, Any]:
    """Everything the template shows of one token, formatted (the template only lays out)."""
    bg, fg = EXCLUDED_COLORS if r.excluded else color_for(r.k_hat, vmin, vmax)
    return {
        "bg": bg,
        "fg": fg,
        "doc": r.text_index,
        "pos": r.position,
        "id": r.token_id,
        "tok": r.token,
        "cls": r.token_class,
        "k": f"{r.k_hat:.3f}",
        "kint": r.k,
        "l0": r.l0,
        "err": _fmt(r.recon_error),
        "rel": _fmt(r.recon_error_rel),
        "loss": _fmt(r.loss),
        "spl": _fmt(r.loss_spliced),
        "top": " ".join(f"{i}:{v:.3f}" for i, v in r.top_latents),
        "title": _token_title(r)
        + ("\nspecial token: not spliced, not counted" if r.excluded else ""),
        "excluded": r.excluded,
        # Newlines show as a faint arrow plus a line break; an empty token as a faint mark.
        "lines": r.token.split("\n") if r.token else [],
    }


def render_html(
    records: Sequence[TokenRecord],
    *,
    title: str = "SoftSAE: latents per token",
    subtitle: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> str:
    """A self-contained HTML page (inline CSS and JS, no external resource) of the texts with
    every token shaded by ``k_hat``.

    Each token is a ``<span class="tok">`` carrying its numbers in ``data-*`` attributes (and a
    ``title`` tooltip as a no-JavaScript fallback): hovering shows a tooltip with ``k_hat``, L0,
    reconstruction error, loss and the top latents; clicking pins them in the side panel.
    Newlines show as a faint arrow and a line break, spaces are kept (``white-space:
    pre-wrap``). The colour scale runs from ``vmin`` to ``vmax`` (default: the range of the
    counted records). Excluded special tokens are grey and left out of the means and the scale;
    the header says how many there are.
    """
    kept = [r for r in records if not r.excluded]
    lo, hi = k_range(r.k_hat for r in kept)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    if vmax <= vmin:
        vmax = vmin + 1.0
    by_text: dict[int, list[TokenRecord]] = {}
    for r in records:
        by_text.setdefault(r.text_index, []).append(r)
    docs = [
        {
            "index": index,
            "n_tokens": len(toks),
            "mean_k_hat": _mean(r.k_hat for r in toks if not r.excluded),
            "mean_l0": _mean(r.l0 for r in toks if not r.excluded),
            # Texts of a model with no tokenizer show ids: space them apart (BOS included).
            "span_class": "tok id" if any(r.token_class == "token_id" for r in toks) else "tok",
            "tokens": [_token_view(r, vmin, vmax) for r in toks],
        }
        for index, toks in by_text.items()
    ]
    return (
        _environment()
        .get_template("tokens.html.j2")
        .render(
            title=title,
            subtitle=subtitle,
            n_tokens=len(records),
            n_excluded=len(records) - len(kept),
            mean_k_hat=_mean(r.k_hat for r in kept),
            gradient=", ".join(K_COLORS),
            ticks=[f"{v:.2f}" for v in (vmin, (vmin + vmax) / 2, vmax)],
            docs=docs,
            css=_asset("tokens.css"),
            js=_asset("tokens.js"),
        )
    )
