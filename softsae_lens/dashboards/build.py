"""Stream text through a model once and turn an SAE's latents into dashboard data.

Holds :func:`token_rows` (texts and corpus documents to rows of token ids), :func:`stream`
(model forward to the SAE's hook, ``sae.encode``, :class:`~softsae_lens.dashboards.collect.LatentCollector`),
:func:`logit_effects` (the decoder directions through the final norm's scale and the
unembedding), :func:`select_latents` and :func:`build_dashboards`, which does all of it and
returns a :class:`Dashboards` (per-latent dicts ready for the pages and the Neuronpedia export).

Works for any SAELens SAE: latents fire where ``sae.encode`` is > 0; an SAE with ``predict_k``
(SoftSAE) also gets its per-token ``k_hat``. Must not depend on pages, files or CLIs.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from softsae_lens.dashboards.collect import LatentCollector, state_bytes

__all__ = [
    "Dashboards",
    "build_dashboards",
    "final_norm_scale",
    "logit_effects",
    "select_latents",
    "stream",
    "token_rows",
    "unembedding",
]


@dataclass
class Dashboards:
    """What :func:`build_dashboards` computed.

    Attributes:
        latents: one dict per selected latent (see :func:`latent_data`), in selection order.
        summary: every latent's density, count, max and mean activation (and mean ``k_hat``
            where it fires, for an SAE with ``k_hat``) as lists indexed by latent, plus totals.
        info: the run: model, hook, SAE, tokens, rows, seconds, tokens per second.
    """

    latents: list[dict[str, Any]]
    summary: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ text to token rows


def _bos(model: Any) -> int | None:
    tokenizer = getattr(model, "tokenizer", None)
    return getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None


def token_rows(
    model: Any,
    texts: Sequence[str] = (),
    documents: Sequence[str] = (),
    *,
    context_size: int = 128,
    max_tokens: int | None = None,
) -> list[torch.Tensor]:
    """Rows of token ids (1-D LongTensors of at most ``context_size``), each starting with BOS
    when the tokenizer has one.

    ``texts`` are split one by one (a long text gives several rows, the last one shorter);
    ``documents`` are packed end to end, separated by BOS, into full rows as SAELens's
    ``concat_and_batch_sequences`` does (the remainder is dropped). Stops once ``max_tokens``
    positions are reached (the last row cut to fit).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise TypeError(f"{type(model).__name__} has no tokenizer: texts cannot be tokenised")
    bos = _bos(model)
    head = [bos] if bos is not None else []
    body = context_size - len(head)
    rows: list[torch.Tensor] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, max(len(ids), 1), body):
            chunk = head + ids[start : start + body]
            if len(chunk) > len(head) or not ids:
                rows.append(torch.tensor(chunk, dtype=torch.long))
    if documents:
        from sae_lens.tokenization_and_batching import concat_and_batch_sequences

        encoded = (
            torch.tensor(tokenizer(d, add_special_tokens=False)["input_ids"], dtype=torch.long)
            for d in documents
        )
        packed = concat_and_batch_sequences(
            tokens_iterator=(t for t in encoded if t.numel()),
            context_size=context_size,
            begin_batch_token_id=bos,
            sequence_separator_token_id=bos,
        )
        total = sum(len(r) for r in rows)
        for row in packed:
            if max_tokens is not None and total >= max_tokens:
                break
            rows.append(row.long())
            total += len(row)
    if max_tokens is not None:
        kept, total = [], 0
        for row in rows:
            if total >= max_tokens:
                break
            kept.append(row[: max_tokens - total])
            total += len(kept[-1])
        rows = kept
    if not rows:
        raise ValueError("no tokens to stream: the texts and documents are empty")
    return rows


def _batches(rows: Sequence[torch.Tensor], batch_rows: int) -> list[torch.Tensor]:
    """Consecutive rows of equal length stacked, at most ``batch_rows`` per batch."""
    out: list[torch.Tensor] = []
    group: list[torch.Tensor] = []
    for row in rows:
        if group and (len(group) == batch_rows or len(row) != len(group[0])):
            out.append(torch.stack(group))
            group = []
        group.append(row)
    if group:
        out.append(torch.stack(group))
    return out


