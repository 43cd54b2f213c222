"""Text to token rows, and the one pass through the model that feeds a LatentCollector.

Holds :func:`token_rows` (texts and corpus documents to rows of token ids), :func:`encode_batch`
(the model's activations at the SAE's hook, ``sae.encode`` and, for an SAE with ``predict_k``,
``k_hat``) and :func:`stream` (every batch through both, into a
:class:`~softsae_lens.dashboards.collect.LatentCollector`, with a progress bar).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from softsae_lens.dashboards.collect import LatentCollector

__all__ = ["batches_of", "encode_batch", "stream", "token_rows"]


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


def batches_of(rows: Sequence[torch.Tensor], batch_rows: int) -> list[torch.Tensor]:
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

    from softsae_lens.models.bridge import special_token_mask

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
