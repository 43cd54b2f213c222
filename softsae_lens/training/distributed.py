"""Data-parallel SAE training on ``torch.distributed``: the process group, the data and the trainer.

Under ``torchrun`` every rank runs its own model copy and ``ActivationsStore`` over a disjoint
shard of the dataset and trains one replica of the SAE. PyTorch's ``DistributedDataParallel``
averages the gradients every step; :class:`DistributedSAETrainer` (a subclass of SAELens's
``SAETrainer``) makes everything else that is computed from "the batch" global: the
dead-latent and feature-sparsity counts, the activation-normalisation estimate, BatchTopK's
threshold, and, through the ``hook_sae_batch_sums`` HookPoint that SoftSAE exposes, SoftSAE's
k penalty and relative alpha. The runner that wires this into SAELens's
``LanguageModelSAETrainingRunner`` is in ``distributed_runner.py``.

Everything here is opt-in by the environment: :func:`init_distributed` returns ``None`` when
``WORLD_SIZE`` is unset or 1, and callers then take SAELens's own code paths unchanged.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol  # see all_reduce_sum
from datasets import Dataset, DatasetDict, IterableDataset
from datasets.distributed import split_dataset_by_node
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens.training.types import DataProvider
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Name of the HookPoint through which an architecture sends sums over its batch (SoftSAE's k
# penalty and relative alpha); under data parallelism it is hooked to sum over all ranks.
BATCH_SUMS_HOOK = "hook_sae_batch_sums"


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel run: its rank, the world size, its GPU index."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and writes the final SAE."""
        return self.rank == 0

    def local_device(self, device: str | None) -> str | None:
        """``"cuda"`` (or any ``"cuda:N"``) becomes this rank's GPU, ``cuda:LOCAL_RANK``."""
        if device is None or torch.device(device).type != "cuda":
            return device
        return f"cuda:{self.local_rank}"

    def per_rank_batch(self, train_batch_size_tokens: int) -> int:
        """Each rank's share of the global batch; the world size must divide it."""
        if train_batch_size_tokens % self.world_size != 0:
            raise ValueError(
                f"train_batch_size_tokens={train_batch_size_tokens} is the global batch and must be "
                f"divisible by the number of processes WORLD_SIZE={self.world_size}; use a multiple "
                f"of {self.world_size} (e.g. {train_batch_size_tokens // self.world_size * self.world_size or self.world_size})"
            )
        return train_batch_size_tokens // self.world_size

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order (a collective: every rank must call it)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a collective)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(
                f"{name} is not set; torchrun sets WORLD_SIZE, RANK and LOCAL_RANK together"
            )
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {name}={value!r}") from None


def init_distributed(device: str | None = "cpu") -> DistributedContext | None:
    """Join the process group that ``torchrun`` describes, or return ``None`` in one process.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through
    ``init_method="env://"``). A world size of 1 or no ``WORLD_SIZE`` returns ``None``. A process
    group that is already initialised (by the caller) is reused. CUDA devices use NCCL and pin
    this process to ``cuda:LOCAL_RANK``; CPU uses Gloo.
    """
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world == 1:
            return None
        rank = dist.get_rank()
        return DistributedContext(rank, world, _env_int("LOCAL_RANK", rank))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world} asks for data-parallel training, but this torch build has no torch.distributed"
        )
    rank = _env_int("RANK")
    context = DistributedContext(rank, world, _env_int("LOCAL_RANK", rank))
    if device is not None and torch.device(device).type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={context.local_rank} but this machine has {torch.cuda.device_count()} "
                "CUDA devices; use --nproc_per_node at most the number of GPUs"
            )
        gpu = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(gpu)
        dist.init_process_group("nccl", device_id=gpu)
    else:
        dist.init_process_group("gloo")
    return context


