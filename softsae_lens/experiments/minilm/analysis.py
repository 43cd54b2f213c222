"""Which sentences SoftSAE gives the most and the fewest latents, and why: statistics only.

Per held-out sentence: ``k_hat`` against length (tokens), vocabulary (mean rarity of the words:
``-log10`` of their frequency in this corpus), code-likeness (share of words with ``_``,
``()``, dots or digits) and both SAEs' relative errors, as Spearman correlations; mean
``k_hat`` per category and per source; the sentences at both ends.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from softsae_lens.analysis.stats import spearman
from softsae_lens.experiments.minilm.sentences import Sentence

__all__ = ["analyse", "vocabulary_features"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.()]*")
_CODE_WORD = re.compile(r"_|\(\)|\w\.\w|\d")


def vocabulary_features(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per text: word count, mean word rarity (-log10 corpus frequency), share of code-like words."""
    words = [[w.lower() for w in _WORD.findall(t)] for t in texts]
    counts = Counter(w for ws in words for w in ws)
    total = sum(counts.values())
    rarity = np.array(
        [np.mean([-math.log10(counts[w] / total) for w in ws]) if ws else 0.0 for ws in words]
    )
    code = np.array(
        [np.mean([bool(_CODE_WORD.search(w)) for w in ws]) if ws else 0.0 for ws in words]
    )
    return {"n_words": np.array([len(ws) for ws in words]), "rarity": rarity, "code_share": code}


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (:func:`softsae_lens.analysis.stats.spearman`), NaN where it has none."""
    rho = spearman(a, b)["rho"]
    return math.nan if rho is None else rho


def analyse(
    sentences: list[Sentence], n_tokens: np.ndarray, runs: dict[str, Any]
) -> dict[str, Any]:
    """Which held-out sentences SoftSAE gives the most and the fewest latents, and why."""
    held = runs["held_out"]
    texts = [sentences[i].text for i in held]
    feats = vocabulary_features([s.text for s in sentences])
    soft, topk = runs["soft"]["rows"], runs["topk"]["rows"]
    k_hat = soft["k_hat"]
    per = {
        "tokens": n_tokens[held],
        "rarity": feats["rarity"][held],
        "code_share": feats["code_share"][held],
        "soft_rel_err": soft["sq_err"] / soft["norm_sq"],
        "topk_rel_err": topk["sq_err"] / topk["norm_sq"],
    }
    correlations = {name: _rho(k_hat, values) for name, values in per.items()}
    correlations["soft_l0"] = _rho(k_hat, soft["l0"])
    sources = np.array([sentences[i].source for i in held])
    categories = np.array([sentences[i].category for i in held])
    by_category = {
        c: {"n": int((categories == c).sum()), "k_hat_mean": float(k_hat[categories == c].mean())}
        for c in np.unique(categories)
    }
    by_source = {
        s: {"n": int((sources == s).sum()), "k_hat_mean": float(k_hat[sources == s].mean())}
        for s in np.unique(sources)
        if (sources == s).sum() >= 15
    }
    order = np.argsort(k_hat)

    def pick(i: int) -> dict[str, Any]:
        return {
            "k_hat": float(k_hat[i]),
            "tokens": int(per["tokens"][i]),
            "rarity": round(float(per["rarity"][i]), 2),
            "source": str(sources[i]),
            "text": texts[i],
        }

    return {
        "per_sentence": {"k_hat": k_hat, **per},
        "categories": categories,
        "spearman_k_hat": correlations,
        "by_category": by_category,
        "by_source": dict(sorted(by_source.items(), key=lambda kv: kv[1]["k_hat_mean"])),
        "fewest": [pick(i) for i in order[:8]],
        "most": [pick(i) for i in order[::-1][:8]],
    }
