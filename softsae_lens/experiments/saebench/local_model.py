"""The local model and text the evals run on: nothing here touches the hub.

* :func:`tiny_model`: a random 2-layer ``HookedTransformer`` with a word-level tokenizer built from
  local text (:func:`tiny_tokenizer`) and first-letter directions planted in its token embedding,
  so that a linear probe for "starts with letter L" must succeed (absorption's precondition) and
  last-token residuals carry the prompt's words (sae-probes' precondition);
* :func:`smollm2_model`: SmolLM2-135M-Instruct from the local GGUF as a plain TransformerBridge;
* :func:`local_text`: documents from the package's local corpora (pydoc topics at least).
"""

from __future__ import annotations

import re
import string
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

__all__ = ["local_text", "probe_texts", "smollm2_model", "tiny_model", "tiny_tokenizer"]

TINY_HOOK = "blocks.1.hook_resid_post"


ABSORPTION_WORDS = ("has", "the", "first", "letter", ":")  # SAEBench's prompt template's words


def tiny_tokenizer(texts: list[str], size: int = 3000) -> Any:
    """A word-level tokenizer over the ``size`` most frequent words and punctuation marks of
    ``texts`` (plus absorption's prompt words), BOS first: built locally, and small, so that
    absorption's pass over every alphabetic token of the vocabulary takes seconds, not hours."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    counts = Counter(w for text in texts for w in re.findall(r"\w+|[^\w\s]", text))
    words = ["<unk>", "<bos>", "<eos>", "<pad>", *ABSORPTION_WORDS]
    words += [w for w, _ in counts.most_common(size) if w not in words]
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token=True,
    )
    # reloaded from a local folder: TransformerLens reads the tokenizer's name_or_path
    folder = Path(tempfile.mkdtemp(prefix="saebench-tok-"))
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _first_letter(piece: str) -> int | None:
    text = piece.lstrip(" \u0120\u2581").lower()
    if text and text[0] in string.ascii_lowercase:
        return string.ascii_lowercase.index(text[0])
    return None


def tiny_model(
    texts: list[str], seed: int = 0, d_model: int = 64, letter_scale: float = 10.0
) -> Any:
    """A random HookedTransformer (2 layers, ``d_model``) on :func:`tiny_tokenizer` of ``texts``
    whose token embedding is noise plus ``letter_scale`` times one of 26 orthonormal first-letter
    directions."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = tiny_tokenizer(texts)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d_model,
        d_head=16,
        n_heads=d_model // 16,
        d_mlp=4 * d_model,
        n_ctx=256,
        d_vocab=len(tok),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        default_prepend_bos=True,
    )
    model = HookedTransformer(cfg, tokenizer=tok)
    g = torch.Generator().manual_seed(seed)
    letters = torch.linalg.qr(torch.randn(d_model, 26, generator=g))[0].T  # 26 x d_model
    w_e = torch.randn(cfg.d_vocab, d_model, generator=g)
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    for idx, piece in enumerate(vocab):
        letter = _first_letter(piece or "")
        if letter is not None:
            w_e[idx] += letter_scale * letters[letter]
    with torch.no_grad():
        model.embed.W_E.copy_(w_e)
    model.eval()
    return model


def smollm2_model(device: str = "cpu") -> Any:
    """SmolLM2-135M-Instruct from the wheel's GGUF (de-quantised once, locally) as a plain
    TransformerLens ``TransformerBridge``. SmolLM2 is not among TransformerLens's official
    HookedTransformer names, so the bridge is the local route; a plain one, not the package's SAE
    bridge, because SAEBench's absorption builds ``blocks.{layer}.hook_resid_post`` itself and the
    SAE bridge's ``hook_dict`` drops that alias (``run_with_cache`` then returns an empty cache and
    absorption fails with ``KeyError: 'blocks.5.hook_resid_post'``, as measured here)."""
    from transformer_lens.model_bridge import TransformerBridge

    from softsae_lens.models import smollm2

    bridge = TransformerBridge.boot_transformers(
        str(smollm2.dequantized_folder()), device=device, dtype=torch.float32
    )
    bridge.eval()
    return bridge


def local_text(min_chars: int = 0) -> list[str]:
    """Documents of the package's local corpora (:func:`softsae_lens.data.corpus.sources.load_corpus`)."""
    from softsae_lens.data.corpus.sources import load_corpus

    corpus = load_corpus(min_chars=min_chars)
    return list(corpus.documents)


def probe_texts(dataset_names: list[str], rows: int = 1500) -> list[str]:
    """Prompts of sae-probes' own datasets (the wheel's csv.zst files), for the tiny vocabulary."""
    import pandas as pd
    from sae_probes.constants import DATA_PATH

    texts: list[str] = []
    for name in dataset_names:
        df = pd.read_csv(DATA_PATH / "cleaned_data" / f"{name}.csv.zst", compression="zstd")
        texts += [str(t) for t in df["prompt"].head(rows)]
    return texts
