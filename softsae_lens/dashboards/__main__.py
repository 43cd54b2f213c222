"""``python -m softsae_lens.dashboards``: per-latent dashboards of a saved SAE, offline.

Usage::

    python -m softsae_lens.dashboards --sae out/demo/saes/softsae --corpus pydoc \\
        --latents 32 --top-by frequency --out out/dashboards/softsae
    python -m softsae_lens.dashboards --sae DIR --text "Some text" "More text" --latents 3,17,42

Loads the SAE with ``SAE.load_from_disk`` (any registered architecture; ``import softsae_lens``
registers "soft") and the model as ``python -m softsae_lens.analyze`` does
(:func:`softsae_lens.models.load_model`: ``--model-path``, ``--model``, else the SAE's
metadata, else SmolLM2 offline). Prints the cost before the stream, shows a progress bar, and
writes ``index.html``, ``latents/``, ``dashboards.json`` and ``neuronpedia/`` into ``--out``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softsae_lens.dashboards.config import DashboardsConfig, parse_latents

__all__ = ["main", "parse_args", "run"]


def parse_args(argv: Sequence[str]) -> DashboardsConfig:
    """Parse the flags into a :class:`DashboardsConfig` (help from its field docstrings;
    ``--a_b`` accepted for ``--a-b``)."""
    from softsae_lens.flags import config_parser, parse_config

    parser = config_parser(DashboardsConfig, "python -m softsae_lens.dashboards")
    return parse_config(parser, argv).cfg


def _documents(cfg: DashboardsConfig) -> tuple[list[str], str]:
    if cfg.corpus is None:
        return [], ""
    from softsae_lens.data.corpus import load_corpus, split_documents

    sources = tuple(s.strip() for s in cfg.corpus.split(",") if s.strip())
    corpus = load_corpus(sources)
    _, heldout = split_documents(corpus.documents, 0.1, cfg.seed)
    return heldout, f"{corpus.name} (held out)"


def run(cfg: DashboardsConfig, *, model: Any | None = None, progress: bool = True) -> dict:
    """Build and write the dashboards ``cfg`` asks for. ``model`` (tests, notebooks) skips
    model loading. Returns ``{"paths": ..., "info": ..., "dashboards": Dashboards}``."""
    cfg.validate()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sae_lens import SAE

    import softsae_lens  # noqa: F401  (registers "soft")
    from softsae_lens.dashboards.build import build_dashboards
    from softsae_lens.dashboards.stream import token_rows
    from softsae_lens.dashboards.write import write_dashboards

    sae = SAE.load_from_disk(str(cfg.sae), device=cfg.device)
    if model is None:
        from softsae_lens.models import load_model

        t0 = time.perf_counter()
        model, model_name = load_model(cfg.model, cfg.device, path=cfg.model_path, sae=sae)
        print(f"dashboards: loaded {model_name} in {time.perf_counter() - t0:.0f} s")
    else:
        model_name = (
            getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__
        )
    texts = list(cfg.text) + [Path(p).read_text(encoding="utf-8") for p in cfg.text_file]
    documents, dataset = _documents(cfg)
    if texts:
        dataset = " + ".join(filter(None, [f"{len(texts)} given text(s)", dataset]))
    rows = token_rows(
        model, texts, documents, context_size=cfg.context_size, max_tokens=cfg.max_tokens
    )
    dash = build_dashboards(
        model,
        sae,
        rows,
        latents=parse_latents(cfg.latents),
        top_by=cfg.top_by,
        batch_rows=cfg.batch_rows,
        n_top=cfg.n_top,
        n_random=cfg.n_random,
        before=cfg.before,
        after=cfg.after,
        n_intervals=cfg.n_intervals,
        per_interval=cfg.per_interval,
        n_logits=cfg.n_logits,
        dense_threshold=cfg.dense_threshold,
        exclude_special_tokens=not cfg.include_special_tokens,
        seed=cfg.seed,
        progress=progress,
    )
    sae_name = Path(cfg.sae).resolve().name
    dash.info.update({"model": str(model_name), "dataset": dataset, "sae_path": str(cfg.sae)})
    paths = write_dashboards(
        dash,
        cfg.out,
        title=f"{sae_name} ({dash.info['architecture']})",
        neuronpedia=cfg.neuronpedia,
        np_model_id=cfg.np_model_id,
        np_sae_set=cfg.np_sae_set or sae_name,
    )
    print(
        f"dashboards: wrote {paths['index']} and {len(paths['latents'])} latent pages"
        + (f", {len(paths['neuronpedia'])} Neuronpedia files" if "neuronpedia" in paths else "")
    )
    return {"paths": paths, "info": dash.info, "dashboards": dash}


def main(argv: Sequence[str] | None = None) -> dict:
    """The CLI: parse, run, and turn a user's mistake into a one-line error (exit 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_args(argv)
        return run(cfg)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
