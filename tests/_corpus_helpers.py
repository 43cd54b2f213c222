"""A real, tiny Hugging Face tokenizer and a language model that uses it, built offline.

The tokenizer is a byte-level BPE trained in a fraction of a second on Python's own
``pydoc_data.topics``, wrapped as a ``transformers`` fast tokenizer with BOS and EOS tokens,
so the corpus's pre-tokenisation, SAELens's activation store and the analysis tools run on
real text with nothing from the hub. The model is a small random ``HookedSAETransformer``
whose vocabulary matches that tokenizer.
"""

from __future__ import annotations

import functools

TINY_VOCAB = 320
TINY_D_MODEL = 32
TINY_CONTEXT = 32


@functools.lru_cache(maxsize=1)
def _trained_backend():
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=["<unk>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([topics[key] for key in sorted(topics)], trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=1)
def _saved_folder() -> str:
    import tempfile

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    # Saved and reloaded so the tokenizer knows its folder (name_or_path): TransformerLens
    # reloads it from there with add_bos_token=True.
    folder = tempfile.mkdtemp(prefix="softsae-tiny-tokenizer-")
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_backend()),
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    ).save_pretrained(folder)
    return folder


def tiny_tokenizer():
    """A fresh fast tokenizer loaded from a local folder (BOS ``<bos>`` = 1, EOS = 2)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_saved_folder())


def tiny_lm(n_layers: int = 2, seed: int = 0):
    """A random ``HookedSAETransformer`` with :func:`tiny_tokenizer` as its tokenizer."""
    import torch
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=TINY_D_MODEL,
        n_ctx=TINY_CONTEXT * 4,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    return HookedSAETransformer(cfg, tokenizer=tokenizer).eval()
