"""Running the example end to end: corpus and embeddings, both SAEs, the analysis, then
``results.md``, ``results.json`` and ``k_hat.png`` in ``--out``.

The orchestration only: each step lives in its own module of this package, and none of those
may import this one (the package re-exports :func:`main` and :func:`run_experiment`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from softsae_lens.experiments.minilm.analysis import analyse
from softsae_lens.experiments.minilm.config import Settings, parse_args
from softsae_lens.experiments.minilm.embed import prepare
from softsae_lens.experiments.minilm.plots import make_plot
from softsae_lens.experiments.minilm.report import jsonable, markdown_report
from softsae_lens.experiments.minilm.sentences import REFERENCE
from softsae_lens.experiments.minilm.train import train_both

__all__ = ["main", "run_experiment"]


def run_experiment(settings: Settings) -> dict[str, Any]:
    """Sentences, embeddings, both SAEs trained and scored, and the analysis, as one dict."""
    torch.manual_seed(settings.seed)
    sentences, emb_path, n_tokens = prepare(settings)
    runs = train_both(settings, emb_path, len(sentences))
    analysis = analyse(sentences, n_tokens, runs)
    analysis["reference_sources"] = sorted({s.source for s in sentences if s.category == REFERENCE})
    settings_dict = {k: str(v) if isinstance(v, Path) else v for k, v in settings.__dict__.items()}
    return {
        "settings": settings_dict,
        "n_sentences": len(sentences),
        "n_held_out": len(runs["held_out"]),
        "runs": runs,
        "analysis": analysis,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line: run, then write ``results.md``, ``results.json`` and ``k_hat.png``."""
    settings = parse_args(argv)
    start = time.perf_counter()
    result = run_experiment(settings)
    plot = make_plot(result, settings.out / "k_hat.png")
    result["wall_seconds"] = time.perf_counter() - start
    report = markdown_report(result)
    (settings.out / "results.md").write_text(
        report + f"\nWall time: {result['wall_seconds']:.0f} s.\n"
    )
    (settings.out / "results.json").write_text(json.dumps(jsonable(result), indent=1))
    print(report)
    print(f"wrote {settings.out / 'results.md'}, {settings.out / 'results.json'}, {plot}")
    return result
