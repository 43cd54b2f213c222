"""What a dashboard shows of one latent, from the collector's state after the stream.

Holds the logit effects (:func:`unembedding`, :func:`final_norm_scale`, :func:`logit_effects`),
:func:`select_latents` (which latents get pages), :func:`latent_data` (one latent's contexts,
intervals, histograms, logit tables, neuron alignment and k_hat comparison as a JSON-able dict)
and :func:`summary` (every latent's density, max and mean; dead and dense ones).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from softsae_lens.dashboards.collect import LatentCollector

__all__ = [
    "TokenDecoder",
    "final_norm_scale",
    "latent_data",
    "logit_effects",
    "select_latents",
    "summary",
    "tracked_for",
    "unembedding",
]


def unembedding(model: Any) -> torch.Tensor | None:
    """The model's unembedding ``W_U`` ``[d_model, d_vocab]`` (None when it has none)."""
    w_u = getattr(model, "W_U", None)
    return w_u.detach().float() if isinstance(w_u, torch.Tensor) else None


def final_norm_scale(model: Any) -> torch.Tensor | None:
    """The final norm's learned scale ``[d_model]`` (LayerNorm or RMSNorm weight), or None
    when the model has none (e.g. folded into ``W_U`` by TransformerLens)."""
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return None
    for owner in (ln, getattr(ln, "original_component", None)):
        for name in ("w", "weight"):
            value = getattr(owner, name, None) if owner is not None else None
            if isinstance(value, torch.Tensor) and value.dim() == 1:
                return value.detach().float()
    return None


@torch.no_grad()
def logit_effects(sae: Any, model: Any, latents: Sequence[int]) -> torch.Tensor | None:
    """``(W_dec[i] * final-norm scale) @ W_U`` for each latent in ``latents``:
    ``[len(latents), d_vocab]``, the direct effect of each decoder direction on the logits.
    None when the model has no unembedding or the SAE's width is not the model's."""
    w_u = unembedding(model)
    if w_u is None or sae.W_dec.shape[1] != w_u.shape[0]:
        return None
    dirs = sae.W_dec.detach().float()[torch.as_tensor(list(latents), dtype=torch.long)].cpu()
    scale = final_norm_scale(model)
    if scale is not None and scale.shape[0] == dirs.shape[1]:
        dirs = dirs * scale.cpu()
    return dirs @ w_u.cpu()


# ------------------------------------------------------------------ choosing latents


def select_latents(
    collector: LatentCollector, wanted: int | list[int], top_by: str, seed: int = 0
) -> list[int]:
    """The latents to build pages for: an explicit list as given, or ``wanted`` latents by
    ``top_by`` (frequency or max: largest first, firing ones only; index: 0..N-1; random:
    a seeded sample of the latents that fire)."""
    if isinstance(wanted, list):
        return wanted
    n = min(wanted, collector.d_sae)
    if top_by == "index":
        return list(range(n))
    alive = (collector.count > 0).nonzero().flatten().tolist()
    if top_by == "random":
        return sorted(random.Random(seed).sample(alive, min(n, len(alive))))
    key = collector.count.double() if top_by == "frequency" else collector.act_max.double()
    order = torch.argsort(key, descending=True, stable=True).tolist()
    return [i for i in order if collector.count[i] > 0][:n]


def tracked_for(wanted: int | list[int], top_by: str, d_sae: int) -> torch.Tensor | None:
    if isinstance(wanted, list):
        return torch.tensor(wanted, dtype=torch.long)
    if top_by == "index":
        return torch.arange(min(wanted, d_sae))
    return None  # picked after the stream: track all


# ------------------------------------------------------------------ per-latent data


class TokenDecoder:
    """Token id -> display string, cached (``tokenizer.decode`` of the single id)."""

    def __init__(self, model: Any) -> None:
        self.tokenizer = getattr(model, "tokenizer", None)
        self.cache: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        missing = sorted({int(i) for i in ids} - self.cache.keys())
        if missing:
            if self.tokenizer is None:
                self.cache.update({i: str(i) for i in missing})
            else:
                texts = self.tokenizer.batch_decode([[i] for i in missing])
                self.cache.update(zip(missing, texts, strict=True))
        return [self.cache[int(i)] for i in ids]


