"""``DistributedSAETrainingRunner``: SAELens's language-model training runner, data-parallel under torchrun.

In one process (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) it *is* SAELens's
``LanguageModelSAETrainingRunner``: every method defers to SAELens unchanged. Under ``torchrun``:

- ``train_batch_size_tokens`` is the global batch (the world size must divide it) and
  ``training_tokens`` the global total, so a config trains for the same number of steps, with
  the same schedules, on any number of processes; each rank's ``ActivationsStore`` serves
  ``train_batch_size_tokens / WORLD_SIZE`` tokens per step from its own disjoint shard of the
  dataset (contiguous rows of a map-style dataset);
- every rank must be started with the same configuration and data, which is checked;
- rank 0 alone logs to wandb, shows the progress bar, writes checkpoints (with every rank's
  dataset position) and writes the final SAE, which loads with ``SAE.load_from_disk`` as any
  other; a checkpoint resumes with the number of processes that wrote it.

What the ranks compute together (gradients, dead latents, normalisation, batch statistics) is in
``distributed.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist
import wandb
from datasets import Dataset, load_dataset
from sae_lens import logger as sae_lens_logger
from sae_lens.config import HfDataset, LanguageModelSAERunnerConfig
from sae_lens.constants import ACTIVATIONS_STORE_STATE_FILENAME
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.prefetch import PrefetchingIterator
from safetensors.torch import save_file
from transformer_lens import HookedRootModule

from softsae_lens.training.checkpoints import CheckpointError, mark_complete, resolve_checkpoint
from softsae_lens.training.distributed import (
    DistributedContext,
    DistributedSAETrainer,
    check_same_config,
    init_distributed,
    shard_dataset,
)
from softsae_lens.training.interrupt import fit_until_signalled

DISTRIBUTED_STATE_FILENAME = "distributed_state.json"


def store_state_filename(rank: int) -> str:
    """Checkpoint file of rank ``rank``'s dataset position (rank 0's is SAELens's own name)."""
    stem = ACTIVATIONS_STORE_STATE_FILENAME.removesuffix(".safetensors")
    return ACTIVATIONS_STORE_STATE_FILENAME if rank == 0 else f"{stem}.rank{rank}.safetensors"


def checkpoint_world_size(checkpoint_path: str | Path) -> int:
    """How many processes wrote a checkpoint (1 for SAELens's own single-process checkpoints)."""
    state = Path(checkpoint_path) / DISTRIBUTED_STATE_FILENAME
    return json.loads(state.read_text())["world_size"] if state.exists() else 1


def _check_resume_world_size(checkpoint_path: str | None, world_size: int) -> None:
    if checkpoint_path is None:
        return
    saved = checkpoint_world_size(checkpoint_path)
    if saved != world_size:
        raise CheckpointError(
            f"resume_from_checkpoint={checkpoint_path} was written by {saved} process(es) but this "
            f"run has WORLD_SIZE={world_size}; resume with {saved} (torchrun --nproc_per_node ...): "
            "each rank continues from its own position in its own shard of the dataset, and the "
            "shards depend on the number of processes"
        )


def _dataset_identity(dataset: Any) -> dict[str, Any]:
    """Enough of a dataset to tell whether every rank was handed the same one."""
    if not isinstance(dataset, Dataset):
        return {"type": type(dataset).__name__}
    first = json.dumps(dataset[0] if len(dataset) else None, sort_keys=True, default=str)
    return {"rows": len(dataset), "first_row_sha1": hashlib.sha1(first.encode()).hexdigest()}


class _DropOverrideDatasetWarning(logging.Filter):
    # The runner warns that a dataset passed in makes the run irreproducible from its config;
    # a shard of the configured dataset is not such a dataset.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("You just passed in a dataset")


@contextlib.contextmanager
def _drop_override_warning(drop: bool):
    """Silence the runner's "you passed in a dataset" warning when we loaded the dataset."""
    warning_filter = _DropOverrideDatasetWarning()
    if drop:
        sae_lens_logger.addFilter(warning_filter)
    try:
        yield
    finally:
        sae_lens_logger.removeFilter(warning_filter)


