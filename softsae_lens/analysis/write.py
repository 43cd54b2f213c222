"""The analysis folder: one call that writes the page, the records, the statistics and the PNGs.

Holds :func:`write_analysis`. The one module here that writes files; it composes the others and
must not be imported by them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softsae_lens.analysis.plots import plot_corpus_stats, plot_tokens_png
from softsae_lens.analysis.records import TokenRecord, sae_info
from softsae_lens.analysis.render import render_html
from softsae_lens.analysis.stats import corpus_stats

__all__ = ["write_analysis"]


def write_analysis(
    records: Sequence[TokenRecord],
    out_dir: str | Path,
    *,
    sae: Any | None = None,
    meta: dict[str, Any] | None = None,
    title: str = "SoftSAE: latents per token",
    png: bool = True,
) -> dict[str, Path]:
    """Write ``tokens.html``, ``records.json``, ``corpus_stats.json`` and, with ``png``,
    ``tokens.png`` and ``corpus_stats.png`` into ``out_dir``.

    Returns the written paths by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(meta or {})
    if sae is not None:
        info.setdefault("sae", sae_info(sae))
    subtitle_bits = []
    sae_facts = info.get("sae") or {}
    if info.get("model"):
        subtitle_bits.append(str(info["model"]))
    if sae_facts.get("hook_name"):
        subtitle_bits.append(str(sae_facts["hook_name"]))
    if sae_facts.get("k") is not None:
        subtitle_bits.append(f"SAE k={sae_facts['k']}, k_max={sae_facts.get('k_max')}")
    paths = {
        "html": out / "tokens.html",
        "records": out / "records.json",
        "corpus_stats": out / "corpus_stats.json",
    }
    paths["html"].write_text(
        render_html(records, title=title, subtitle=" \u00b7 ".join(subtitle_bits)),
        encoding="utf-8",
    )
    paths["records"].write_text(
        json.dumps({**info, "records": [r.to_dict() for r in records]}, indent=1) + "\n",
        encoding="utf-8",
    )
    stats = {**info, **corpus_stats(records)}
    paths["corpus_stats"].write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    if png:
        paths["png"] = plot_tokens_png(records, out / "tokens.png", title=title)
        paths["corpus_stats_png"] = plot_corpus_stats(
            records, out / "corpus_stats.png", k_target=sae_facts.get("k")
        )
    return paths
