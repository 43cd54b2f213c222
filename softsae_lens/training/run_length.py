"""Glue between SAELens's training runners and SoftSAE's run-length-dependent schedules."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from softsae_lens.soft_sae import SoftTrainingSAEConfig


def _soft_configs(runner_cfg: Any) -> list[tuple[str, SoftTrainingSAEConfig]]:
    if isinstance(getattr(runner_cfg, "sae", None), SoftTrainingSAEConfig):
        return [("sae", runner_cfg.sae)]
    saes = getattr(runner_cfg, "saes", None) or {}
    return [
        (f"saes[{name!r}]", cfg)
        for name, cfg in saes.items()
        if isinstance(cfg, SoftTrainingSAEConfig)
    ]


def configure_runner(runner_cfg: Any) -> Any:
    """Fill ``total_training_steps`` of every SoftSAE config in a SAELens runner config.

    Works on ``LanguageModelSAERunnerConfig`` (its ``sae``) and ``MultiSAETrainingRunnerConfig``
    (each entry of ``saes``). SAELens computes the run length (``training_tokens //
    train_batch_size_tokens``) but never hands it to the SAE, while SoftSAE's k/alpha annealing
    and final hard phase are fractions of it. Call this before constructing the runner; it
    returns ``runner_cfg``. A config that already names a different length raises, since its
    schedule would silently not match the run. Other SAE configs are left alone.
    """
    soft = _soft_configs(runner_cfg)
    if not soft:
        return runner_cfg
    steps = int(runner_cfg.total_training_steps)
    if steps <= 0:
        raise ValueError(
            f"the run has no optimizer steps: training_tokens={runner_cfg.training_tokens} < "
            f"train_batch_size_tokens={runner_cfg.train_batch_size_tokens}"
        )
    for where, sae_cfg in soft:
        set_run_length(
            sae_cfg, steps, where, "the runner config", "training_tokens // train_batch_size_tokens"
        )
    return runner_cfg


def set_run_length(
    sae_cfg: Any, steps: int, where: str = "sae", run: str = "this run", source: str = ""
) -> None:
    """Hand a SoftSAE config the number of optimizer steps of its run (others are left alone).

    Fills ``total_training_steps`` when it is None; a different value raises, naming ``where``
    the config sits, the ``run`` and ``source``, how the run's length was computed.
    """
    if not isinstance(sae_cfg, SoftTrainingSAEConfig):
        return
    if sae_cfg.total_training_steps is None:
        sae_cfg.total_training_steps = steps
    elif sae_cfg.total_training_steps != steps:
        raise ValueError(
            f"{where}.total_training_steps={sae_cfg.total_training_steps} but {run} trains for "
            f"{steps} steps ({source}); set one to match or leave total_training_steps=None"
        )
    sae_cfg.add_training_info_to_metadata()


class SideBySideSettings(Protocol):
    """What SAEs trained side by side on one activation stream share (the sweep's settings have
    these fields; the demo is a preset of the sweep)."""

    context_size: int
    tokens: int
    batch_tokens: int
    lr: float
    device: str
    seed: int
    out: Path
    autocast: bool


def multi_runner_config(
    saes: dict[str, Any],
    settings: SideBySideSettings,
    hook_name: str,
    model_name: str,
    dataset_path: str,
) -> Any:
    """SAELens's multi-SAE runner config for ``saes`` trained side by side on ``hook_name``'s
    activation stream, with SoftSAE's run length filled in; the saved SAEs go to
    ``settings.out / "saes"``."""
    from sae_lens import LoggingConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

    steps = settings.tokens // settings.batch_tokens
    runner_cfg = MultiSAETrainingRunnerConfig(
        saes=saes,
        hook_names=hook_name,
        model_name=model_name,
        dataset_path=dataset_path,
        context_size=settings.context_size,
        training_tokens=settings.tokens,
        train_batch_size_tokens=settings.batch_tokens,
        n_batches_in_buffer=max(4, math.ceil(2 * settings.batch_tokens / settings.context_size)),
        store_batch_size_prompts=8,
        lr=settings.lr,
        lr_warm_up_steps=max(1, steps // 20),
        device=settings.device,
        seed=settings.seed,
        autocast=settings.autocast,
        exclude_special_tokens=True,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(settings.out / "saes"),
        checkpoint_path=None,
        n_checkpoints=0,
        n_batches_for_norm_estimate=min(20, steps),
    )
    return configure_runner(runner_cfg)