def shard_dataset(
    dataset: Any, context: DistributedContext, min_rows_per_rank: int = 1
) -> Dataset | IterableDataset:
    """This rank's disjoint shard of ``dataset`` (Hugging Face ``datasets.split_dataset_by_node``).

    A map-style ``Dataset`` is cut into ``world_size`` contiguous chunks that together hold every
    row once. An ``IterableDataset`` is split by its files when their number is a multiple of the
    world size, otherwise every rank keeps one example in ``world_size``. A dataset with fewer
    than ``min_rows_per_rank`` rows per rank raises (a streamed one is read just that far).
    """
    if isinstance(dataset, DatasetDict):
        raise ValueError(
            f"dataset is a DatasetDict with splits {list(dataset)}; pass one split (a Dataset), as "
            "SAELens's ActivationsStore loads split='train'"
        )
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(
            f"can only shard a datasets.Dataset or IterableDataset across ranks, got {type(dataset).__name__}"
        )
    needed = context.world_size * min_rows_per_rank
    # A streamed dataset has no length: read just enough of its head to know it is not too small.
    rows = (
        len(dataset)
        if isinstance(dataset, Dataset)
        else sum(1 for _ in itertools.islice(iter(dataset), needed))
    )
    if rows < needed:
        raise ValueError(
            f"the dataset has {rows} rows, too few to shard over WORLD_SIZE="
            f"{context.world_size}: each rank needs at least {min_rows_per_rank} rows "
            f"(store_batch_size_prompts for a tokenized dataset), {needed} in all; use a larger "
            "dataset or fewer processes"
        )
    return split_dataset_by_node(dataset, rank=context.rank, world_size=context.world_size)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
    return flat


def check_same_config(config: Mapping[str, Any], context: DistributedContext) -> None:
    """Raise on every rank unless every rank holds the same ``config`` (a collective).

    ``config`` is a (nested) dict, e.g. ``LanguageModelSAERunnerConfig.to_dict()``; the error
    names the first fields that differ and each rank's value.
    """
    mine = _flatten(config)
    everyone = context.all_gather_object(mine)
    differences = []
    for rank, theirs in enumerate(everyone[1:], start=1):
        for key in sorted(set(everyone[0]) | set(theirs)):
            if everyone[0].get(key) != theirs.get(key):
                differences.append(
                    f"{key}: rank 0 has {everyone[0].get(key, '<missing>')}, rank {rank} has "
                    f"{theirs.get(key, '<missing>')}"
                )
    if differences:
        shown = "; ".join(differences[:5]) + ("; ..." if len(differences) > 5 else "")
        raise ValueError(
            f"the training configuration differs across ranks ({len(differences)} fields); every "
            f"rank must be started with the same arguments and data: {shown}"
        )


class GlobalBatches:
    """An iterator over the global batch: every rank's next batch, concatenated in rank order.

    Hands SAELens's own estimators (``ActivationScaler.estimate_scaling_factor`` and
    ``estimate_whitening``) exactly the activations one process would see. A collective: every
    rank must draw the same number of batches.
    """

    def __init__(self, data_provider: DataProvider, device: torch.device | str):
        self.data_provider = data_provider
        self.device = torch.device(device)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        local = next(self.data_provider).to(self.device).contiguous()
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        return torch.cat(gathered)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks, differentiable (the backward sums the gradients too)."""
    # torch's private functional collectives: 2.13 deprecates the public differentiable
    # all_reduce (torch.distributed.nn.functional), which also fails under torch.compile.
    total = funcol.all_reduce(tensor, "sum", dist.group.WORLD)
    total = funcol.wait_tensor(total)
    if tensor.requires_grad and not total.requires_grad:
        raise RuntimeError(
            "this torch version's functional all_reduce carries no gradient; data-parallel "
            "SoftSAE training needs a torch whose torch.distributed._functional_collectives are "
            "differentiable (2.13 is tested)"
        )
    return total


def install_global_batch_sums(sae: nn.Module) -> torch.utils.hooks.RemovableHandle | None:
    """Make the SAE's batch sums global: hook its ``hook_sae_batch_sums`` to sum over all ranks.

    Architectures that compute a statistic of the whole batch inside their loss (SoftSAE: the
    mean k_hat that its k penalty caps, and the RMS pre-activation behind its relative alpha)
    send the per-batch sums through that HookPoint. Returns the hook's handle, or ``None`` when
    the SAE has no such HookPoint.
    """
    hook_point = getattr(sae, BATCH_SUMS_HOOK, None)
    if not isinstance(hook_point, nn.Module):
        return None
    return hook_point.register_forward_hook(lambda _module, _inputs, sums: all_reduce_sum(sums))


class _TrainingForward(nn.Module):
    """Presents an SAE's ``training_forward_pass`` as ``forward`` so that DDP can wrap it."""

    def __init__(self, sae: nn.Module, training_forward_pass: Any):
        super().__init__()
        self.sae = sae
        self.training_forward_pass = training_forward_pass

    def forward(self, step_input: Any) -> Any:
        return self.training_forward_pass(step_input)