def _context(
    g: int,
    value: float,
    window: torch.Tensor,
    arrays: dict[str, torch.Tensor],
    before: int,
    decode: TokenDecoder,
) -> dict[str, Any]:
    """One context: the tokens around global position ``g`` (cut at its row's ends), the
    latent's activation at each, ``k_hat`` at each (SoftSAE) and which one qualifies."""
    pos, row_len = int(arrays["pos"][g]), int(arrays["row_len"][g])
    lo = max(-before, -pos)
    hi = min(len(window) - before - 1, row_len - pos - 1)
    span = range(g + lo, g + hi + 1)
    ids = arrays["tokens"][span.start : span.stop].tolist()
    acts = window[before + lo : before + hi + 1].tolist()
    out: dict[str, Any] = {
        "value": float(value),
        "row": int(arrays["row"][g]),
        "pos": pos,
        "index": -lo,
        "token_ids": ids,
        "tokens": decode(ids),
        "acts": [0.0 if math.isnan(a) else float(a) for a in acts],
        "excluded": arrays["excluded"][span.start : span.stop].tolist(),
    }
    if "k_hat" in arrays:
        k_hats = arrays["k_hat"][span.start : span.stop].tolist()
        out["k_hats"] = k_hats
        out["k_hat"] = k_hats[-lo]
    return out


