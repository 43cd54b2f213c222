"""A language model's activations at one hook, computed once and kept on disk as a ``.npy``.

Training many SAEs on the same tokens need not run the model once per SAE (or once per process
when SAEs train in parallel processes): :func:`cache_lm_activations` runs it once and writes the
rows to a file named by a digest of what produced them (model name, hook, the token ids
themselves, the special tokens left out and the row count), so a later run, or a concurrent one
on another core, reads the same file. :func:`softsae_lens.training.on_arrays.train_on_activations`
trains from it (memory-mapped, so the file may be larger than RAM).

Concurrent callers asking for the same file are serialised by an ``fcntl`` lock: the first
computes it, the others wait and then read it. The file appears under its final name only when
whole (written as ``*.partial.npy``, then renamed), so a killed run leaves no half-file behind
that a later one would trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["cache_lm_activations", "cached_activations_path"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def cached_activations_path(
    folder: Path | str,
    model_name: str,
    hook_name: str,
    tokens: torch.Tensor,
    n_rows: int | None,
    exclude_token_ids: Sequence[int] = (),
) -> Path:
    """Where :func:`cache_lm_activations` keeps the activations of these exact inputs."""
    digest = hashlib.sha256()
    header = {
        "model": model_name,
        "hook": hook_name,
        "shape": list(tokens.shape),
        "n_rows": n_rows,
        "exclude": sorted(int(i) for i in exclude_token_ids),
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
    rows = "all" if n_rows is None else str(n_rows)
    return Path(folder) / f"{_slug(model_name)}-{hook_name}-{digest.hexdigest()[:16]}-{rows}.npy"


def _stop_at_layer(hook_name: str) -> dict[str, int]:
    layer = re.match(r"blocks\.(\d+)\.", hook_name)
    # no layer after the hook's is needed; a bridge's hook names follow the same pattern
    return {"stop_at_layer": int(layer.group(1)) + 1} if layer else {}


def cache_lm_activations(
    model: Any,
    hook_name: str,
    tokens: torch.Tensor,
    folder: Path | str,
    model_name: str,
    n_rows: int | None = None,
    exclude_token_ids: Sequence[int] = (),
    batch_rows: int = 8,
    progress: bool = True,
) -> Path:
    """The activations of ``hook_name`` on ``tokens`` as a ``[n_rows, d_model]`` float32 .npy.

    Args:
        model: a TransformerLens ``HookedTransformer`` (or a bridge) with ``run_with_cache``.
        hook_name: the hook whose output is stored.
        tokens: ``[rows, context]`` token ids, fed as they are (no BOS is prepended).
        folder: where the file lives; created if absent.
        model_name: part of the file's name and key.
        n_rows: keep the first ``n_rows`` activations (in row order) of the tokens not left
            out; None keeps all of them. More than the tokens hold raises ValueError.
        exclude_token_ids: token ids whose activations are not stored (SAELens's training
            stream leaves out the tokenizer's special tokens the same way).
        batch_rows: token rows per model forward.
        progress: a tqdm bar over the forwards.

    Returns the path; present files are returned without running the model.
    """
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(
            f"tokens: expected a non-empty [rows, context] tensor, got {tuple(tokens.shape)}"
        )
    if batch_rows <= 0:
        raise ValueError(f"batch_rows={batch_rows}: must be a positive integer")
    exclude = torch.tensor(sorted(int(i) for i in exclude_token_ids), dtype=torch.long)
    keep = ~torch.isin(tokens, exclude)
    available = int(keep.sum())
    if n_rows is not None and not 0 < n_rows <= available:
        raise ValueError(
            f"n_rows={n_rows}: must be between 1 and the {available:,} tokens of `tokens` that "
            f"are not left out ({tokens.shape[0]} rows of {tokens.shape[1]})"
        )
    want = available if n_rows is None else n_rows
    path = cached_activations_path(folder, model_name, hook_name, tokens, n_rows, exclude.tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent caller of the same file waits here
        if path.exists():
            return path
        _compute(model, hook_name, tokens, keep, want, path, batch_rows, progress)
    return path


@torch.no_grad()
def _compute(
    model: Any,
    hook_name: str,
    tokens: torch.Tensor,
    keep: torch.Tensor,
    want: int,
    path: Path,
    batch_rows: int,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    partial = path.with_name(path.stem + ".partial.npy")
    d_model = int(model.cfg.d_model)
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(want, d_model))
    # only the rows whose kept tokens reach `want` are run through the model
    last_row = int(torch.searchsorted(keep.sum(1).cumsum(0), torch.tensor(want)))
    bar = tqdm(
        total=want, desc=f"caching {hook_name} activations", unit="tok", disable=not progress
    )
    filled = 0
    for start in range(0, last_row + 1, batch_rows):
        batch = tokens[start : min(start + batch_rows, last_row + 1)]
        _, cache = model.run_with_cache(
            batch, names_filter=[hook_name], prepend_bos=False, **_stop_at_layer(hook_name)
        )
        acts = cache[hook_name][keep[start : start + len(batch)]].float().cpu().numpy()
        take = min(len(acts), want - filled)
        out[filled : filled + take] = acts[:take]
        filled += take
        bar.update(take)
    bar.close()
    out.flush()
    del out
    os.replace(partial, path)
