"""The dashboard pages: an index over all latents and one page per latent, static HTML.

Holds :func:`render_index` and :func:`render_latent`, which fill ``templates/*.j2`` with jinja2
(autoescaped) and inline ``templates/dashboards.css`` and ``templates/index.js``: every page is
one file that opens from disk, with nothing fetched. Histograms are inline SVG drawn here, so
the latent pages need no script at all. Formatting happens here; the templates only lay out.
"""

from __future__ import annotations

from functools import cache, lru_cache
from html import escape
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["latent_page_name", "render_index", "render_latent"]

_TEMPLATES = "templates"
# Activation shading: this orange at full strength for the latent's max activation.
_SHADE = (234, 88, 12)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("softsae_lens.dashboards", _TEMPLATES),
        autoescape=select_autoescape(["html", "j2"], default_for_string=True),
        keep_trailing_newline=True,
    )


@cache
def _asset(name: str) -> str:
    return (resources.files("softsae_lens.dashboards") / _TEMPLATES / name).read_text("utf-8")


def latent_page_name(index: int) -> str:
    """A latent page's path relative to the output folder."""
    return f"latents/latent_{index}.html"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.{digits}g}"
    return f"{value:.{digits}f}"


def _pct(fraction: float) -> str:
    if fraction == 0:
        return "0%"
    return f"{100 * fraction:.3g}%"


def _visible(token: str) -> str:
    # Newlines and tabs show as arrows so a context stays on one line.
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5").replace("\r", "")


def _svg_hist(centres: list[float], counts: list[int], width: float, color: str) -> str:
    """A small bar chart (inline SVG) of a histogram, with the range under it."""
    if not counts or max(counts) == 0:
        return '<div class="hint">(empty)</div>'
    w, h, pad = 320, 90, 14
    n = len(counts)
    bw = w / n
    top = max(counts)
    bars = []
    for i, c in enumerate(counts):
        bh = (h - pad) * c / top
        lo = centres[i] - width / 2
        bars.append(
            f'<rect x="{i * bw:.2f}" y="{h - pad - bh:.2f}" width="{max(bw - 1, 0.5):.2f}" '
            f'height="{bh:.2f}" fill="{color}"><title>{escape(_num(lo))} to '
            f"{escape(_num(lo + width))}: {c}</title></rect>"
        )
    lo_label = _num(centres[0] - width / 2)
    hi_label = _num(centres[-1] + width / 2)
    return (
        f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">{"".join(bars)}'
        f'<text class="bar-label" x="0" y="{h - 2}">{escape(lo_label)}</text>'
        f'<text class="bar-label" x="{w}" y="{h - 2}" text-anchor="end">{escape(hi_label)}</text>'
        "</svg>"
    )


def _shade(act: float, vmax: float) -> str:
    a = 0.0 if vmax <= 0 else max(0.0, min(1.0, act / vmax))
    return f"rgba({_SHADE[0]},{_SHADE[1]},{_SHADE[2]},{0.85 * a:.3f})" if a > 0 else "transparent"


def _context_view(c: dict[str, Any], vmax: float) -> dict[str, Any]:
    tokens = []
    k_hats = c.get("k_hats")
    for j, (text, act) in enumerate(zip(c["tokens"], c["acts"], strict=True)):
        title = f"{text!r}  activation {_num(act)}"
        if k_hats is not None:
            title += f"  k_hat {k_hats[j]:.2f}"
        if c["excluded"][j]:
            title += "  (special token: not counted)"
        tokens.append(
            {
                "text": _visible(text) or "\u2205",
                "bg": _shade(act, vmax),
                "q": j == c["index"],
                "x": bool(c["excluded"][j]),
                "title": title,
            }
        )
    q = c["index"]
    return {
        "value": _num(c["value"]),
        "k_hat": None if c.get("k_hat") is None else f"{c['k_hat']:.2f}",
        "before": tokens[:q],
        "token": tokens[q],
        "after": tokens[q + 1 :],
    }


