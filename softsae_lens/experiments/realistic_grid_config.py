"""The command line of ``python -m softsae_lens.experiments.realistic_grid`` (:class:`GridConfig`),
kept apart from the grid's experiment logic in :mod:`.realistic_grid`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simple_parsing import field

from softsae_lens.flags import config_parser, one_or_more, parse_config, switch

__all__ = ["GridConfig", "parse_args", "parse_size"]

PROG = "python -m softsae_lens.experiments.realistic_grid"
DIRECTIONS = ("ortho", "plain")
# A grid's samples are counted in whole batches of the ground-truth experiment's realistic regime.
BATCH = 1024
DEFAULT_SIZES = ((2048, 128), (4096, 256))


def parse_size(text: str) -> tuple[int, int]:
    """``FEATURESxDIMS`` (``2048x128``) as ``(features, dims)``, more features than dimensions."""
    try:
        features, dims = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes: {text!r} is not FEATURESxDIMS (e.g. 2048x128)"
        ) from None
    if features <= dims or dims <= 0:
        raise argparse.ArgumentTypeError(
            f"--sizes: {text!r} needs more true features than dimensions, both positive"
        )
    return features, dims


@dataclass
class GridConfig:
    """SoftSAE against TopK on realistic ground truth over sizes, feature directions and learning
    rates (run the grid, or write its results page)."""

    action: str = field(positional=True, choices=("run", "report"), metavar="{run,report}")
    """run: train the cells not done yet; report: write OUT/results.md from the finished cells"""
    out: Path = field(default=Path("out/grid"), metavar="DIR")
    """the grid's folder"""
    sizes: list[tuple[int, int]] = one_or_more(DEFAULT_SIZES, "FEATURESxDIMS", type=parse_size)
    """true features x dimensions, each FEATURESxDIMS such as 2048x128 (width = features / 4)"""
    directions: list[str] = one_or_more(DIRECTIONS, "DIRECTION", choices=DIRECTIONS)
    """ortho: orthogonalised feature directions (SynthSAEBench's); plain: random ones"""
    lrs: list[float] = one_or_more([3e-4, 1e-3, 3e-3], "LR")
    """learning rates"""
    seeds: list[int] = one_or_more([0, 1, 2], "SEED")
    """seeds per cell"""
    samples: int = 2_048_000
    """training samples (batches of 1,024)"""
    plan_only: bool = switch()
    """with run: list the cells and stop"""
    quick: bool = switch()
    """with run: each cell's tiny run (the test suite's)"""

    def __post_init__(self) -> None:
        """A one-line ValueError naming the flag, its value and what is allowed."""
        bad = [v for v in self.lrs if not v > 0]
        if bad:
            raise ValueError(f"--lrs: {bad[0]} is not a positive number")
        if self.samples < BATCH:
            raise ValueError(f"--samples: {self.samples} is below one batch of {BATCH:,}")


def parse_args(argv: Sequence[str] | None = None) -> GridConfig:
    """The grid's command line (one flag per :class:`GridConfig` field, ``action`` first)."""
    return parse_config(config_parser(GridConfig, PROG), argv, usage_on_error=True).cfg
