import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

D_MODEL = 32
CONTEXT = 16
VOCAB = 97


@pytest.fixture(scope="session")
def tiny_model():
    """A small, randomly initialised HookedSAETransformer (no hub access)."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_ctx=CONTEXT,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        d_vocab=VOCAB,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model = HookedSAETransformer(cfg)
    model.eval()
    return model


def token_dataset(n_rows: int = 256, seed: int = 0):
    """A pre-tokenized ``datasets.Dataset`` of random tokens for the tiny model."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (n_rows, CONTEXT), generator=g)
    return Dataset.from_dict({"tokens": tokens.tolist()})
