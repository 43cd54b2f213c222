"""Glue between SAELens's training runner and SoftSAE's run-length-dependent schedules."""

from __future__ import annotations

from typing import Any

from softsae_lens.soft_sae import SoftTrainingSAEConfig


def configure_runner(runner_cfg: Any) -> Any:
    """Fill ``runner_cfg.sae.total_training_steps`` from a ``LanguageModelSAERunnerConfig``.

    SAELens computes the run length (``training_tokens // train_batch_size_tokens``) but never
    hands it to the SAE, while SoftSAE's k/alpha annealing and final hard phase are fractions
    of it. Call this before ``LanguageModelSAETrainingRunner(runner_cfg)``; it returns
    ``runner_cfg``. A config that already names a different length raises, since its schedule
    would silently not match the run. Non-soft SAE configs are returned unchanged.
    """
    sae_cfg = getattr(runner_cfg, "sae", None)
    if not isinstance(sae_cfg, SoftTrainingSAEConfig):
        return runner_cfg
    steps = int(runner_cfg.total_training_steps)
    if steps <= 0:
        raise ValueError(
            f"the run has no optimizer steps: training_tokens={runner_cfg.training_tokens} < "
            f"train_batch_size_tokens={runner_cfg.train_batch_size_tokens}"
        )
    if sae_cfg.total_training_steps is None:
        sae_cfg.total_training_steps = steps
    elif sae_cfg.total_training_steps != steps:
        raise ValueError(
            f"SoftTrainingSAEConfig.total_training_steps={sae_cfg.total_training_steps} but the runner "
            f"config trains for {steps} steps (training_tokens // train_batch_size_tokens); set one to match "
            "or leave total_training_steps=None"
        )
    sae_cfg.add_training_info_to_metadata()
    return runner_cfg
