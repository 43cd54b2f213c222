"""The k_hat colour scale shared by the HTML page and the PNG views.

Holds :data:`K_COLORS` (the anchors), :data:`EXCLUDED_COLORS` (special tokens, off the scale),
:func:`k_colormap` (a matplotlib colormap through them),
:func:`color_for` (a token's background and a readable text colour) and :func:`k_range` (the
scale's default limits).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from matplotlib.colors import LinearSegmentedColormap, Normalize, to_hex

__all__ = ["EXCLUDED_COLORS", "K_COLORS", "color_for", "k_colormap", "k_range"]

# Sequential colour scale for k_hat, light (few latents) to dark (many): ColorBrewer YlGnBu.
K_COLORS: tuple[str, ...] = (
    "#ffffd9",
    "#edf8b1",
    "#c7e9b4",
    "#7fcdbb",
    "#41b6c4",
    "#1d91c0",
    "#225ea8",
    "#253494",
    "#081d58",
)
# Background and text of excluded special tokens: a neutral grey, outside the k_hat scale.
EXCLUDED_COLORS: tuple[str, str] = ("#e4e4e4", "#6b6b6b")
# Lookup-table size: fine enough that a colour rounded to 8 bits per channel is the exact linear
# interpolation between anchors (256 entries would shift some colours by one level).
_LUT_SIZE = 1 << 16
# Below this relative luminance the text turns white.
_DARK = 0.45


@lru_cache(maxsize=4)
def k_colormap(n_colors: int = _LUT_SIZE) -> LinearSegmentedColormap:
    """The k_hat colormap: :data:`K_COLORS` interpolated linearly, evenly spaced, in a lookup
    table of ``n_colors`` entries (a colorbar wants few, token backgrounds many)."""
    return LinearSegmentedColormap.from_list("k_hat", list(K_COLORS), N=n_colors)


def color_for(value: float, vmin: float, vmax: float) -> tuple[str, str]:
    """Background (``#rrggbb`` from :func:`k_colormap`) and a readable text colour for ``value``
    on a scale from ``vmin`` to ``vmax`` (clipped; the middle colour when the scale is empty)."""
    t = 0.5 if vmax <= vmin else float(Normalize(vmin, vmax, clip=True)(value))
    r, g, b, _ = k_colormap()(t)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return to_hex((r, g, b)), ("#ffffff" if luminance < _DARK else "#111111")


def k_range(values: Iterable[float], min_span: float = 1.0) -> tuple[float, float]:
    """The range of ``values``, widened to at least ``min_span`` (one latent) around its middle
    so that float noise on a near-constant k_hat does not become a full colour sweep; ``(0, 1)``
    when there are no values."""
    values = list(values)
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    return lo, hi
