"""What one run of the synthetic experiment depends on: :class:`Settings` and its defaults.

Depends on :mod:`.data` and :mod:`.realistic` (the regimes) only: nothing about SAEs,
training, reports or plots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from softsae_lens.experiments.synthetic.data import Regime
from softsae_lens.experiments.synthetic.realistic import RealisticRegime

# SoftSAE settings of this experiment that differ from the package defaults (see the ablation):
# alpha_end 0.05 (relative) instead of 0.01.
EXPERIMENT_SOFT_OVERRIDES: dict[str, Any] = {"alpha_end": 0.05}


@dataclass
class Settings:
    """Everything a run depends on (stored in the JSON).

    ``aux_loss_coefficient`` (None: each SAE's own default) is moot in these runs:
    ``train_toy_sae`` counts a latent as dead after 1000 steps without firing, which no run
    of 1000 steps reaches, so no SAE's dead-latent loss ever switches on.
    """

    regimes: list[Regime]
    seeds: list[int]
    training_samples: int
    batch_size: int
    lr: float
    lr_warm_up_steps: int
    lr_decay_steps: int
    n_eval: int
    k_max_factor: float = 4.0
    aux_loss_coefficient: float | None = None
    soft_overrides: dict[str, Any] = field(default_factory=lambda: dict(EXPERIMENT_SOFT_OVERRIDES))

    @property
    def total_steps(self) -> int:
        return self.training_samples // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["total_steps"] = self.total_steps
        return d


@dataclass
class RealisticSettings:
    """How SAEs train on the realistic regimes: through SAELens's ``SyntheticSAERunner``.

    SoftSAE runs with the package defaults here (``soft_overrides`` empty, ``k_max_factor``
    None): this regime is the check of those defaults. ``dead_feature_window`` is SAELens's
    (steps without firing before a latent counts as dead and the aux loss targets it).
    """

    regimes: list[RealisticRegime]
    seeds: list[int]
    training_samples: int
    batch_size: int = 1024
    lr: float = 3e-4
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    dead_feature_window: int = 1000
    n_eval: int = 20_000
    eval_batch_size: int = 5_000
    k_max_factor: float | None = None
    aux_loss_coefficient: float | None = None
    soft_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.training_samples // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["total_steps"] = self.total_steps
        return d


def default_regimes(quick: bool = False) -> list[Regime]:
    """The bimodal and spread regimes (64 features in 32 dims with ``quick``, else 256 in 128)."""
    if quick:
        return [
            Regime("bimodal", "bimodal", num_features=64, d_in=32, dense_l0=12, simple_l0=2),
            Regime("spread", "spread", num_features=64, d_in=32, dense_l0=12, min_l0=1),
        ]
    return [
        Regime("bimodal", "bimodal", num_features=256, d_in=128, dense_l0=24, simple_l0=2),
        Regime("spread", "spread", num_features=256, d_in=128, dense_l0=26, min_l0=1),
    ]


def default_settings(quick: bool = False) -> Settings:
    """The default run (3 seeds, 1000 steps) or the quick one (1 seed, 200 small steps)."""
    settings = Settings(
        regimes=default_regimes(),
        seeds=[0, 1, 2],
        training_samples=1024 * 1000,
        batch_size=1024,
        lr=3e-3,
        lr_warm_up_steps=0,
        lr_decay_steps=200,
        n_eval=50_000,
    )
    if not quick:
        return settings
    return dataclasses.replace(
        settings,
        regimes=default_regimes(quick=True),
        seeds=[0],
        training_samples=256 * 200,
        batch_size=256,
        lr_decay_steps=0,
        n_eval=4096,
    )


def default_realistic(quick: bool = False) -> RealisticSettings:
    """The realistic regime of the default run, or a tiny one for the test suite."""
    if quick:
        return RealisticSettings(
            regimes=[RealisticRegime("realistic", num_features=256, hidden_dim=32)],
            seeds=[0],
            training_samples=256 * 150,
            batch_size=256,
            lr=3e-3,
            dead_feature_window=50,
            n_eval=4096,
            eval_batch_size=4096,
        )
    return RealisticSettings(
        regimes=[RealisticRegime("realistic", num_features=2048, hidden_dim=128)],
        seeds=[0, 1, 2],
        training_samples=1024 * 1000,
        batch_size=1024,
        lr=3e-3,
        dead_feature_window=250,
    )
