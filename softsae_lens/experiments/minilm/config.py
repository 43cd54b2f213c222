"""The example's settings (:class:`Settings`) and its command-line flags (:func:`parse_args`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from simple_parsing import field

from softsae_lens.flags import config_parser, parse_config

__all__ = ["Settings", "parse_args"]

PROG = "python -m softsae_lens.experiments.minilm"


@dataclass
class Settings:
    """SoftSAE vs TopK at the same k on all-MiniLM-L6-v2 embeddings of Python's documentation."""

    out: Path = Path("out/minilm")
    """output folder"""
    max_sentences: int | None = None
    """sample this many sentences (unset: all)"""
    d_sae: int = 1536
    """SAE width"""
    k: int = 16
    """TopK's k and SoftSAE's target mean k"""
    batch_size: int = 256
    """rows per step"""
    passes: float = 30.0
    """passes over the training sentences"""
    lr: float = 1e-3
    """learning rate"""
    eval_fraction: float = 0.2
    """held-out share"""
    seed: int = 0
    """seed"""
    embed_batch_size: int = 64
    """sentences per MiniLM batch"""
    progress: bool = field(default=True, negative_prefix="--no-")
    """progress bars"""

    def __post_init__(self) -> None:
        """A one-line ValueError naming the flag, its value and the rule."""
        for name in ("d_sae", "k", "batch_size", "embed_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')}={getattr(self, name)}: must be a positive integer"
                )
        if self.max_sentences is not None and self.max_sentences < 100:
            raise ValueError(f"--max-sentences={self.max_sentences}: must be at least 100")


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line; also sets PyTorch's thread count (``--threads``)."""
    parser = config_parser(Settings, PROG)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    args = parse_config(parser, argv)
    if args.threads <= 0:
        parser.error(f"--threads={args.threads}: must be a positive integer")
    torch.set_num_threads(args.threads)
    return args.cfg
