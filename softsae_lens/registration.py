"""Registers the "soft" architecture with SAELens (inference and training) through its own
``register_sae_class`` / ``register_sae_training_class``.

SAELens has no entry-point discovery and raises on a second registration of a name, which a
module reload or ``python -m`` of an imported module would trigger. Registering here is
idempotent, refuses a *different* class already holding the name, and replaces the entry when a
reload has made new class objects of the same classes.
"""

from __future__ import annotations

from collections.abc import Callable

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

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


def _register(
    registry: dict, register: Callable[..., None], pair: tuple[type, type], which: str
) -> None:
    existing = registry.get(ARCHITECTURE)
    if existing is not None:
        if not _same_class(existing[0], pair[0]):
            raise ValueError(
                f"SAELens {which} architecture {ARCHITECTURE!r} is already registered to "
                f"{existing[0].__module__}.{existing[0].__qualname__}; softsae_lens cannot "
                "register SoftSAE under it"
            )
        if tuple(existing) == pair:
            return
        # A reload: SAELens has no way to replace a registration, so the stale entry (the same
        # classes' old objects) is dropped before registering the new ones.
        del registry[ARCHITECTURE]
    register(ARCHITECTURE, *pair)


def register_soft_architecture() -> None:
    """Make ``architecture="soft"`` known to SAELens (safe to call any number of times)."""
    _register(SAE_CLASS_REGISTRY, register_sae_class, (SoftSAE, SoftSAEConfig), "inference")
    _register(
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_training_class,
        (SoftTrainingSAE, SoftTrainingSAEConfig),
        "training",
    )