class DistributedSAETrainer(SAETrainer):
    """SAELens's ``SAETrainer`` for one rank of a data-parallel run.

    Use it exactly like ``SAETrainer`` with a data provider that yields this rank's share of
    each global batch (``cfg.train_batch_size_samples`` is the global batch, which the world size
    must divide) and ``context`` from :func:`init_distributed`. Counters are global:
    ``n_training_samples`` counts every rank's samples, so ``total_training_samples`` is the
    global total and the step count, schedules and checkpoint points match a single-process run.
    Only rank 0 writes checkpoints; the other ranks still call ``save_checkpoint_fn`` (with
    ``checkpoint_path=None``) so that it can gather their state.
    """

    def __init__(self, *args: Any, context: DistributedContext, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.context = context
        context.per_rank_batch(self.cfg.train_batch_size_samples)

    def fit(self):  # type: ignore[override]
        self._estimate_normalisation_globally()
        handle = install_global_batch_sums(self.sae)
        had_own = "training_forward_pass" in vars(self.sae)
        inner = self.sae.training_forward_pass
        device = torch.device(self.cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        # SAELens's trainer calls sae.training_forward_pass(...), not forward(), and DDP hooks
        # forward(). Routing that one attribute through DDP for the length of fit() is the seam
        # SAELens's own runner uses for torch.compile. DDP broadcasts rank 0's parameters and
        # buffers when it is built, so every random initialisation is rank 0's.
        # find_unused_parameters: some parameters get no gradient in some steps (SoftSAE's
        # k-estimator in its hard phase); DDP then leaves their .grad as None, as one process does.
        ddp = DistributedDataParallel(
            _TrainingForward(self.sae, inner),
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
        self.sae.training_forward_pass = lambda step_input: ddp(step_input)  # type: ignore[method-assign]
        try:
            return super().fit()
        finally:
            if had_own:
                self.sae.training_forward_pass = inner  # type: ignore[method-assign]
            else:
                del self.sae.training_forward_pass
            if handle is not None:
                handle.remove()

    def _estimate_normalisation_globally(self) -> None:
        # SAELens's own estimators, fed the global batches; SAETrainer.fit() then finds the
        # statistics set and keeps them. Rank 0's result is broadcast so that float differences
        # between machines cannot split the ranks.
        norm = self.sae.cfg.normalize_activations
        scaler = self.activation_scaler
        batches = GlobalBatches(self.data_provider, self.cfg.device)
        n_batches = self.cfg.n_batches_for_norm_estimate
        if norm == "expected_average_only_in" and scaler.scaling_factor is None:
            scaler.estimate_scaling_factor(self.sae.cfg.d_in, batches, n_batches)
            scaler.scaling_factor = self.context.broadcast_object(scaler.scaling_factor)
        elif norm == "covariance_whitening" and scaler.whitening is None:
            scaler.estimate_whitening(self.sae.cfg.d_in, batches, n_batches)
            assert scaler.whitening is not None
            # Pickled CUDA tensors would land on rank 0's GPU: send them via the CPU.
            scaler.whitening = self.context.broadcast_object(
                scaler.whitening.to(torch.device("cpu"))
            )

    def step(self, batch: torch.Tensor):  # type: ignore[override]
        """One data-parallel step on this rank's share of the global batch.

        After SAELens's step, the firing counts of all ranks are summed, so the dead-latent window
        and the feature sparsity count firings anywhere in the global batch, exactly as one
        process would on that batch.
        """
        freq_before = self.act_freq_scores.clone()
        passes_before = self.n_forward_passes_since_fired.clone()
        output = super().step(batch)
        self.n_training_samples += batch.shape[0] * (self.context.world_size - 1)
        fired = self.act_freq_scores - freq_before
        dist.all_reduce(fired)
        self.act_freq_scores = freq_before + fired
        self.n_forward_passes_since_fired = torch.where(
            fired > 0, torch.zeros_like(passes_before), passes_before + 1
        )
        self._sync_batch_buffers()
        return output

    def _sync_batch_buffers(self) -> None:
        # BatchTopK (and Matryoshka) move their inference threshold towards the smallest kept
        # activation of each batch; the minimum over the ranks' updates is that rule applied to
        # the smallest kept activation anywhere in the global batch.
        threshold = getattr(self.sae, "topk_threshold", None)
        if isinstance(threshold, torch.Tensor):
            dist.all_reduce(threshold, op=dist.ReduceOp.MIN)

    def save_checkpoint(self, checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
        """Rank 0 writes the checkpoint; the other ranks join ``save_checkpoint_fn``'s gather."""
        if self.context.is_main:
            super().save_checkpoint(checkpoint_name, *args, **kwargs)
        elif self.save_checkpoint_fn is not None:
            self.save_checkpoint_fn(checkpoint_path=None)