# ------------------------------------------------------------------ the stream


def _hook_acts(model: Any, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    stop = extract_stop_at_layer_from_tlens_hook_name(hook_name)
    _, cache = model.run_with_cache(tokens, names_filter=[hook_name], stop_at_layer=stop)
    if hook_name not in cache:
        raise ValueError(f"the model's cache has no {hook_name!r}: the SAE's hook is not there")
    return cache[hook_name]


@torch.no_grad()
def encode_batch(
    model: Any, sae: Any, tokens: torch.Tensor, hook_name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``sae.encode`` of the model's activations at ``hook_name`` on ``tokens`` ``[batch, pos]``
    (shape ``[batch, pos, d_sae]``), and ``k_hat`` ``[batch, pos]`` for SAEs with ``predict_k``."""
    x = _hook_acts(model, tokens.to(getattr(sae, "device", "cpu")), hook_name)
    x = x.to(next(sae.parameters()).dtype)
    acts = sae.encode(x)
    predict_k = getattr(sae, "predict_k", None)
    k_hat = predict_k(x).float() if callable(predict_k) else None
    return acts, k_hat


def stream(
    model: Any,
    sae: Any,
    batches: Sequence[torch.Tensor],
    collector: LatentCollector,
    hook_name: str,
    excluded_ids: Iterable[int] = (),
    *,
    progress: bool = True,
    on_first: Callable[[float], None] | None = None,
) -> float:
    """Feed every batch through the model and the SAE into ``collector``; returns seconds.

    ``on_first`` is called with the seconds the first batch took (for a cost estimate)."""
    from tqdm.auto import tqdm

    from softsae_lens.sae_bridge import special_token_mask

    ids = list(excluded_ids)
    start = time.perf_counter()
    bar = tqdm(
        total=sum(b.numel() for b in batches),
        unit="tok",
        desc="dashboards: streaming",
        disable=not progress,
    )
    for i, tokens in enumerate(batches):
        t0 = time.perf_counter()
        acts, k_hat = encode_batch(model, sae, tokens, hook_name)
        excluded = special_token_mask(tokens, ids) if ids else None
        collector.update(tokens, acts, k_hat, excluded)
        if i == 0 and on_first is not None:
            on_first(time.perf_counter() - t0)
        bar.update(tokens.numel())
    bar.close()
    return time.perf_counter() - start


# ------------------------------------------------------------------ logit effects


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


def _tracked_for(wanted: int | list[int], top_by: str, d_sae: int) -> torch.Tensor | None:
    if isinstance(wanted, list):
        return torch.tensor(wanted, dtype=torch.long)
    if top_by == "index":
        return torch.arange(min(wanted, d_sae))
    return None  # picked after the stream: track all


# ------------------------------------------------------------------ per-latent data


class _Decoder:
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
    decode: _Decoder,
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
    decode: _Decoder,
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


def _summary(collector: LatentCollector, dense_threshold: float) -> dict[str, Any]:
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
    return out


def hook_layer(hook_name: str) -> int | None:
    """The block number in a TransformerLens hook name (``blocks.5.hook_out`` -> 5)."""
    match = re.search(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


def build_dashboards(
    model: Any,
    sae: Any,
    rows: Sequence[torch.Tensor],
    *,
    latents: int | list[int] = 32,
    top_by: str = "frequency",
    hook_name: str | None = None,
    batch_rows: int = 8,
    n_top: int = 20,
    n_random: int = 60,
    before: int = 12,
    after: int = 4,
    n_intervals: int = 5,
    per_interval: int = 5,
    n_logits: int = 10,
    dense_threshold: float = 0.1,
    exclude_special_tokens: bool | Sequence[int] = True,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Dashboards:
    """Stream ``rows`` (token-id rows, see :func:`token_rows`) through ``model`` once and build
    the dashboard data of ``sae``'s latents.

    Args:
        latents: a number N of latents (picked by ``top_by`` after the stream: frequency, max,
            index or random) or a list of latent indices.
        hook_name: where the SAE reads the model (default: the SAE's metadata hook name,
            resolved to the name the model uses).
        exclude_special_tokens: BOS/EOS/PAD/SEP positions are left out of every statistic and
            never chosen as a context (True, as SAELens's run_evals), False for none, or ids.
        log: called with the cost estimate and a summary line (None: silent).
    """
    from softsae_lens.models import resolve_hook_name
    from softsae_lens.sae_bridge import special_token_ids

    sae.eval()
    hook = resolve_hook_name(model, hook_name or sae.cfg.metadata.hook_name)
    d_sae = int(sae.cfg.d_sae)
    if isinstance(latents, list):
        bad = [i for i in latents if not 0 <= i < d_sae]
        if bad:
            raise ValueError(f"--latents {bad}: this SAE has latents 0..{d_sae - 1}")
    tracked = _tracked_for(latents, top_by, d_sae)
    collector = LatentCollector(
        d_sae, tracked, n_top=n_top, n_random=n_random, before=before, after=after, seed=seed
    )
    batches = _batches(rows, batch_rows)
    n_positions = sum(b.numel() for b in batches)
    n_tracked = d_sae if tracked is None else len(tracked)
    mem = state_bytes(d_sae, n_tracked, n_top, n_random, before + after + 1, n_positions)
    batch_mem = 2 * batch_rows * max(len(r) for r in rows) * d_sae * 4
    if log is not None:
        log(
            f"dashboards: {n_positions:,} token positions in {len(rows):,} rows "
            f"({len(batches):,} forwards to {hook}), {d_sae:,} latents, {n_tracked:,} tracked "
            f"for contexts; state {mem / 2**20:,.0f} MiB + {batch_mem / 2**20:,.0f} MiB per batch"
        )

    def estimate(seconds: float) -> None:
        if log is not None:
            rate = batches[0].numel() / max(seconds, 1e-9)
            log(
                f"dashboards: first batch {seconds:.2f} s ({rate:,.0f} tokens/s) -> about "
                f"{n_positions / rate:,.0f} s for the stream"
            )

    excluded = special_token_ids(model, exclude_special_tokens)
    cpu_start = time.process_time()
    seconds = stream(
        model, sae, batches, collector, hook, excluded, progress=progress, on_first=estimate
    )
    cpu_seconds = time.process_time() - cpu_start
    chosen = select_latents(collector, latents, top_by, seed)
    arrays = collector.finish()
    decode = _Decoder(model)
    out_latents = []
    w_dec = sae.W_dec.detach().float().cpu()
    chunk = 256
    for start in range(0, len(chosen), chunk):
        part = chosen[start : start + chunk]
        effects = logit_effects(sae, model, part)
        for j, latent in enumerate(part):
            out_latents.append(
                latent_data(
                    collector,
                    latent,
                    arrays,
                    decode,
                    logits=None if effects is None else effects[j],
                    n_logits=n_logits,
                    n_intervals=n_intervals,
                    per_interval=per_interval,
                    w_dec_row=w_dec[latent],
                )
            )
    summary = _summary(collector, dense_threshold)
    info = {
        "hook_name": hook,
        "layer": hook_layer(hook),
        "d_sae": d_sae,
        "d_in": int(sae.cfg.d_in),
        "architecture": sae.cfg.architecture(),
        "has_k_hat": collector.has_k_hat,
        "n_positions": n_positions,
        "n_tokens": collector.n_tokens,
        "n_rows": collector.n_rows,
        "context_size": max(len(r) for r in rows),
        "seconds": seconds,
        "tokens_per_second": n_positions / max(seconds, 1e-9),
        # CPU time of this process (all its threads): what a shared machine disturbs least
        "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_second": n_positions / max(cpu_seconds, 1e-9),
        "excluded_token_ids": excluded,
        "logit_effects": unembedding(model) is not None,
        "final_norm_scale": final_norm_scale(model) is not None,
        "latents": chosen,
        "top_by": None if isinstance(latents, list) else top_by,
    }
    if log is not None:
        log(
            f"dashboards: {n_positions:,} positions in {seconds:.1f} s "
            f"({info['tokens_per_second']:,.0f} tokens/s, {cpu_seconds:.1f} CPU s); "
            f"{len(summary['dead']):,} dead, "
            f"{len(summary['dense']):,} dense (> {dense_threshold:g}) of {d_sae:,} latents"
        )
    return Dashboards(out_latents, summary, info)
