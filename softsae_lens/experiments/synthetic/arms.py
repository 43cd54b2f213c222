"""The SAEs under comparison: which variants run, and how each is built and made inference-ready.

A variant is ``{"kind": one of SAE_KINDS, **config overrides}``; :data:`MAIN_VARIANTS`
is the main comparison and :data:`ABLATION_VARIANTS` the SoftSAE ablation. :func:`build_sae`
turns one into a fresh SAELens training SAE; :func:`to_inference` gives the SAE as SAELens saves
it at the end of training.

The architectures without a k are put at the target L0 as the SmolLM2 sweep puts them
(:mod:`softsae_lens.experiments.sweep.calibrate`): JumpReLU with SAELens's quadratic L0 loss at
``target_l0``, the straight-through estimator reaching the input, and its threshold started at
the target on a pilot batch; matching pursuit with its residual threshold steered toward the
target during training (:class:`~softsae_lens.experiments.sweep.calibrate.L0SteeredMatchingPursuit`).

Depends on SAELens's SAE classes, this package's SoftSAE, the sweep's calibration helpers,
:mod:`.data` and :mod:`.settings`: nothing about data streams, training loops, reports or plots.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitTrainingSAEConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)

import softsae_lens  # noqa: F401  (registers the "soft" architecture with SAELens)
from softsae_lens.experiments.sweep.calibrate import (
    L0SteeredMatchingPursuit,
    calibrate_jumprelu_threshold,
    initial_residual_threshold,
)
from softsae_lens.experiments.sweep.config import matryoshka_widths
from softsae_lens.experiments.synthetic.data import Regime
from softsae_lens.experiments.synthetic.prototype import (
    ProtoSoftTrainingSAE,
    ProtoSoftTrainingSAEConfig,
)
from softsae_lens.experiments.synthetic.realistic import RealisticRegime
from softsae_lens.experiments.synthetic.settings import RealisticSettings, Settings
from softsae_lens.soft_sae import SoftTrainingSAE, SoftTrainingSAEConfig

SAE_KINDS = ("soft", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "matching_pursuit")
# The main comparison. Every SAE targets k = round(true mean L0); "topk_plus1" (TopK with k + 1)
# brackets SoftSAE's realised L0 from above, since TopK's realised L0 ends below its k (ReLU
# zeroes some of its top-k entries) and SoftSAE's ends near k. BatchTopK and Matryoshka
# BatchTopK take the true mean L0 itself (a float k); JumpReLU and matching pursuit, the
# architectures whose per-input L0 also varies, target SoftSAE's integer k.
MAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "soft": {"kind": "soft"},
    "topk": {"kind": "topk"},
    "topk_plus1": {"kind": "topk", "k_offset": 1},
    "batchtopk": {"kind": "batchtopk"},
    "matryoshka_batchtopk": {"kind": "matryoshka_batchtopk"},
    "jumprelu": {"kind": "jumprelu"},
    "matching_pursuit": {"kind": "matching_pursuit"},
}
# The SAEs whose per-input L0 at inference can vary (TopK's cannot exceed its k).
ADAPTIVE_KINDS = ("soft", "batchtopk", "matryoshka_batchtopk", "jumprelu", "matching_pursuit")
# The realistic regime runs the same comparison (SoftSAE with the package defaults there).
REALISTIC_VARIANTS: dict[str, dict[str, Any]] = dict(MAIN_VARIANTS)
SAE_LABELS = {
    "soft": "SoftSAE",
    "topk": "TopK",
    "topk_plus1": "TopK (k+1)",
    "batchtopk": "BatchTopK",
    "matryoshka_batchtopk": "Matryoshka BatchTopK",
    "jumprelu": "JumpReLU",
    "matching_pursuit": "Matching pursuit",
}

# The SoftSAE config fields recorded with each run.
SOFT_CONFIG_FIELDS = (
    "k",
    "k_max",
    "k_rounding",
    "k_estimator_width",
    "rescale_acts_by_decoder_norm",
    "total_training_steps",
    "k_budget",
    "k_loss_coefficient",
    "k_loss_scale",
    "k_loss_beta",
    "k_target_start",
    "k_anneal_fraction",
    "alpha_start",
    "alpha_end",
    "alpha_anneal_fraction",
    "alpha_scale",
    "soft_topk_grad_to_pre",
    "hard_topk_fraction",
    "hard_selection_loss_coefficient",
    "aux_loss_coefficient",
)

# Every SoftSAE variant sets all the fields it is about, so it reads the same whatever the
# experiment's own overrides are; all use k_max = 4k unless they say otherwise.
# The toy ablation's "(a)": the package defaults of the round it was run in (alpha_end is 0.05
# now, its "alpha_end_0.05" row).
_PACKAGE_DEFAULTS = {"alpha_scale": "relative", "alpha_end": 1e-2, "soft_topk_grad_to_pre": False}
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "topk": {"kind": "topk"},
    "a_defaults": {"kind": "soft", **_PACKAGE_DEFAULTS},
    "b_grad_to_pre": {"kind": "soft", **_PACKAGE_DEFAULTS, "soft_topk_grad_to_pre": True},
    "c_paper": {
        "kind": "soft",
        "k_budget": "penalty",
        "k_loss_scale": "absolute",
        "alpha_scale": "absolute",
        "alpha_end": 1e-4,
        "soft_topk_grad_to_pre": True,
        "k_rounding": "floor",
        "k_estimator_width": "d_sae",
    },
    "alpha_end_0.05": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.05},
    "alpha_end_0.1": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.1},
    "alpha_end_0.2": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.2},
    "alpha_abs_0.02": {
        "kind": "soft",
        **_PACKAGE_DEFAULTS,
        "alpha_scale": "absolute",
        "alpha_end": 0.02,
    },
    "k_max_2k": {"kind": "soft", **_PACKAGE_DEFAULTS, "alpha_end": 0.05, "k_max_factor": 2.0},
    "k_loss_absolute": {
        "kind": "soft",
        **_PACKAGE_DEFAULTS,
        "alpha_end": 0.05,
        "k_budget": "penalty",
        "k_loss_scale": "absolute",
    },
}
ABLATION_DESCRIPTIONS = {
    "topk": "SAELens TopK, k = round(true mean L0) (reference)",
    "a_defaults": "(a) SoftSAE package defaults: alpha_scale relative, alpha_end 1e-2, soft_topk_grad_to_pre False",
    "b_grad_to_pre": "(b) (a) with soft_topk_grad_to_pre=True",
    "c_paper": "(c) the paper's settings: k_loss_scale absolute, alpha_scale absolute, alpha_end 1e-4, soft_topk_grad_to_pre True, k_rounding floor, k_estimator_width d_sae",
    "alpha_end_0.05": "(a) with alpha_end 0.05 (relative): the main run's SoftSAE",
    "alpha_end_0.1": "(a) with alpha_end 0.1 (relative)",
    "alpha_end_0.2": "(a) with alpha_end 0.2 (relative)",
    "alpha_abs_0.02": "(a) with alpha_scale absolute, alpha_end 0.02 (activation units; true features have magnitude ~1)",
    "k_max_2k": "alpha_end 0.05 with k_max = 2k (the package default) instead of 4k",
    "k_loss_absolute": "alpha_end 0.05 with the paper's k penalty (k_loss_scale absolute) instead of the MSE-scaled one",
}


def target_l0(kind: str, true_mean_l0: float, k_offset: int = 0) -> float:
    """The mean L0 a ``kind`` SAE is set to reach: k = round(true mean L0) (+ ``k_offset``) for
    TopK, SoftSAE, JumpReLU and matching pursuit, the true mean L0 itself for the batch-level
    budgets (BatchTopK, Matryoshka BatchTopK)."""
    if kind in ("batchtopk", "matryoshka_batchtopk"):
        return float(true_mean_l0)
    return float(max(1, round(true_mean_l0) + int(k_offset)))


def _max_iterations(k: int, regime: Regime | RealisticRegime, settings) -> int:
    """Matching pursuit's per-input ceiling: SoftSAE's k_max (``k_max_factor * k``, 2k by
    default), so neither can fire more latents on an input than the other."""
    factor = settings.k_max_factor if settings.k_max_factor is not None else 2.0
    return int(min(regime.d_sae, max(k, round(factor * k))))


def build_sae(
    kind: str,
    regime: Regime | RealisticRegime,
    true_mean_l0: float,
    settings: Settings | RealisticSettings,
    pilot: torch.Tensor | None = None,
    **overrides: Any,
) -> TrainingSAE[Any]:
    """A fresh training SAE of width ``regime.d_sae``; every kind targets ``true_mean_l0``.

    ``overrides`` are config fields, plus ``k_offset`` (shifts the integer k of TopK and
    SoftSAE) and, for SoftSAE, ``k_max_factor`` (``k_max = k_max_factor * k``; None keeps the
    package default); SoftSAE also takes ``settings.soft_overrides`` first.

    ``pilot`` (training-distribution inputs the stream does not hold) is needed by JumpReLU,
    whose threshold starts at the target L0's quantile of its untrained pre-activations, and
    by matching pursuit, whose residual threshold starts at the sweep's rule (half the mean
    input norm) and is then steered toward the target every step.
    """
    overrides = dict(overrides)
    k = max(1, round(true_mean_l0) + int(overrides.pop("k_offset", 0)))
    common: dict[str, Any] = {"d_in": regime.d_in, "d_sae": regime.d_sae}
    if settings.aux_loss_coefficient is not None:
        common["aux_loss_coefficient"] = settings.aux_loss_coefficient
    if kind == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common, **overrides))
    if kind == "batchtopk":
        return BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=float(true_mean_l0), **common, **overrides)
        )
    if kind == "matryoshka_batchtopk":
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(
            k=float(true_mean_l0),
            matryoshka_widths=matryoshka_widths(regime.d_sae),
            **common,
            **overrides,
        )
        return MatryoshkaBatchTopKTrainingSAE(cfg)
    if kind in ("jumprelu", "matching_pursuit") and pilot is None:
        raise ValueError(f"kind={kind!r} needs a pilot batch to start its threshold at the target")
    if kind == "jumprelu":
        common.pop("aux_loss_coefficient", None)  # JumpReLU has no aux loss
        jumprelu = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                jumprelu_sparsity_loss_mode="quadratic",
                target_l0=float(k),
                jumprelu_ste_to_input=True,
                **common,
                **overrides,
            )
        )
        assert pilot is not None
        calibrate_jumprelu_threshold(jumprelu, pilot, float(k))
        return jumprelu
    if kind == "matching_pursuit":
        common.pop("aux_loss_coefficient", None)
        assert pilot is not None
        # The sweep's starting rule is half the mean norm of SAELens-scaled inputs (mean norm
        # sqrt(d_in)); these inputs are unscaled, so the same rule reads their own mean norm.
        mean_norm = float(pilot.norm(dim=-1).mean())
        start = initial_residual_threshold(regime.d_in) * mean_norm / regime.d_in**0.5
        mp_cfg = MatchingPursuitTrainingSAEConfig(
            max_iterations=_max_iterations(k, regime, settings),
            residual_threshold=start,
            decoder_init_norm=1.0,  # what SAELens sets (with a warning) for matching pursuit
            **common,
            **overrides,
        )
        return L0SteeredMatchingPursuit(mp_cfg, target_l0=float(k))
    if kind == "soft":
        overrides = {**settings.soft_overrides, **overrides}
        factor = overrides.pop("k_max_factor", settings.k_max_factor)
        if factor is not None:
            overrides.setdefault("k_max", float(min(regime.d_sae, factor * k)))
        if overrides.get("k_target_start") == "k":
            overrides["k_target_start"] = float(k)
        if overrides.get("k_estimator_width") == "d_sae":
            overrides["k_estimator_width"] = regime.d_sae
        if "train_code" in overrides:  # an experiment-only training variant (.prototype)
            proto = ProtoSoftTrainingSAEConfig(
                k=k, total_training_steps=settings.total_steps, **common, **overrides
            )
            return ProtoSoftTrainingSAE(proto)
        cfg = SoftTrainingSAEConfig(
            k=k, total_training_steps=settings.total_steps, **common, **overrides
        )
        return SoftTrainingSAE(cfg)
    raise ValueError(f"kind must be one of {SAE_KINDS}, got kind={kind!r}")


def to_inference(sae: TrainingSAE[Any]) -> SAE[Any]:
    """The SAE as SAELens saves it for inference (BatchTopK becomes JumpReLU)."""
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp)
    inference.eval()
    return inference


# The realistic-regime ablation: the package defaults, then one change at a time; TopK (k and
# k + 1, to compare EV at SoftSAE's L0) and BatchTopK as references.
_ST = {"train_code": "straight_through"}
REALISTIC_ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "topk": {"kind": "topk"},
    "topk_plus1": {"kind": "topk", "k_offset": 1},
    "batchtopk": {"kind": "batchtopk"},
    "soft": {"kind": "soft"},
    "straight_through": {"kind": "soft", **_ST},
    "straight_through_no_hard": {"kind": "soft", **_ST, "hard_topk_fraction": 0.0},
    "hard_25": {"kind": "soft", "hard_topk_fraction": 0.25},
    "hard_50": {"kind": "soft", "hard_topk_fraction": 0.5},
    "alpha_end_0.01": {"kind": "soft", "alpha_end": 0.01},
    "alpha_end_0.03": {"kind": "soft", "alpha_end": 0.03},
    "hard_selection_loss": {"kind": "soft", "hard_selection_loss_coefficient": 1.0},
    "hard_selection_loss_0.3": {"kind": "soft", "hard_selection_loss_coefficient": 0.3},
    "alpha_end_0.1": {"kind": "soft", "alpha_end": 0.1},
    "alpha_end_0.2": {"kind": "soft", "alpha_end": 0.2},
    "alpha_end_1e-3": {"kind": "soft", "alpha_end": 1e-3},
    "alpha_anneal_10pct": {"kind": "soft", "alpha_anneal_fraction": 0.1},
    "grad_to_pre": {"kind": "soft", "soft_topk_grad_to_pre": True},
    "k_max_4k": {"kind": "soft", "k_max_factor": 4.0},
    "k_max_4k_hard_selection_0.3": {
        "kind": "soft",
        "k_max_factor": 4.0,
        "hard_selection_loss_coefficient": 0.3,
    },
    "k_budget_penalty": {"kind": "soft", "k_budget": "penalty"},
    "k_loss_absolute": {"kind": "soft", "k_budget": "penalty", "k_loss_scale": "absolute"},
    "k_loss_coef_10": {"kind": "soft", "k_budget": "penalty", "k_loss_coefficient": 10.0},
    "k_loss_coef_0.5": {"kind": "soft", "k_budget": "penalty", "k_loss_coefficient": 0.5},
    "k_loss_coef_0.2": {"kind": "soft", "k_budget": "penalty", "k_loss_coefficient": 0.2},
    "estimator_d_sae": {"kind": "soft", "k_estimator_width": "d_sae"},
    "aux_coef_1": {"kind": "soft", "aux_loss_coefficient": 1.0},
    "no_decoder_rescale": {"kind": "soft", "rescale_acts_by_decoder_norm": False},
    "k_start_at_k": {"kind": "soft", "k_target_start": "k"},
    "k_anneal_10pct": {"kind": "soft", "k_anneal_fraction": 0.1},
    "alpha_start_0.01": {"kind": "soft", "alpha_start": 0.01, "alpha_end": 0.01},
    "sparse_start": {"kind": "soft", "k_target_start": "k", "alpha_start": 0.01, "alpha_end": 0.01},
    "sparse_start_alpha_0.05": {
        "kind": "soft",
        "k_target_start": "k",
        "alpha_start": 0.05,
        "alpha_end": 0.05,
    },
    "estimator_random_init": {"kind": "soft", "train_code": "soft", "k_estimator_init": "random"},
    "estimator_lr_0.1": {"kind": "soft", "train_code": "soft", "k_estimator_lr_scale": 0.1},
    "estimator_lr_0.01": {"kind": "soft", "train_code": "soft", "k_estimator_lr_scale": 0.01},
}
REALISTIC_ABLATION_DESCRIPTIONS = {
    "topk": "SAELens TopK, k = round(true L0 of the d_sae most frequent features) (reference)",
    "topk_plus1": "SAELens TopK with k + 1 (reference: EV at SoftSAE's L0)",
    "batchtopk": "SAELens BatchTopK, same k (reference)",
    "soft": "SoftSAE, package defaults",
    "straight_through": "hard top-k forward from step 0; the k-estimator gets the soft weights' exact gradient (straight-through); last 4% hard as by default",
    "straight_through_no_hard": "straight_through with hard_topk_fraction 0 (k keeps learning to the end)",
    "hard_25": "hard_topk_fraction 0.25 (default 0.04)",
    "hard_50": "hard_topk_fraction 0.5",
    "alpha_end_0.01": "alpha floor 0.01 of the RMS positive pre-activation (the default before; default 0.05)",
    "alpha_end_0.03": "alpha floor 0.03 (where the toy with inputs denser than k still switches to hard top-k cleanly)",
    "hard_selection_loss": "hard_selection_loss_coefficient 1: the soft phase also trains the hard top-k of inference (default 0)",
    "hard_selection_loss_0.3": "hard_selection_loss_coefficient 0.3",
    "alpha_end_0.1": "alpha floor 0.1 (default 0.05)",
    "alpha_end_0.2": "alpha floor 0.2 (default 0.05)",
    "alpha_end_1e-3": "alpha floor 1e-3 (default 0.05)",
    "alpha_anneal_10pct": "alpha annealed over 10% of the steps (default 1%)",
    "grad_to_pre": "soft_topk_grad_to_pre True: the soft weights' gradient reaches the pre-activations",
    "k_max_4k": "k_max = 4k (default 2k)",
    "k_max_4k_hard_selection_0.3": "k_max_4k and hard_selection_loss_0.3 together",
    "k_budget_penalty": "k_budget penalty: the one-sided MSE-scaled penalty alone (the previous default; default: normalize)",
    "k_loss_absolute": "k_budget penalty with the paper's absolute penalty (k_loss_scale absolute)",
    "k_loss_coef_10": "k_budget penalty, k_loss_coefficient 10 (default 1)",
    "k_loss_coef_0.5": "k_budget penalty, k_loss_coefficient 0.5 (default 1)",
    "k_loss_coef_0.2": "k_budget penalty, k_loss_coefficient 0.2 (default 1)",
    "estimator_d_sae": "k-estimator width d_sae, as the paper (default d_sae / 4)",
    "aux_coef_1": "aux_loss_coefficient 1.0, TopK's SAELens default (default 1/32, the paper's)",
    "no_decoder_rescale": "rescale_acts_by_decoder_norm False (default True)",
    "k_start_at_k": "the k target starts at k: the budget holds from the first step (default: anneals from max(d_in, k_max) over 1% of the steps)",
    "k_anneal_10pct": "the k target anneals over 10% of the steps (default 1%)",
    "alpha_start_0.01": "alpha held at 0.01, the previous floor (no alpha anneal; default: from 1.0 over 1% of the steps to 0.05)",
    "sparse_start": "k_start_at_k and alpha_start_0.01 together: no dense start at all (floor 0.01)",
    "sparse_start_alpha_0.05": "sparse_start with alpha held at 0.05 throughout",
    "estimator_random_init": "k-estimator's first layer random directions, same norms (default: a copy of encoder columns)",
    "estimator_lr_0.1": "k-estimator's learning rate 0.1x the encoder's (reparametrised; default 1x)",
    "estimator_lr_0.01": "k-estimator's learning rate 0.01x the encoder's",
}