def latent_data(
    collector: LatentCollector,
    latent: int,
    arrays: dict[str, torch.Tensor],
    decode: TokenDecoder,
    *,
    logits: torch.Tensor | None,
    n_logits: int = 10,
    n_intervals: int = 5,
    per_interval: int = 5,
    n_hist_bins: int = 40,
    w_dec_row: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Everything a page and the Neuronpedia export show of one latent (a JSON-able dict):
    ``density``, ``count``, ``max``, ``mean`` (of nonzero activations), ``hist``, ``top``
    (contexts, largest first), ``intervals`` (lower activation ranges with sampled contexts and
    the fraction of tokens in each), ``logits`` (``pos``/``neg`` tokens and values, and a
    histogram over the vocabulary), ``neuron_alignment`` and, with ``k_hat``,
    ``mean_k_hat_fired`` against ``mean_k_hat``."""
    row = int((collector.tracked == latent).nonzero().flatten()[0])
    count = int(collector.count[latent])
    vmax = float(collector.act_max[latent])
    out: dict[str, Any] = {
        "index": latent,
        "count": count,
        "density": count / max(collector.n_tokens, 1),
        "max": vmax,
        "mean": float(collector.act_sum[latent]) / count if count else 0.0,
    }
    centres, heights, width = collector.histogram(row, n_hist_bins)
    out["hist"] = {"centres": centres, "counts": heights, "width": width}
    before = collector.before
    top = collector.top
    out["top"] = [
        _context(int(g), float(v), top.window[row, j], arrays, before, decode)
        for j, (g, v) in enumerate(
            zip(top.index[row].tolist(), top.value[row].tolist(), strict=True)
        )
        if g >= 0
    ]
    # Interval samples: the random firing positions, minus those already shown as top ones.
    shown = {int(g) for g in top.index[row].tolist() if g >= 0}
    rnd = collector.random
    pool = [
        (int(g), float(v), rnd.window[row, j])
        for j, (g, v) in enumerate(
            zip(rnd.index[row].tolist(), rnd.value[row].tolist(), strict=True)
        )
        if g >= 0 and g not in shown
    ]
    intervals = []
    if vmax > 0 and n_intervals > 0:
        edges = torch.linspace(0, vmax, n_intervals + 1).tolist()
        for i in range(n_intervals - 1, -1, -1):
            lo, hi = edges[i], edges[i + 1]
            chosen = []
            for g, v, win in pool:
                inside = (lo < v <= hi) if i > 0 else (0 < v <= hi)
                if inside and len(chosen) < per_interval:
                    chosen.append(_context(g, v, win, arrays, before, decode))
            chosen.sort(key=lambda c: -c["value"])
            intervals.append(
                {
                    "lo": lo,
                    "hi": hi,
                    "contains": collector.count_between(row, lo if i > 0 else 0.0, hi)
                    / max(collector.n_tokens, 1),
                    "examples": chosen,
                }
            )
    out["intervals"] = intervals
    if logits is not None:
        n = min(n_logits, logits.numel())
        pos_v, pos_i = logits.topk(n)
        neg_v, neg_i = (-logits).topk(n)
        hist_counts = torch.histc(logits, bins=n_hist_bins).long().tolist()
        lmin, lmax = float(logits.min()), float(logits.max())
        step = (lmax - lmin) / n_hist_bins if lmax > lmin else 1.0
        out["logits"] = {
            "pos": list(zip(decode(pos_i.tolist()), pos_v.tolist(), strict=True)),
            "pos_ids": pos_i.tolist(),
            "neg": list(zip(decode(neg_i.tolist()), (-neg_v).tolist(), strict=True)),
            "neg_ids": neg_i.tolist(),
            "hist": {
                "centres": [lmin + (j + 0.5) * step for j in range(n_hist_bins)],
                "counts": hist_counts,
                "width": step,
            },
        }
    else:
        out["logits"] = None
    if w_dec_row is not None:
        w = w_dec_row.float()
        vals, idx = w.abs().topk(min(3, w.numel()))
        l1 = float(w.abs().sum()) or 1.0
        out["neuron_alignment"] = {
            "indices": idx.tolist(),
            "values": w[idx].tolist(),
            "l1": (vals / l1).tolist(),
        }
    fired = collector.mean_k_hat_fired()
    if fired is not None:
        out["mean_k_hat_fired"] = float(fired[latent]) if count else None
        out["mean_k_hat"] = collector.mean_k_hat()
    return out


def summary(
    collector: LatentCollector,
    dense_threshold: float,
    arrays: dict[str, torch.Tensor] | None = None,
    decode: TokenDecoder | None = None,
    n_top_tokens: int = 5,
) -> dict[str, Any]:
    """Every latent's density, count, max and mean activation, the dead and dense ones, and
    (given the per-token ``arrays`` and a ``decode``) the distinct tokens of each tracked latent's
    top ``n_top_tokens`` activations (``top_tokens``: the index page's search runs over them)."""
    density = collector.density()
    count = collector.count
    mean = torch.where(count > 0, collector.act_sum / count.clamp(min=1).double(), 0.0)
    dead = (count == 0).nonzero().flatten().tolist()
    dense = (density > dense_threshold).nonzero().flatten().tolist()
    out: dict[str, Any] = {
        "n_latents": collector.d_sae,
        "n_tokens": collector.n_tokens,
        "density": density.tolist(),
        "count": count.tolist(),
        "max": collector.act_max.tolist(),
        "mean": mean.tolist(),
        "dead": dead,
        "dense": dense,
        "dense_threshold": dense_threshold,
    }
    fired = collector.mean_k_hat_fired()
    if fired is not None:
        out["mean_k_hat"] = collector.mean_k_hat()
        out["mean_k_hat_fired"] = [None if math.isnan(v) else v for v in fired.tolist()]
    if arrays is not None and decode is not None:
        top_tokens: list[list[str]] = [[] for _ in range(collector.d_sae)]
        index = collector.top.index[:, :n_top_tokens]
        ids = arrays["tokens"][index.clamp(min=0)].tolist()
        for row, latent in enumerate(collector.tracked.tolist()):
            found = [i for i, g in zip(ids[row], index[row].tolist(), strict=True) if g >= 0]
            top_tokens[latent] = list(dict.fromkeys(decode(found)))
        out["top_tokens"] = top_tokens
    return out
