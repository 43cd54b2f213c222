"""Registers the "soft" architecture in SAELens's inference and training registries.

SAELens has no entry-point discovery and raises on a second registration of a name, which a
module reload or ``python -m`` of an imported module would trigger; registering here is
idempotent and only refuses a *different* class already holding the name.
"""

from __future__ import annotations

from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

from softsae_lens.soft_sae import (
    ARCHITECTURE,
    SoftSAE,
    SoftSAEConfig,
    SoftTrainingSAE,
    SoftTrainingSAEConfig,
)


def _same_class(a: type, b: type) -> bool:
    # A reloaded module defines new class objects with the same qualified name.
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register(registry: dict, pair: tuple[type, type], which: str) -> None:
    existing = registry.get(ARCHITECTURE)
    if existing is not None and not _same_class(existing[0], pair[0]):
        raise ValueError(
            f"SAELens {which} architecture {ARCHITECTURE!r} is already registered to "
            f"{existing[0].__module__}.{existing[0].__qualname__}; softsae_lens cannot register SoftSAE under it"
        )
    registry[ARCHITECTURE] = pair


def register_soft_architecture() -> None:
    """Make ``architecture="soft"`` known to SAELens (safe to call any number of times)."""
    _register(SAE_CLASS_REGISTRY, (SoftSAE, SoftSAEConfig), "inference")
    _register(SAE_TRAINING_CLASS_REGISTRY, (SoftTrainingSAE, SoftTrainingSAEConfig), "training")
