"""Write a :class:`~softsae_lens.dashboards.build.Dashboards` to one static folder.

``index.html``, ``latents/latent_<i>.html``, ``dashboards.json`` (every number the pages show)
and, optionally, ``neuronpedia/`` (:mod:`softsae_lens.dashboards.neuronpedia`). Every page is
self-contained (inline CSS and script, nothing fetched), so the folder opens from disk.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from softsae_lens.dashboards.build import Dashboards
from softsae_lens.dashboards.neuronpedia import write_neuronpedia
from softsae_lens.dashboards.render import latent_page_name, render_index, render_latent

__all__ = ["default_model_id", "write_dashboards"]


def default_model_id(model_name: str) -> str:
    """A Neuronpedia-style model id from a model name or path (``SmolLM2-135M-Instruct`` ->
    ``smollm2-135m-instruct``)."""
    base = Path(str(model_name)).name or str(model_name)
    base = re.sub(r"\.gguf$", "", base, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9.\-]+", "-", base.lower()).strip("-") or "model"


def write_dashboards(
    dash: Dashboards,
    out: Path | str,
    *,
    title: str = "SAE latents",
    neuronpedia: bool = True,
    np_model_id: str | None = None,
    np_sae_set: str = "sae",
) -> dict[str, Any]:
    """Write the folder; returns the paths written (``index``, ``latents``, ``json``,
    ``neuronpedia``)."""
    out = Path(out)
    (out / "latents").mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(render_index(dash.summary, dash.info, dash.latents, title), "utf-8")
    pages = []
    for latent in dash.latents:
        path = out / latent_page_name(latent["index"])
        path.write_text(render_latent(latent, dash.info, f"{title}: "), "utf-8")
        pages.append(path)
    data = out / "dashboards.json"
    data.write_text(
        json.dumps({"info": dash.info, "summary": dash.summary, "latents": dash.latents}),
        "utf-8",
    )
    paths: dict[str, Any] = {"index": index, "latents": pages, "json": data}
    if neuronpedia:
        paths["neuronpedia"] = write_neuronpedia(
            out / "neuronpedia",
            dash.latents,
            dash.info,
            model_id=np_model_id or default_model_id(dash.info.get("model", "model")),
            sae_set=np_sae_set,
        )
    return paths