def render_latent(latent: dict[str, Any], info: dict[str, Any], title_prefix: str = "") -> str:
    """The page of one latent (a dict from :func:`~softsae_lens.dashboards.build.latent_data`)."""
    vmax = latent["max"]
    k_hat = None
    if latent.get("mean_k_hat") is not None:
        fired, overall = latent.get("mean_k_hat_fired"), latent["mean_k_hat"]
        if fired is None:
            verdict = "never fires"
        else:
            diff = fired - overall
            if abs(diff) < 0.05 * abs(overall):
                verdict = f"{diff:+.2f}: about average"
            else:
                longer = "longer" if diff > 0 else "shorter"
                verdict = f"{diff:+.2f}: fires on tokens given {longer} explanations than average"

        k_hat = {"fired": _num(fired, 2), "overall": _num(overall, 2), "verdict": verdict}
    logits = latent.get("logits")
    logit_view = None
    logit_svg = ""
    if logits:
        logit_view = {
            "pos": [(_visible(t) or "\u2205", f"{v:+.3f}") for t, v in logits["pos"]],
            "neg": [(_visible(t) or "\u2205", f"{v:+.3f}") for t, v in logits["neg"]],
        }
        hist = logits["hist"]
        logit_svg = '<div class="hint">Logit effect over the whole vocabulary:</div>' + _svg_hist(
            hist["centres"], hist["counts"], hist["width"], "#7c8db5"
        )
    hist = latent["hist"]
    return (
        _environment()
        .get_template("latent.html.j2")
        .render(
            title=f"{title_prefix}latent {latent['index']}",
            subtitle=_subtitle(info),
            index=latent["index"],
            density=_pct(latent["density"]),
            count=f"{latent['count']:,}",
            n_tokens=f"{info['n_tokens']:,}",
            max=_num(vmax),
            mean=_num(latent["mean"]),
            k_hat=k_hat,
            has_k_hat=info.get("has_k_hat", False),
            act_svg=_svg_hist(hist["centres"], hist["counts"], hist["width"], "#ea580c"),
            logits=logit_view,
            logit_svg=logit_svg,
            norm_scale=info.get("final_norm_scale", False),
            top=[_context_view(c, vmax) for c in latent["top"]],
            intervals=[
                {
                    "lo": _num(g["lo"]),
                    "hi": _num(g["hi"]),
                    "contains": _pct(g["contains"]),
                    "examples": [_context_view(c, vmax) for c in g["examples"]],
                }
                for g in latent["intervals"]
            ],
            css=_asset("dashboards.css"),
        )
    )


def _subtitle(info: dict[str, Any]) -> str:
    parts = [
        f"{info.get('architecture', '?')} SAE, {info.get('d_sae', '?'):,} latents",
        f"model {info.get('model', '?')}",
        f"hook {info.get('hook_name', '?')}",
        f"{info.get('n_tokens', 0):,} tokens of {info.get('dataset', 'text')}",
    ]
    return " \u00b7 ".join(parts)


def render_index(
    summary: dict[str, Any],
    info: dict[str, Any],
    latents: list[dict[str, Any]],
    title: str = "SAE latents",
    max_listed: int = 400,
) -> str:
    """The index page: every latent's density, max and mean activation (and mean k_hat when it
    fires), sortable by column, a search box over latent indices and top tokens (the top
    activating ones of every tracked latent, and the promoted ones of latents with pages), and
    the dead and dense latents. ``latents`` are the ones with pages."""
    pages = {lat["index"]: lat for lat in latents}
    has_k = "mean_k_hat_fired" in summary
    rows = []
    for i in range(summary["n_latents"]):
        lat = pages.get(i)
        # the top activating tokens (every tracked latent) and, with a page, the promoted ones
        acts = (summary.get("top_tokens") or [[]] * summary["n_latents"])[i]
        if lat is not None and not acts:
            acts = list(dict.fromkeys(c["tokens"][c["index"]] for c in lat["top"][:5]))
        promoted = [t for t, _ in ((lat or {}).get("logits") or {}).get("pos", [])[:5]]
        words = " ".join(repr(t)[1:-1] for t in acts)
        if promoted:
            words += " \u00b7 " + " ".join(repr(t)[1:-1] for t in promoted)
        k = summary["mean_k_hat_fired"][i] if has_k else None
        rows.append(
            {
                "index": i,
                "page": latent_page_name(i) if lat is not None else None,
                "density": _pct(summary["density"][i]),
                "density_v": f"{summary['density'][i]:.6g}",
                "max": _num(summary["max"][i]),
                "max_v": f"{summary['max'][i]:.6g}",
                "mean": _num(summary["mean"][i]),
                "mean_v": f"{summary['mean'][i]:.6g}",
                "k": _num(k, 2) if k is not None else "",
                "k_v": "" if k is None else f"{k:.6g}",
                "tokens": words,
                "search": words.lower(),
                "dead": summary["count"][i] == 0,
            }
        )
    dead = summary["dead"]
    dense = [
        {
            "index": i,
            "density": _pct(summary["density"][i]),
            "page": latent_page_name(i) if i in pages else None,
        }
        for i in sorted(summary["dense"], key=lambda i: -summary["density"][i])
    ]
    return (
        _environment()
        .get_template("index.html.j2")
        .render(
            title=title,
            subtitle=_subtitle(info),
            n_tokens=f"{summary['n_tokens']:,}",
            n_latents=f"{summary['n_latents']:,}",
            n_pages=len(latents),
            n_dead=f"{len(dead):,}",
            dead_pct=_pct(len(dead) / max(summary["n_latents"], 1)),
            dead=", ".join(f"#{i}" for i in dead[:max_listed]),
            dead_more=max(len(dead) - max_listed, 0),
            n_dense=f"{len(dense):,}",
            dense=dense[:max_listed],
            dense_threshold=_pct(summary["dense_threshold"]),
            mean_k_hat=_num(summary.get("mean_k_hat"), 2) if has_k else None,
            has_k_hat=has_k,
            rows=rows,
            css=_asset("dashboards.css"),
            js=_asset("index.js"),
        )
    )
