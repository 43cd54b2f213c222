"""Train any SAELens architecture on activations stored as arrays, through SAELens's own
``SAETrainer`` with a data provider, and score the saved SAE on held-out rows."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic

import numpy as np
import torch
from sae_lens import SAE, LoggingConfig, TrainingSAE
from sae_lens.config import SAETrainerConfig
from sae_lens.constants import SPARSITY_FILENAME
from sae_lens.saes.sae import T_TRAINING_SAE_CONFIG
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens.util import str_to_dtype
from safetensors.torch import save_file

from softsae_lens.data.activations import ActivationRows, open_activations
from softsae_lens.data.batches import ActivationBatches, find_nonfinite_rows, split_rows
from softsae_lens.evals.heldout import HeldOutEvaluator, evaluate_on_rows
from softsae_lens.training.array_checkpoints import (
    EVAL_METRICS_FILENAME,
    check_destinations,
    check_same_run,
    resume_run,
    save_checkpoint,
    save_runner_cfg,
)
from softsae_lens.training.checkpoints import (
    resolve_checkpoint,
    write_atomically,
)
from softsae_lens.training.interrupt import fit_until_signalled
from softsae_lens.training.run_length import set_run_length

__all__ = [
    "EVAL_METRICS_FILENAME",
    "ActivationsRun",
    "ActivationsRunnerConfig",
    "train_on_activations",
]

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("error", "skip")


@dataclass
class ActivationsRunnerConfig(Generic[T_TRAINING_SAE_CONFIG]):
    """A training run on activations stored on disk.

    Args:
        sae: the SAE to train (any registered SAELens training config; ``d_in`` must equal
            the activations' width).
        activations: path of the activations (.npy, .safetensors, .pt/.pth, a folder of
            them, or a CacheActivationsRunner folder).
        key: tensor (or dataset column) to read when the file holds more than one.
        eval_activations: separate held-out activations; default: hold out rows of
            ``activations``.
        eval_fraction: fraction of the rows held out when ``eval_activations`` is not set.
        max_eval_rows: cap on the held-out rows (None: no cap).
        training_samples: rows to train on in total (passes repeat in a new order); a
            multiple of train_batch_size. Default: one pass over the training rows.
        train_batch_size: rows per optimizer step.
        lr: Adam learning rate.
        lr_end: end learning rate of decaying schedules (default lr / 10).
        lr_scheduler_name: constant, cosineannealing or cosineannealingwarmrestarts.
        lr_warm_up_steps: linear warm-up steps.
        lr_decay_steps: linear decay steps at the end of the run.
        n_restart_cycles: restarts of cosineannealingwarmrestarts.
        adam_beta1: Adam beta1.
        adam_beta2: Adam beta2.
        autocast: train under bfloat16 autocast.
        dead_feature_window: steps without firing after which a latent counts as dead.
        feature_sampling_window: steps per feature-sparsity window.
        n_batches_for_norm_estimate: batches used to estimate normalize_activations'
            statistics (default: one pass over the training rows, at most 1000 batches).
        n_checkpoints: intermediate checkpoints (SAELens's trainer writes them, each with the
            data position and RNG state, and a completion marker written last).
        checkpoint_path: folder for checkpoints; refused if it already holds another run's.
        resume_from_checkpoint: continue a run from this checkpoint (or from the latest complete
            checkpoint in this folder) with the same arguments; it then trains the same as if
            never stopped. Incomplete checkpoints are refused (named) or skipped.
        nonfinite_rows: rows holding NaN or inf, found by one pass over the data before
            training: "error" stops before training and names them; "skip" leaves them out
            of training and the held-out rows.
        output_path: folder for the final inference SAE, its sparsity, this config and the
            held-out metrics (None: keep nothing on disk); written whole or not at all, and
            refused if it already holds an SAE (unless ``overwrite``) or other files.
        overwrite: replace an SAE already in ``output_path``.
        seed: seed of the SAE's initialisation, the held-out split and the shuffling.
        model_name: recorded in the SAE's metadata (what produced the activations).
        hook_name: recorded in the SAE's metadata (where the activations were read).
        logger: SAELens logging (wandb) settings; off by default.
    """

    sae: T_TRAINING_SAE_CONFIG
    activations: str | None = None
    key: str | None = None
    eval_activations: str | None = None
    eval_fraction: float = 0.05
    max_eval_rows: int | None = 100_000
    training_samples: int | None = None
    train_batch_size: int = 4096
    lr: float = 3e-4
    lr_end: float | None = None
    lr_scheduler_name: str = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    n_restart_cycles: int = 1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    autocast: bool = False
    dead_feature_window: int = 1000
    feature_sampling_window: int = 2000
    n_batches_for_norm_estimate: int | None = None
    n_checkpoints: int = 0
    checkpoint_path: str | None = None
    resume_from_checkpoint: str | None = None
    nonfinite_rows: str = "error"
    output_path: str | None = None
    overwrite: bool = False
    seed: int = 42
    model_name: str | None = None
    hook_name: str | None = None
    logger: LoggingConfig = field(default_factory=lambda: LoggingConfig(log_to_wandb=False))

    def __post_init__(self) -> None:
        if self.activations is None:
            raise ValueError("activations=None: the path of the activations is required")
        if self.lr_end is None:
            self.lr_end = self.lr / 10
        if self.train_batch_size <= 0:
            raise ValueError(
                f"train_batch_size={self.train_batch_size}: must be a positive integer"
            )
        if self.nonfinite_rows not in NONFINITE_POLICIES:
            raise ValueError(
                f"nonfinite_rows={self.nonfinite_rows!r}: must be one of {', '.join(NONFINITE_POLICIES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (saved as ``runner_cfg.json`` next to the SAE)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["sae"] = self.sae.to_dict()
        d["logger"] = dataclasses.asdict(self.logger)
        return d


@dataclass
class ActivationsRun:
    """What :func:`train_on_activations` returns.

    Attributes:
        sae: the trained SAE in inference form (as saved and reloaded).
        metrics: held-out metrics (see :func:`evaluate_on_rows`) plus run facts.
        output_path: where the SAE was saved, or None.
    """

    sae: SAE[Any]
    metrics: dict[str, Any]
    output_path: Path | None


def _open_split(
    cfg: ActivationsRunnerConfig[Any],
) -> tuple[ActivationRows, np.ndarray, ActivationRows, np.ndarray]:
    rows = open_activations(cfg.activations, cfg.key, "activations")  # type: ignore[arg-type]
    if rows.d_in != cfg.sae.d_in:
        raise ValueError(
            f"sae.d_in={cfg.sae.d_in}: the activations {rows.source} have d_in={rows.d_in}; they must match"
        )
    if cfg.eval_activations is None:
        train_idx, eval_idx = split_rows(
            rows.n_rows, cfg.eval_fraction, cfg.max_eval_rows, cfg.seed
        )
        return rows, train_idx, rows, eval_idx
    eval_rows = open_activations(cfg.eval_activations, cfg.key, "eval_activations")
    if eval_rows.d_in != rows.d_in:
        raise ValueError(
            f"eval_activations={cfg.eval_activations}: d_in={eval_rows.d_in} differs from the training activations' d_in={rows.d_in}"
        )
    n_eval = (
        eval_rows.n_rows if cfg.max_eval_rows is None else min(eval_rows.n_rows, cfg.max_eval_rows)
    )
    eval_idx = np.sort(np.random.default_rng(cfg.seed).permutation(eval_rows.n_rows)[:n_eval])
    return rows, np.arange(rows.n_rows), eval_rows, eval_idx


def _run_length(cfg: ActivationsRunnerConfig[Any], n_train: int) -> int:
    batch = cfg.train_batch_size
    if batch > n_train:
        raise ValueError(
            f"train_batch_size={batch}: must be at most the {n_train} training rows "
            f"(eval_fraction={cfg.eval_fraction} held out the rest)"
        )
    samples = cfg.training_samples
    if samples is None:
        return (n_train // batch) * batch
    if samples < batch or samples % batch:
        lower, upper = max(batch, samples // batch * batch), (samples // batch + 1) * batch
        raise ValueError(
            f"training_samples={samples}: must be a positive multiple of train_batch_size={batch} "
            f"(SAETrainer would otherwise run a partial extra step), e.g. {lower} or {upper}"
        )
    return samples


def _drop_nonfinite(
    cfg: ActivationsRunnerConfig[Any],
    rows: ActivationRows,
    train_idx: np.ndarray,
    eval_rows: ActivationRows,
    eval_idx: np.ndarray,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One pass over the rows used, before training: NaN/inf rows fail the run or are dropped."""
    desc = "checking activations for NaN/inf"
    bad_train = find_nonfinite_rows(rows, train_idx, cfg.train_batch_size, progress, desc)
    bad_eval = find_nonfinite_rows(eval_rows, eval_idx, cfg.train_batch_size, progress, desc)
    n_bad = len(bad_train) + len(bad_eval)
    if n_bad == 0:
        return train_idx, eval_idx, 0
    if cfg.nonfinite_rows == "error":
        if eval_rows is rows:
            parts = [("activations", cfg.activations, np.union1d(bad_train, bad_eval), rows)]
        else:
            parts = [
                ("activations", cfg.activations, bad_train, rows),
                ("eval_activations", cfg.eval_activations, bad_eval, eval_rows),
            ]
        argument, value, bad, source = next(part for part in parts if len(part[2]))
        shown = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(
            f"{argument}={value}: {len(bad)} of {source.n_rows} rows hold NaN or inf (rows "
            f"{shown}); activations must be finite (found before training, nothing was trained; "
            "--nonfinite_rows skip trains without them)"
        )
    logger.warning("leaving out %d rows that hold NaN or inf (nonfinite_rows=skip)", n_bad)
    return np.setdiff1d(train_idx, bad_train), np.setdiff1d(eval_idx, bad_eval), n_bad


def train_on_activations(
    cfg: ActivationsRunnerConfig[Any], progress: bool = True, sae: TrainingSAE[Any] | None = None
) -> ActivationsRun:
    """Train ``cfg.sae`` on the activations at ``cfg.activations`` with SAELens's ``SAETrainer``.

    Opens the activations (memory-mapped), holds out rows, checks every row used for NaN/inf
    in one pass (``cfg.nonfinite_rows``), fills a SoftSAE's ``total_training_steps`` from the
    run, trains (from ``cfg.resume_from_checkpoint`` if set), saves the inference SAE (plus
    ``sparsity.safetensors``, ``runner_cfg.json`` and ``eval_metrics.json``) to
    ``cfg.output_path`` if set, reloads it as SAELens would, and scores it on the held-out
    rows. Raises ValueError (naming the argument) for a width mismatch, too few rows,
    non-finite rows, an occupied output or checkpoint folder, or a checkpoint that cannot be
    resumed.

    ``sae``, when given, is trained in place of a fresh one: an SAE built from ``cfg.sae`` (the
    same object) whose starting weights were set beforehand, as SAELens runners'
    ``override_sae`` (the sweep calibrates JumpReLU's threshold and may start the decoder bias
    at the data mean before training).
    """
    if sae is not None and sae.cfg is not cfg.sae:
        raise ValueError(
            "sae: its cfg must be cfg.sae itself (the config it was built from), so that the "
            "run length and the saved config describe the SAE that trains"
        )
    resume = (
        None
        if cfg.resume_from_checkpoint is None
        else resolve_checkpoint(cfg.resume_from_checkpoint, "resume_from_checkpoint")
    )
    check_destinations(cfg, resume)
    rows, train_idx, eval_rows, eval_idx = _open_split(cfg)
    train_idx, eval_idx, n_nonfinite = _drop_nonfinite(
        cfg, rows, train_idx, eval_rows, eval_idx, progress
    )
    samples = _run_length(cfg, len(train_idx))
    steps = samples // cfg.train_batch_size
    set_run_length(cfg.sae, steps, source="training_samples // train_batch_size")
    if resume is not None:
        check_same_run(cfg, resume)
    torch.manual_seed(cfg.seed)
    if sae is None:
        sae = TrainingSAE.from_dict(cfg.sae.to_dict())
    meta = sae.cfg.metadata
    meta.dataset_path = str(cfg.activations)
    meta.model_name, meta.hook_name = cfg.model_name, cfg.hook_name
    provider = ActivationBatches(
        rows, train_idx, cfg.train_batch_size, seed=cfg.seed, dtype=str_to_dtype(cfg.sae.dtype)
    )
    trainer_cfg = SAETrainerConfig(
        total_training_samples=samples,
        train_batch_size_samples=cfg.train_batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr_end,
        lr_scheduler_name=cfg.lr_scheduler_name,
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        n_restart_cycles=cfg.n_restart_cycles,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        device=cfg.sae.device,
        autocast=cfg.autocast,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=cfg.checkpoint_path,
        logger=cfg.logger,
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate
        or min(1000, max(1, len(train_idx) // cfg.train_batch_size)),
    )
    evaluator = (
        HeldOutEvaluator(eval_rows, eval_idx[:16384], cfg.train_batch_size)
        if len(eval_idx)
        else None
    )
    if cfg.logger.log_to_wandb:
        import wandb

        wandb.init(
            project=cfg.logger.wandb_project,
            entity=cfg.logger.wandb_entity,
            config=cfg.to_dict(),
            name=cfg.logger.run_name,
            id=cfg.logger.wandb_id,
        )
    trainer = SAETrainer(
        cfg=trainer_cfg,
        sae=sae,
        data_provider=provider,
        evaluator=evaluator,
        save_checkpoint_fn=partial(save_checkpoint, cfg, provider),
    )
    if resume is not None:
        resume_run(trainer, provider, resume, cfg.train_batch_size)
    # SIGINT/SIGTERM: stop between two steps with a checkpoint (TrainingInterrupted).
    sae = fit_until_signalled(trainer, cfg.checkpoint_path)
    final = None if cfg.output_path is None else Path(cfg.output_path)
    if final is not None:
        final.parent.mkdir(parents=True, exist_ok=True)
    # The SAE is written into a hidden sibling folder and renamed into place once whole, so a
    # run killed while saving leaves no half-written SAE (and can resume from its checkpoint).
    with tempfile.TemporaryDirectory(
        dir=None if final is None else final.parent,
        prefix=None if final is None else f".{final.name}.partial-",
        ignore_cleanup_errors=True,
    ) as tmp:
        folder = Path(tmp)
        sae.save_inference_model(folder)
        save_file({"sparsity": trainer.log_feature_sparsity}, folder / SPARSITY_FILENAME)
        save_runner_cfg(cfg, folder)
        inference = SAE.load_from_disk(folder, device=cfg.sae.device)
        if final is not None:
            if final.exists():  # empty, or an SAE replaced under overwrite (checked first)
                shutil.rmtree(final)
            os.replace(folder, final)
            folder = final
        metrics: dict[str, Any] = {}
        if len(eval_idx):
            metrics = evaluate_on_rows(
                inference, eval_rows, eval_idx, cfg.train_batch_size, progress=progress
            )
        metrics.update(
            architecture=cfg.sae.architecture(),
            training_steps=steps,
            training_samples=samples,
            n_train_rows=len(train_idx),
            passes=samples / len(train_idx),
            dead_latents_training_window=meta.num_dead_features,
            nonfinite_rows_left_out=n_nonfinite,
        )
        write_atomically(folder / EVAL_METRICS_FILENAME, json.dumps(metrics, indent=1).encode())
    if cfg.logger.log_to_wandb:
        import wandb

        wandb.finish()
    return ActivationsRun(inference, metrics, None if cfg.output_path is None else folder)
