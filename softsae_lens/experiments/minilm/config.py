"""The example's settings (:class:`Settings`) and its command-line flags (:func:`parse_args`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Settings", "parse_args"]

PROG = "python -m softsae_lens.experiments.minilm"


@dataclass
class Settings:
    """One run of the experiment (the CLI flags)."""

    out: Path = Path("out/minilm")
    max_sentences: int | None = None
    d_sae: int = 1536
    k: int = 16
    batch_size: int = 256
    passes: float = 30.0
    lr: float = 1e-3
    eval_fraction: float = 0.2
    seed: int = 0
    embed_batch_size: int = 64
    progress: bool = True


# Flags that set the Settings field of the same name, typed like its default, in --help order.
_FIELD_FLAGS = (
    ("d_sae", "SAE width"),
    ("k", "TopK's k and SoftSAE's target mean k"),
    ("batch_size", "rows per step"),
    ("passes", "passes over the training sentences"),
    ("lr", "learning rate"),
    ("eval_fraction", "held-out share"),
    ("seed", "seed"),
    ("embed_batch_size", "sentences per MiniLM batch"),
)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line; also sets PyTorch's thread count (``--threads``)."""
    d = Settings()
    p = argparse.ArgumentParser(
        prog=PROG,
        description="SoftSAE vs TopK at the same k on all-MiniLM-L6-v2 embeddings of Python's documentation.",
    )
    p.add_argument("--out", type=Path, default=d.out, help=f"output folder (default {d.out})")
    p.add_argument(
        "--max-sentences", type=int, default=None, help="sample this many sentences (default: all)"
    )
    for name, text in _FIELD_FLAGS:
        default = getattr(d, name)
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(default),
            default=default,
            help=f"{text} (default {default})",
        )
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("d_sae", "k", "batch_size", "embed_batch_size", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be a positive integer")
    if args.max_sentences is not None and args.max_sentences < 100:
        p.error(f"--max-sentences={args.max_sentences}: must be at least 100")
    torch.set_num_threads(args.threads)
    return Settings(
        out=args.out,
        max_sentences=args.max_sentences,
        **{name: getattr(args, name) for name, _ in _FIELD_FLAGS},
        progress=not args.no_progress,
    )