def _is_local_dataset(cfg: LanguageModelSAERunnerConfig[Any]) -> bool:
    return (
        not cfg.use_cached_activations
        and bool(cfg.dataset_path)
        and Path(cfg.dataset_path).exists()
    )


def _load_configured_dataset(cfg: LanguageModelSAERunnerConfig[Any]) -> Any:
    """``cfg.dataset_path`` loaded with the call SAELens's ``ActivationsStore`` makes."""
    return load_dataset(
        cfg.dataset_path,
        split="train",
        streaming=cfg.streaming,
        trust_remote_code=cfg.dataset_trust_remote_code,
    )


@contextlib.contextmanager
def _quiet_unless(loud: bool):
    """Send stderr (progress bars, warnings) to /dev/null unless ``loud``; errors still raise."""
    if loud:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


class DistributedSAETrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` that trains data-parallel when started by ``torchrun``.

    Same arguments as SAELens's runner. ``override_dataset`` (or the configured
    ``dataset_path``) is the whole dataset; each rank shards it. With cached activations, the
    cached activation dataset is sharded instead. ``self.distributed`` is the
    :class:`~softsae_lens.training.distributed.DistributedContext`, or ``None`` in one process. Under
    torchrun, ``cfg`` is updated in place with this rank's device (``cuda`` becomes
    ``cuda:LOCAL_RANK``) and rank 0's checkpoint folder.
    """

    distributed: DistributedContext | None

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: HfDataset | None = None,
        override_model: HookedRootModule | None = None,
        override_sae: TrainingSAE[Any] | None = None,
    ):
        self.distributed = context = init_distributed(cfg.device)
        if context is None:
            dataset, ours = override_dataset, False
            if dataset is None and _is_local_dataset(cfg):
                # SAELens 6.54's store hands a dataset_path string to the hub client to check its
                # tokenizer, which fails offline for a local folder; a dataset passed in skips
                # that check. The same call the store would make, as under torchrun below.
                dataset, ours = _load_configured_dataset(cfg), True
            with _drop_override_warning(ours):
                super().__init__(cfg, dataset, override_model, override_sae)
            return
        per_rank_batch = context.per_rank_batch(cfg.train_batch_size_tokens)
        # The checkpoint folder name ends in a random id drawn by each process; use rank 0's.
        cfg.checkpoint_path = context.broadcast_object(cfg.checkpoint_path)
        check_same_config(
            {**cfg.to_dict(), "override_dataset": _dataset_identity(override_dataset)}, context
        )
        for name in ("device", "llm_device", "act_store_device"):
            setattr(cfg, name, context.local_device(getattr(cfg, name)))
        cfg.sae.device = context.local_device(cfg.sae.device) or cfg.sae.device

        dataset, ours = override_dataset, False
        if dataset is None and not cfg.use_cached_activations:
            # The same call SAELens's ActivationsStore makes, so that it can be sharded first.
            dataset, ours = _load_configured_dataset(cfg), True
        if dataset is not None and not cfg.use_cached_activations:
            dataset = shard_dataset(dataset, context, self._min_rows_per_rank(cfg, dataset))
        with _drop_override_warning(ours), _quiet_unless(context.is_main):
            super().__init__(cfg, dataset, override_model, override_sae)
        store = self.activations_store
        if store.cached_activation_dataset is not None:
            store.cached_activation_dataset = shard_dataset(  # type: ignore[assignment]
                store.cached_activation_dataset, context, cfg.store_batch_size_prompts
            )
        # The store builds its batches from this attribute when it is first iterated.
        store.train_batch_size_tokens = per_rank_batch

    @staticmethod
    def _min_rows_per_rank(cfg: LanguageModelSAERunnerConfig[Any], dataset: Any) -> int:
        columns = getattr(dataset, "column_names", None) or []
        tokenized = "tokens" in columns or "input_ids" in columns
        return cfg.store_batch_size_prompts if tokenized else 1

    def run(self):
        """Train; under torchrun, data-parallel with rank 0 doing the logging and writing."""
        context = self.distributed
        if self.cfg.resume_from_checkpoint is not None:
            # A folder of checkpoints resumes from its latest complete one; an incomplete
            # checkpoint (killed mid-write) is refused by name.
            self.cfg.resume_from_checkpoint = str(
                resolve_checkpoint(self.cfg.resume_from_checkpoint)
            )
        if context is None:
            _check_resume_world_size(self.cfg.resume_from_checkpoint, 1)
            return super().run()
        _check_resume_world_size(self.cfg.resume_from_checkpoint, context.world_size)
        # SAELens's run() with three differences: the trainer is DistributedSAETrainer, only
        # rank 0 logs and writes, and no checkpoint is written on interruption (the ranks
        # cannot agree on a step once a signal has arrived).
        self._set_sae_metadata()
        log_to_wandb = self.cfg.logger.log_to_wandb and context.is_main
        if log_to_wandb:
            wandb.init(
                project=self.cfg.logger.wandb_project,
                entity=self.cfg.logger.wandb_entity,
                config=self.cfg.to_dict(),
                name=self.cfg.logger.run_name,
                id=self.cfg.logger.wandb_id,
            )
        trainer_cfg = self.cfg.to_sae_trainer_config()
        trainer_cfg.logger = dataclasses.replace(trainer_cfg.logger, log_to_wandb=log_to_wandb)
        data_provider: Any = self.activations_store
        if self.cfg.prefetch_llm_batches:
            prefetch = (
                1
                if isinstance(self.cfg.prefetch_llm_batches, bool)
                else self.cfg.prefetch_llm_batches
            )
            data_provider = PrefetchingIterator(iter(self.activations_store), prefetch=prefetch)
        try:
            trainer = DistributedSAETrainer(
                cfg=trainer_cfg,
                sae=self.sae,
                data_provider=data_provider,
                evaluator=self.evaluator,
                save_checkpoint_fn=self.save_checkpoint,
                context=context,
            )
            if self.cfg.resume_from_checkpoint is not None:
                path = Path(self.cfg.resume_from_checkpoint)
                trainer.load_trainer_state(path)
                self.sae.load_weights_from_checkpoint(path)
                self.activations_store.load(str(path / store_state_filename(context.rank)))
            self._compile_sae_if_needed()
            with _quiet_unless(context.is_main):
                sae = trainer.fit()
            if self.cfg.output_path is not None and context.is_main:
                self.save_final_sae(
                    sae=sae,
                    output_path=self.cfg.output_path,
                    log_feature_sparsity=trainer.log_feature_sparsity,
                )
            if log_to_wandb:
                wandb.finish()
            dist.barrier()  # the final SAE is on disk when run() returns on any rank
            return sae
        finally:
            if isinstance(data_provider, PrefetchingIterator):
                data_provider.close()

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        """SAELens's runner checkpoint plus, under torchrun, every rank's dataset position.

        A collective under torchrun: every rank calls it (the trainer sees to that) and only
        rank 0, the one given a path, writes.
        """
        context = self.distributed
        if context is None:
            super().save_checkpoint(checkpoint_path)
            if checkpoint_path is not None:
                mark_complete(checkpoint_path)
            return
        states = context.all_gather_object(self.activations_store.state_dict())
        if checkpoint_path is None:
            return
        super().save_checkpoint(checkpoint_path)
        for rank, state in enumerate(states[1:], start=1):
            save_file(state, checkpoint_path / store_state_filename(rank))
        positions = [int(state["n_dataset_processed"]) for state in states]
        (checkpoint_path / DISTRIBUTED_STATE_FILENAME).write_text(
            json.dumps({"world_size": context.world_size, "n_dataset_processed": positions})
        )
        mark_complete(checkpoint_path)

    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        """Train in one process; SIGINT/SIGTERM stop between two steps with a complete
        checkpoint and raise :class:`~softsae_lens.training.interrupt.TrainingInterrupted` (SAELens
        6.54's version saves into a folder it never created; see :mod:`softsae_lens.training.interrupt`).
        """
        return fit_until_signalled(trainer, self.cfg.checkpoint_path)
