"""``python -m softsae_lens.convert``: the command line of the paper-checkpoint converter.

Parses the flags, calls :func:`~softsae_lens.convert.convert_paper_checkpoint`, prints what it
wrote, and turns a :class:`~softsae_lens.convert.PaperCheckpointError` into a one-line error and
exit status 2. Holds no conversion logic.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from simple_parsing import field

from softsae_lens.convert.paper_format import PaperCheckpointError
from softsae_lens.convert.to_softsae import DTYPES, convert_paper_checkpoint
from softsae_lens.flags import config_parser, optional, parse_config, switch

__all__ = ["ConvertConfig", "main", "parse_args"]


@dataclass
class ConvertConfig:
    """Convert a SoftSAE checkpoint trained with the paper's code (dictionary_learning fork:
    ae.pt plus config.json; LLM SoftSAE or CLIP SoftTopKSAE) into a SAELens SAE folder
    (architecture 'soft', k_rounding='floor') that takes and returns raw activations. Load it
    with: import softsae_lens; sae_lens.SAE.load_from_disk(OUT_DIR)."""

    checkpoint: str = field(positional=True, metavar="CHECKPOINT")
    """the paper's ae.pt, or the folder holding it"""
    out_dir: str = field(positional=True, metavar="OUT_DIR")
    """folder to write cfg.json and sae_weights.safetensors to"""
    hook_name: str | None = optional("HOOK")
    """TransformerLens hook the SAE reads, e.g. blocks.12.hook_resid_post (unset: from
    config.json's submodule_name/layer when unambiguous)"""
    model_name: str | None = optional("NAME")
    """model name for the metadata (unset: config.json's lm_name)"""
    config: Path | None = optional("PATH")
    """the run's config.json (unset: the one beside the checkpoint)"""
    dtype: str = field(default="float32", choices=DTYPES)
    """dtype of the written weights"""
    unsafe_pickle: bool = switch()
    """allow a checkpoint that is not a plain state dict (runs pickled code: trusted files only)"""
    overwrite: bool = switch()
    """replace an SAE in OUT_DIR"""


def parse_args(argv: Sequence[str] | None = None) -> ConvertConfig:
    """The converter's command line (one flag or positional per :class:`ConvertConfig` field)."""
    parser = config_parser(ConvertConfig, "python -m softsae_lens.convert")
    return parse_config(parser, argv, usage_on_error=True).cfg


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0, or 2 with a message on stderr)."""
    args = parse_args(argv)
    try:
        sae = convert_paper_checkpoint(
            args.checkpoint,
            args.out_dir,
            hook_name=args.hook_name,
            model_name=args.model_name,
            config_path=args.config,
            dtype=args.dtype,
            unsafe_pickle=args.unsafe_pickle,
            overwrite=args.overwrite,
        )
    except PaperCheckpointError as e:
        print(f"python -m softsae_lens.convert: error: {e}", file=sys.stderr)
        return 2
    cfg = sae.cfg
    source = cfg.metadata.source
    out = Path(args.out_dir).resolve()
    print(f"Wrote SAELens SoftSAE (architecture 'soft') to {out}")
    print(
        f"{source['format']}: d_in={cfg.d_in} d_sae={cfg.d_sae} k={cfg.k} k_max={cfg.k_max:g} "
        f"k_rounding={cfg.k_rounding} dtype={cfg.dtype} model={cfg.metadata.model_name} "
        f"hook={cfg.metadata.hook_name} norm_factor={source['norm_factor']:g} folded"
        + (" shift_factor folded" if source["shift_factor"] is not None else "")
    )
    return 0
