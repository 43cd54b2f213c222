"""SoftSAE (adaptive per-input k, differentiable Soft Top-K) as the SAELens architecture "soft".

Importing this package registers "soft" with SAELens for inference and training.
"""

from softsae_lens.registration import register_soft_architecture
from softsae_lens.soft_sae import (
    SoftSAE,
    SoftSAEConfig,
    SoftSchedule,
    SoftTrainingSAE,
    SoftTrainingSAEConfig,
)
from softsae_lens.soft_topk import soft_topk
from softsae_lens.training.run_length import configure_runner
from softsae_lens.training.runner import DistributedSAETrainingRunner

register_soft_architecture()

__all__ = [
    "DistributedSAETrainingRunner",
    "SoftSAE",
    "SoftSAEConfig",
    "SoftSchedule",
    "SoftTrainingSAE",
    "SoftTrainingSAEConfig",
    "configure_runner",
    "register_soft_architecture",
    "soft_topk",
]
