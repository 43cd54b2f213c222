"""The SAEs under comparison: which variants run, and how each is built and made inference-ready.

A variant is ``{"kind": "soft" | "topk" | "batchtopk", **config overrides}``; :data:`MAIN_VARIANTS`
is the main comparison and :data:`ABLATION_VARIANTS` the SoftSAE ablation. :func:`build_sae`
turns one into a fresh SAELens training SAE; :func:`to_inference` gives the SAE as SAELens saves
it at the end of training.

Depends on SAELens's SAE classes, this package's SoftSAE, :mod:`.data` and :mod:`.settings`:
nothing about data streams, training loops, reports or plots.
"""

from __future__ import annotations

import tempfile
from typing import Any

from sae_lens import (
    SAE,
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)

import softsae_lens  # noqa: F401  (registers the "soft" architecture with SAELens)
from softsae_lens.experiments.synthetic.data import Regime
from softsae_lens.experiments.synthetic.settings import Settings
from softsae_lens.soft_sae import SoftTrainingSAE, SoftTrainingSAEConfig

SAE_KINDS = ("soft", "topk", "batchtopk")
# The main comparison. Every SAE targets k = round(true mean L0); "topk_plus1" (TopK with k + 1)
# brackets SoftSAE's realised L0 from above, since TopK's realised L0 ends below its k (ReLU
# zeroes some of its top-k entries) and SoftSAE's ends near k.
MAIN_VARIANTS: dict[str, dict[str, Any]] = {
    "soft": {"kind": "soft"},
    "topk": {"kind": "topk"},
    "topk_plus1": {"kind": "topk", "k_offset": 1},
    "batchtopk": {"kind": "batchtopk"},
}
SAE_LABELS = {
    "soft": "SoftSAE",
    "topk": "TopK",
    "topk_plus1": "TopK (k+1)",
    "batchtopk": "BatchTopK",
}

# The SoftSAE config fields recorded with each run.
SOFT_CONFIG_FIELDS = (
    "k",
    "k_max",
    "k_rounding",
    "k_estimator_width",
    "rescale_acts_by_decoder_norm",
    "total_training_steps",
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
    "aux_loss_coefficient",
)

# Every SoftSAE variant sets all the fields it is about, so it reads the same whatever the
# experiment's own overrides are; all use k_max = 4k unless they say otherwise.
_PACKAGE_DEFAULTS = {"alpha_scale": "relative", "alpha_end": 1e-2, "soft_topk_grad_to_pre": False}
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "topk": {"kind": "topk"},
    "a_defaults": {"kind": "soft", **_PACKAGE_DEFAULTS},
    "b_grad_to_pre": {"kind": "soft", **_PACKAGE_DEFAULTS, "soft_topk_grad_to_pre": True},
    "c_paper": {
        "kind": "soft",
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


def build_sae(
    kind: str, regime: Regime, true_mean_l0: float, settings: Settings, **overrides: Any
) -> TrainingSAE[Any]:
    """A fresh training SAE; every kind targets the true mean L0.

    ``overrides`` are config fields, plus ``k_offset`` (shifts the integer k of TopK and
    SoftSAE) and, for SoftSAE, ``k_max_factor`` (``k_max = k_max_factor * k``); SoftSAE also
    takes ``settings.soft_overrides`` first.
    """
    overrides = dict(overrides)
    k = max(1, round(true_mean_l0) + int(overrides.pop("k_offset", 0)))
    common: dict[str, Any] = {"d_in": regime.d_in, "d_sae": regime.num_features}
    if settings.aux_loss_coefficient is not None:
        common["aux_loss_coefficient"] = settings.aux_loss_coefficient
    if kind == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=k, **common, **overrides))
    if kind == "batchtopk":
        return BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=float(true_mean_l0), **common, **overrides)
        )
    if kind == "soft":
        overrides = {**settings.soft_overrides, **overrides}
        factor = overrides.pop("k_max_factor", settings.k_max_factor)
        overrides.setdefault("k_max", float(min(regime.num_features, factor * k)))
        if overrides.get("k_estimator_width") == "d_sae":
            overrides["k_estimator_width"] = regime.num_features
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
