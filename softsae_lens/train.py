"""``python -m softsae_lens.train --architecture soft ...``: SAELens's own training CLI with "soft".

This is ``sae_lens.llm_sae_training_runner``'s parser and runner unchanged; importing
``softsae_lens`` first registers "soft" so its config fields become CLI options, and the
run length is handed to the SoftSAE schedule (``configure_runner``) before training.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, _parse_cfg_args

from softsae_lens.runner import configure_runner


def parse_args(args: Sequence[str]):
    """Parse SAELens CLI arguments (``--architecture soft`` included) into a runner config."""
    import softsae_lens  # noqa: F401  (registers "soft" before the parser reads the registry)

    return configure_runner(_parse_cfg_args(list(args)))


def main(args: Sequence[str] | None = None) -> None:
    """Parse the arguments and run SAELens's ``LanguageModelSAETrainingRunner``."""
    cfg = parse_args(sys.argv[1:] if args is None else args)
    LanguageModelSAETrainingRunner(cfg=cfg).run()


if __name__ == "__main__":
    main()
