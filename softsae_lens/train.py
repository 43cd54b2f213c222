"""``python -m softsae_lens.train --architecture soft ...``: SAELens's own training CLI with "soft".

This is ``sae_lens.llm_sae_training_runner``'s parser unchanged; importing ``softsae_lens``
first registers "soft" so its config fields become CLI options, and the run length is handed to
the SoftSAE schedule (``configure_runner``) before training. The runner is
:class:`~softsae_lens.training.runner.DistributedSAETrainingRunner`, which is SAELens's
``LanguageModelSAETrainingRunner`` in one process and trains data-parallel under ``torchrun``
(``torchrun --nproc_per_node N -m softsae_lens.train ...``; ``train_batch_size_tokens`` and
``training_tokens`` are global).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch.distributed as dist
from sae_lens.llm_sae_training_runner import _parse_cfg_args

from softsae_lens.flags import spell_flags
from softsae_lens.training.checkpoints import CheckpointError
from softsae_lens.training.interrupt import TrainingInterrupted
from softsae_lens.training.run_length import configure_runner
from softsae_lens.training.runner import DistributedSAETrainingRunner


def parse_args(args: Sequence[str]):
    """Parse SAELens CLI arguments (``--architecture soft`` included; ``--d-sae`` for ``--d_sae``
    too) into a runner config."""
    import softsae_lens  # noqa: F401  (registers "soft" before the parser reads the registry)

    return configure_runner(_parse_cfg_args(spell_flags(args, "_")))


def main(args: Sequence[str] | None = None) -> None:
    """Parse the arguments and train with SAELens's runner (data-parallel under torchrun).

    A signal in one process stops the run between two steps with a checkpoint, says where,
    and exits with 128 + the signal's number; a checkpoint that cannot be resumed (incomplete,
    missing, written by another number of processes) is a one-line error, exit 2.
    """
    cfg = parse_args(sys.argv[1:] if args is None else args)
    try:
        DistributedSAETrainingRunner(cfg=cfg).run()
    except TrainingInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
