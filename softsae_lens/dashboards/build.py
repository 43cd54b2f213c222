"""Stream text through a model once and turn an SAE's latents into dashboard data.

Holds :func:`build_dashboards`, which streams token rows through the model and the SAE
(:mod:`~softsae_lens.dashboards.stream`), picks the latents and builds their data
(:mod:`~softsae_lens.dashboards.latents`), and returns a :class:`Dashboards` (per-latent dicts
ready for the pages and the Neuronpedia export).

Works for any SAELens SAE: latents fire where ``sae.encode`` is > 0; an SAE with ``predict_k``
(SoftSAE) also gets its per-token ``k_hat``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from softsae_lens.dashboards.collect import LatentCollector, state_bytes
from softsae_lens.dashboards.latents import (
    TokenDecoder,
    final_norm_scale,
    latent_data,
    logit_effects,
    select_latents,
    summary,
    tracked_for,
    unembedding,
)
from softsae_lens.dashboards.stream import batches_of, stream

__all__ = ["Dashboards", "build_dashboards", "hook_layer"]


@dataclass
class Dashboards:
    """What :func:`build_dashboards` computed.

    Attributes:
        latents: one dict per selected latent, in selection order (see
            :func:`~softsae_lens.dashboards.latents.latent_data`).
        summary: every latent's density, count, max and mean activation (and mean ``k_hat``
            where it fires, for an SAE with ``k_hat``) as lists indexed by latent, plus totals.
        info: the run: model, hook, SAE, tokens, rows, seconds, tokens per second.
    """

    latents: list[dict[str, Any]]
    summary: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


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
    """Stream ``rows`` (rows of token ids, see :func:`~softsae_lens.dashboards.stream.token_rows`)
    through ``model`` once and build the dashboard data of ``sae``'s latents.

    Args:
        latents: a number N of latents (picked by ``top_by`` after the stream: frequency, max,
            index or random) or a list of latent indices.
        hook_name: where the SAE reads the model (default: the SAE's metadata hook name,
            resolved to the name the model uses).
        exclude_special_tokens: BOS/EOS/PAD/SEP positions are left out of every statistic and
            never chosen as a context (True, as SAELens's run_evals), False for none, or ids.
        log: called with the cost estimate and a summary line (None: silent).
    """
    from softsae_lens.models.bridge import special_token_ids
    from softsae_lens.models.local import resolve_hook_name

    sae.eval()
    hook = resolve_hook_name(model, hook_name or sae.cfg.metadata.hook_name)
    d_sae = int(sae.cfg.d_sae)
    if isinstance(latents, list):
        bad = [i for i in latents if not 0 <= i < d_sae]
        if bad:
            raise ValueError(f"--latents {bad}: this SAE has latents 0..{d_sae - 1}")
    tracked = tracked_for(latents, top_by, d_sae)
    collector = LatentCollector(
        d_sae, tracked, n_top=n_top, n_random=n_random, before=before, after=after, seed=seed
    )
    batches = batches_of(rows, batch_rows)
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
    decode = TokenDecoder(model)
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
    stats = summary(collector, dense_threshold, arrays, decode)
    info = {
        # the CLI overwrites these two with the name it loaded and the text's description
        "model": getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__,
        "dataset": f"{len(rows):,} rows of token ids",
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
            f"{len(stats['dead']):,} dead, "
            f"{len(stats['dense']):,} dense (> {dense_threshold:g}) of {d_sae:,} latents"
        )
    return Dashboards(out_latents, stats, info)
