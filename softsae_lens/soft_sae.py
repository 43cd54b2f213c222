"""SoftSAE: a TopK SAE whose k is predicted per input and trained through a Soft Top-K.

One module holds the architecture, as SAELens's own ``topk_sae.py`` does: the inference config
and class (``SoftSAEConfig``, ``SoftSAE``), the training config and class
(``SoftTrainingSAEConfig``, ``SoftTrainingSAE``), and the small helpers both share. The classes
subclass SAELens's TopK classes and override only what differs: the per-input k, the encoder
that predicts it, and the soft training phase. TopK's dead-latent aux loss (with its guard
against normalised-space residuals), its decoder-norm fold rules and its save-time fold are
inherited unchanged. Depends on torch, SAELens and the operator (``soft_topk``) only: nothing
here knows about CLIs, files, plots or processes.

Inference: ``k_hat = min(k_max, k_scale * k_max * sigmoid(MLP(x - b_dec)))`` per input
(``k_scale``: the running factor that held the training batches' mean k on ``k``; 1 for SAEs
trained with the penalty), rounded and clamped to ``[1, k_max]``, then a hard top-k of the pre-activations. The prediction passes through the
HookPoint ``hook_sae_k`` before rounding, so a hook can read or replace it.

Training (``SoftTrainingSAE.training_forward_pass``): while the run is in its soft phase the
activations are ``relu(pre) * soft_topk(relu(pre), k_hat, alpha)``, so the reconstruction loss
reaches the k-estimator; the batch-mean ``k_hat`` is held on a target that anneals from
``k_target_start`` down to ``k`` (``k_budget``: the predictions are rescaled to that mean, and
inference uses the running factor; or the paper's one-sided penalty); ``alpha`` anneals from ``alpha_start`` to
``alpha_end``. The last ``hard_topk_fraction`` of the steps use the hard per-row top-k that
inference uses, with the encoder and decoder still learning (the k-estimator is frozen there:
hard top-k carries no gradient to k, and the k penalty alone would only push k down).

Decoder rows: SAELens's ``rescale_acts_by_decoder_norm`` pattern (on by default in training),
which makes the decoder act as if its rows were unit norm and removes the gradient component
along each row, the same effective parametrisation as the paper's renormalise-each-step, but
without needing a hook after the optimizer step (SAELens's trainer has none). The norms are
folded into the weights when the inference model is saved (TopK's rule).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from sae_lens.constants import TRAINER_STATE_FILENAME
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import (
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from torch import nn
from transformer_lens.hook_points import HookPoint
from typing_extensions import override

from softsae_lens.soft_topk import SoftTopKFunction, alpha_range, candidate_count

logger = logging.getLogger(__name__)

ARCHITECTURE = "soft"
KRounding = Literal["round", "floor"]
AlphaScale = Literal["absolute", "relative"]
KLossScale = Literal["mse", "absolute"]
KBudget = Literal["normalize", "penalty"]

# Keeps the Soft Top-K target strictly inside (0, d_sae) where sigmoid saturates in float32.
_K_MARGIN = 1e-3
# The soft phase serves a batch from its top candidates when every left-out Soft Top-K weight
# together is below this fraction of k (float32 rounding of the row's total).
_SPARSE_TAIL_TOLERANCE = torch.finfo(torch.float32).eps
# Summing w decoder rows per input (embedding_bag) reads W_dec at random; it beats the dense
# [batch, d_sae] @ W_dec once d_sae is this many times w (measured on CPU: at d_sae 512, d_in
# 160, 54 rows per input were 1.35x slower than the dense product, 22 rows 1.7x faster; at
# d_sae 16384, d_in 768, 160 rows 3.4x faster).
_ROW_SUM_MIN_RATIO = 16
# Written by SoftSAE v0.1 checkpoints; training-only state with no meaning on load.
_LEGACY_STEP_BUFFER = "completed_training_steps"
# Attribute on the activations encode() returns: (their tensor version, the top-k indices).
_ACTIVE_ATTR = "_softsae_active"


# ---------------------------------------------------------------- validation


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name} must be {allowed}, got {name}={value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(cfg: Any, name: str) -> float:
    """The field's value, which must be a finite real number (not a bool)."""
    value = getattr(cfg, name)
    if not _is_number(value) or not math.isfinite(value):
        _fail(name, value, "a finite number")
    return value


def _check_choice(cfg: Any, name: str, choices: tuple[Any, ...]) -> None:
    value = getattr(cfg, name)
    # `True in (1, 0)` is True in Python: compare types too, so a bool never passes for an int.
    if not any(type(value) is type(c) and value == c for c in choices):
        _fail(name, value, " or ".join(repr(c) for c in choices))


def _validate_inference_fields(cfg: SoftSAEConfig | SoftTrainingSAEConfig) -> None:
    """Checks shared by the inference and training configs; fills ``k_max`` and the width."""
    if not _is_int(cfg.k) or cfg.k <= 0:
        _fail("k", cfg.k, "a positive integer (the target mean number of active latents)")
    if cfg.k > cfg.d_sae:
        _fail("k", cfg.k, f"at most d_sae={cfg.d_sae}")
    if cfg.k_max is None:
        cfg.k_max = float(min(2 * cfg.k, cfg.d_sae))
    k_max = _number(cfg, "k_max")
    if k_max < cfg.k:
        _fail("k_max", k_max, f">= k={cfg.k} (the estimator's ceiling)")
    if k_max > cfg.d_sae:
        _fail("k_max", k_max, f"<= d_sae={cfg.d_sae}")
    cfg.k_max = float(k_max)
    _check_choice(cfg, "k_rounding", ("round", "floor"))
    if cfg.k_estimator_width is None:
        cfg.k_estimator_width = max(1, cfg.d_sae // 4)
    if not _is_int(cfg.k_estimator_width) or cfg.k_estimator_width <= 0:
        _fail("k_estimator_width", cfg.k_estimator_width, "a positive integer or None")
    _check_choice(cfg, "rescale_acts_by_decoder_norm", (True, False))


# ---------------------------------------------------------------- configs


@dataclass
class SoftSAEConfig(TopKSAEConfig):
    """Inference config of a SoftSAE (architecture ``"soft"``).

    Args:
        k: the target mean number of active latents the SAE was trained for (kept for
            reference; inference uses the per-input prediction).
        k_max: ceiling of the k-estimator, ``k_hat = k_max * sigmoid(...)``; default ``2k``.
        k_rounding: how ``k_hat`` becomes an integer: ``"round"`` (unbiased) or ``"floor"``
            (what the paper's code does; biases L0 down by about 0.5).
        k_estimator_width: hidden width of the k-estimator MLP; default ``d_sae // 4``. The
            paper uses ``d_sae``, which adds a second full encoder-sized matmul (``encode``
            then costs about twice TopK's; ``benchmarks/bench_train_step.py``). Set it to
            ``d_sae`` to reproduce the paper.
        rescale_acts_by_decoder_norm: as in SAELens's TopK: pre-activations are multiplied by
            the decoder row norms before selection and divided again before decoding.
    """

    k: int = 32
    k_max: float | None = None
    k_rounding: KRounding = "round"
    k_estimator_width: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_inference_fields(self)

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass(kw_only=True)
class SoftTrainingSAEConfig(TopKTrainingSAEConfig):
    """Training config of a SoftSAE. ``SoftTrainingSAEConfig(d_in=..., d_sae=..., k=...)`` is enough.

    Inference fields (same names and meaning as :class:`SoftSAEConfig`): ``k``, ``k_max``,
    ``k_rounding``, ``k_estimator_width``, ``rescale_acts_by_decoder_norm``.

    Schedules are fractions of the run, so they need its length:

    Args:
        total_training_steps: number of optimizer steps in the run. SAELens does not hand this
            to the SAE; ``softsae_lens.train`` and :func:`softsae_lens.configure_runner` fill it
            from the runner config (``training_tokens // train_batch_size_tokens``), and the
            first training step raises a ValueError saying so when it is missing.
        k_budget: how the batch-mean k is held at the target. ``"normalize"`` (default)
            rescales the estimator's raw predictions so that their batch mean is exactly the
            target, ``k_hat = min(k_max, k_raw * k_target / mean_batch(k_raw))``: the budget is
            a constraint, and the estimator only learns how to share it between inputs (the
            per-input spread is kept, its level is not). Inference uses ``k / level``, the
            level being a running average of the batch means of ``k_raw`` (the ``k_scale``
            buffer, saved with the weights), as BatchTopK uses a running threshold; it is
            taken over the hard phase, where the estimator is frozen, so those steps must be a
            fair sample of the data (a shuffled stream, not the rows of one long document). ``"penalty"`` is the paper's one-sided penalty alone: a fixed
            price per latent, so the mean settles above the target wherever one more latent
            buys more reconstruction than the price (it drifts up as the dictionary improves).
        k_scale_decay: decay of the running average of the raw level behind the normalising
            factor that inference uses (``k_budget="normalize"``); it starts once the k target
            has annealed to ``k``, and restarts as a plain mean when the hard phase freezes
            the estimator.
        k_loss_coefficient: weight of the k term. With ``k_budget="penalty"`` the one-sided
            penalty ``softplus_beta(mean_batch(k_hat) - k_target)``; with ``"normalize"`` a
            two-sided pin ``log(mean_batch(k_raw) / k)^2`` that keeps the raw predictions'
            level at ``k``, so the normalising factor stays near 1 and its running average
            does not lag behind a drifting level.
        k_loss_scale: (``k_budget="penalty"``) ``"mse"`` multiplies the penalty by ``mse.detach() / k_target``: one
            latent over budget then costs one budgeted latent's share of the current
            reconstruction error, whatever the activations' scale. ``"absolute"`` is the
            paper's form, whose slope (at most ``k_loss_coefficient`` per unit of k) only caps
            k when the MSE gained per extra latent is below it: on SmolLM2's residual stream it
            is not, and k_hat ran to k_max.
        k_loss_beta: sharpness of that softplus (paper: 5; ``k_budget="penalty"``).
        k_target_start: where the k target starts before annealing down to ``k``. Default
            ``max(d_in, k_max)``: the paper starts at ``d_in`` (no pressure on k at first), and
            a start at or above ``k_max`` is the same (k_hat never exceeds ``k_max``).
        k_anneal_fraction: fraction of the steps over which the k target anneals (paper: about 1 percent).
        alpha_start, alpha_end: the Soft Top-K's Laplace scale anneals linearly between these.
        alpha_anneal_fraction: fraction of the steps over which alpha anneals (paper: about 1 percent).
        alpha_scale: ``"relative"`` multiplies alpha by the batch's RMS positive
            pre-activation, so one setting means the same on every model and normalisation;
            ``"absolute"`` uses alpha in activation units, as the paper does.
        soft_topk_grad_to_pre: whether the Soft Top-K weights pass gradient to the
            pre-activations. The exact gradient scales like ``1/alpha`` near the threshold and
            swamps the encoder once alpha is small; with ``False`` the weights still pass their
            exact gradient to ``k_hat`` and the encoder learns through ``relu(pre) * w`` as in
            a TopK SAE.
        hard_topk_fraction: fraction of the steps, at the end, trained with the hard per-row
            top-k used at inference (paper: 10k of 244k steps, about 4 percent).
        aux_loss_coefficient: weight of TopK's dead-latent auxiliary loss (paper: 1/32).
        use_sparse_activations: TopK's sparse-COO training option; not supported (must stay
            False): the soft phase needs every pre-activation.

    The paper's exact settings: ``k_budget="penalty", k_loss_scale="absolute", alpha_scale="absolute",
    alpha_end=1e-4, soft_topk_grad_to_pre=True, k_rounding="floor", k_estimator_width=d_sae``
    (its hard phase also freezes the encoder, which is not reproduced).
    """

    k: int = 32
    k_max: float | None = None
    k_rounding: KRounding = "round"
    k_estimator_width: int | None = None
    aux_loss_coefficient: float = 1 / 32
    total_training_steps: int | None = None
    k_budget: KBudget = "normalize"
    k_scale_decay: float = 0.99
    k_loss_coefficient: float = 1.0
    k_loss_scale: KLossScale = "mse"
    k_loss_beta: float = 5.0
    k_target_start: float | None = None
    k_anneal_fraction: float = 0.01
    alpha_start: float = 1.0
    alpha_end: float = 1e-2
    alpha_anneal_fraction: float = 0.01
    alpha_scale: AlphaScale = "relative"
    soft_topk_grad_to_pre: bool = False
    hard_topk_fraction: float = 0.04

    def __post_init__(self) -> None:
        _validate_inference_fields(self)
        if self.k_target_start is None:
            self.k_target_start = float(max(self.d_in, self.k_max))
        self._validate_training_fields()
        super().__post_init__()

    def _validate_training_fields(self) -> None:
        steps = self.total_training_steps
        if steps is not None and (not _is_int(steps) or steps <= 0):
            _fail("total_training_steps", steps, "a positive integer or None")
        _check_choice(self, "k_budget", ("normalize", "penalty"))
        if not 0.0 <= _number(self, "k_scale_decay") < 1.0:
            _fail("k_scale_decay", self.k_scale_decay, "in [0, 1)")
        if _number(self, "k_loss_coefficient") < 0:
            _fail("k_loss_coefficient", self.k_loss_coefficient, ">= 0")
        _check_choice(self, "k_loss_scale", ("mse", "absolute"))
        if _number(self, "k_loss_beta") <= 0:
            _fail("k_loss_beta", self.k_loss_beta, "> 0")
        if _number(self, "k_target_start") < self.k:
            _fail("k_target_start", self.k_target_start, f">= k={self.k}")
        for name in ("k_anneal_fraction", "alpha_anneal_fraction"):
            if not 0.0 <= _number(self, name) <= 1.0:
                _fail(name, getattr(self, name), "in [0, 1]")
        if _number(self, "alpha_start") <= 0:
            _fail("alpha_start", self.alpha_start, "positive and finite")
        if _number(self, "alpha_end") <= 0:
            _fail("alpha_end", self.alpha_end, "positive")
        if self.alpha_end > self.alpha_start:
            _fail(
                "alpha_end",
                self.alpha_end,
                f"<= alpha_start={self.alpha_start} (alpha anneals down)",
            )
        _check_choice(self, "alpha_scale", ("absolute", "relative"))
        # The training step computes in float32: outside this range 1/alpha or the threshold
        # overflow and the run trains to NaN (the operator's own check is not on this path).
        low, high = alpha_range(torch.float32, self.d_sae)
        for name in ("alpha_start", "alpha_end"):
            if not low <= getattr(self, name) <= high:
                unit = "activation units" if self.alpha_scale == "absolute" else "x the RMS"
                _fail(
                    name,
                    getattr(self, name),
                    f"in [{low:.3g}, {high:.3g}] ({unit}; float32's range for d_sae={self.d_sae})",
                )
        _check_choice(self, "soft_topk_grad_to_pre", (True, False))
        if not 0.0 <= _number(self, "hard_topk_fraction") < 1.0:
            _fail("hard_topk_fraction", self.hard_topk_fraction, "in [0, 1)")
        if _number(self, "aux_loss_coefficient") < 0:
            _fail("aux_loss_coefficient", self.aux_loss_coefficient, ">= 0")
        if self.use_sparse_activations is not False:
            _fail(
                "use_sparse_activations",
                self.use_sparse_activations,
                "False (TopK's sparse-COO training option; SoftSAE's soft phase needs every "
                "pre-activation)",
            )

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def schedule(self, step: int) -> SoftSchedule:
        """The k target, alpha and phase at optimizer step ``step`` (0-based); pure in ``step``."""
        total = self.total_training_steps
        if total is None:
            raise ValueError(
                "SoftTrainingSAEConfig.total_training_steps is not set, and the soft/hard schedules "
                "are fractions of the run. Set total_training_steps to the run's optimizer steps "
                "(LanguageModelSAERunnerConfig: training_tokens // train_batch_size_tokens; "
                "train_toy_sae: training_samples // batch_size), or call "
                "softsae_lens.configure_runner(runner_cfg) before LanguageModelSAETrainingRunner(runner_cfg)."
            )

        def progress(fraction: float) -> float:
            span = fraction * total
            return 1.0 if span <= 0 else min(1.0, step / span)

        k_target = self.k_target_start + (self.k - self.k_target_start) * progress(
            self.k_anneal_fraction
        )
        alpha = self.alpha_start + (self.alpha_end - self.alpha_start) * progress(
            self.alpha_anneal_fraction
        )
        hard_steps = round(self.hard_topk_fraction * total)
        return SoftSchedule(
            k_target=k_target,
            alpha=alpha,
            hard=step >= total - hard_steps,
            steps_at_k=max(0, step - math.ceil(self.k_anneal_fraction * total)),
            steps_in_hard=max(0, step - (total - hard_steps)),
        )


class SoftTrainingInputs(NamedTuple):
    """What a training step starts from (:meth:`SoftTrainingSAE.training_inputs`)."""

    schedule: SoftSchedule
    hidden_pre: torch.Tensor
    k_hat: torch.Tensor  # the k each input gets (normalised, through hook_sae_k)
    k_raw: torch.Tensor  # the estimator's own prediction, before the k_budget factor
    k_scale: torch.Tensor  # the factor used in this step (1 with k_budget="penalty")
    k_raw_mean: torch.Tensor  # k_raw's mean over the (global) batch, with gradient


@dataclass(frozen=True)
class SoftSchedule:
    """Where a training step stands: the k target, the Soft Top-K alpha and the phase."""

    k_target: float
    alpha: float
    hard: bool
    # Steps since the k target reached k (0 while it anneals): the running average of the
    # k normalising factor only averages these.
    steps_at_k: int = 0
    # Steps since the hard phase began (0 before): there the estimator is frozen, and the
    # k factor's running average restarts as a plain mean of the frozen estimator's factors.
    steps_in_hard: int = 0


# ---------------------------------------------------------------- shared encoder parts


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """A context that turns autocast off where it is on (k_hat must be float32: in bf16 it
    moves in steps of 4-8 near k ~ 600)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _SoftEncoderMixin:
    """The k-estimator, the per-input hard top-k and the folds that must also reach the
    k-estimator, shared by the inference and training classes (it precedes the TopK class in
    their MRO).

    Every tensor the k-estimator needs is an ``nn.Parameter`` so that SAELens's meta-device
    loading (``load_state_dict(assign=True)``) restores it.
    """

    cfg: Any
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    W_k_in: nn.Parameter
    b_k_in: nn.Parameter
    W_k_out: nn.Parameter
    b_k_out: nn.Parameter
    hook_sae_k: HookPoint

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]  (W_enc, W_dec, b_dec; TopK's b_enc)
        dtype, device = self.dtype, self.device  # type: ignore[attr-defined]
        width = self.cfg.k_estimator_width
        # Paper: the estimator's first layer starts as a copy of the encoder; a narrower one
        # copies a random subset of its columns. A zero output layer makes k_hat = k_max / 2
        # (= k by default) on every input at init.
        if self.W_enc.device.type == "meta":
            w_in = torch.empty(self.cfg.d_in, width, dtype=dtype, device=device)
        elif width <= self.cfg.d_sae:
            columns = (
                torch.randperm(self.cfg.d_sae, device=device)[:width]
                if width < self.cfg.d_sae
                else slice(None)
            )
            w_in = self.W_enc.detach()[:, columns].clone()
        else:
            w_in = torch.empty(self.cfg.d_in, width, dtype=dtype, device=device)
            nn.init.kaiming_uniform_(w_in)
        self.W_k_in = nn.Parameter(w_in)
        self.b_k_in = nn.Parameter(torch.zeros(width, dtype=dtype, device=device))
        self.W_k_out = nn.Parameter(torch.zeros(width, dtype=dtype, device=device))
        self.b_k_out = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))
        # The factor that holds the mean k on its target (training config ``k_budget``): 1 for
        # an SAE trained with the penalty alone. A persistent buffer, float32 whatever the
        # SAE's dtype, so that SAELens's meta-device loading restores it.
        self.register_buffer("k_scale", torch.ones((), dtype=torch.float32, device=device))
        self.hook_sae_k = HookPoint()

    def _predict_raw_k_from_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        """The estimator's own prediction ``k_max * sigmoid(MLP(x))``, float32 (also under
        autocast), before the ``k_scale`` normalisation."""
        with _without_autocast(sae_in.device.type):
            x = sae_in.float()
            hidden = F.relu(x @ self.W_k_in.float() + self.b_k_in.float())
            # b_k_out has shape [1] (the paper's Linear(width, 1)); its scalar keeps k_hat's shape
            # x.shape[:-1], also () for a single input vector.
            logit = hidden @ self.W_k_out.float() + self.b_k_out.float()[0]
            return self.cfg.k_max * torch.sigmoid(logit)

    def _scale_k(self, k_raw: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``min(k_max, k_raw * scale)``: the normalised k, under the estimator's ceiling."""
        return (k_raw * scale.float()).clamp(max=self.cfg.k_max)

    def _predict_k_from_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``k_hat`` in float32 from the processed SAE input, as inference uses it."""
        return self._scale_k(self._predict_raw_k_from_sae_in(sae_in), self.k_scale)

    def _hidden_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)  # type: ignore[attr-defined]
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        return hidden_pre

    def round_k(self, k_hat: torch.Tensor) -> torch.Tensor:
        """Integer k per input: ``k_hat`` rounded (``cfg.k_rounding``), clamped to ``[1, k_max]``."""
        rounded = torch.floor(k_hat) if self.cfg.k_rounding == "floor" else torch.round(k_hat)
        return rounded.clamp(1, math.floor(self.cfg.k_max)).long()

    @property
    def hard_width(self) -> int:
        """The most latents one input can fire: ``floor(k_max)`` (at most ``d_sae``). A constant
        width lets every top-k be taken without reading k_hat on the host (no device sync)."""
        return min(math.floor(self.cfg.k_max), self.cfg.d_sae)

    def _hard_values(self, top_values: torch.Tensor, k_hat: torch.Tensor) -> torch.Tensor:
        """ReLU'd ``top_values`` (each row sorted, ``hard_width`` wide) with the entries past
        ``round_k(k_hat)`` zeroed."""
        keep = (
            torch.arange(top_values.shape[-1], device=top_values.device)
            < self.round_k(k_hat.detach())[..., None]
        )
        return top_values.relu() * keep.to(top_values.dtype)

    def _hard_topk(self, hidden_pre: torch.Tensor, k_hat: torch.Tensor) -> torch.Tensor:
        """ReLU'd top-``round_k(k_hat)`` of each row of ``hidden_pre``, zeros elsewhere.

        The result remembers where its nonzeros can be (``_ACTIVE_ATTR``: its version and the
        top-k indices), so that :meth:`decode` of these very activations skips searching a
        ``[..., d_sae]`` tensor for them; any in-place change bumps the version and voids it.
        """
        values, indices = hidden_pre.topk(self.hard_width, dim=-1, sorted=True)
        values = self._hard_values(values, k_hat)
        feature_acts = torch.zeros_like(hidden_pre).scatter_(-1, indices, values)
        # Under torch.inference_mode (sae-probes encodes there) tensors keep no version counter,
        # so an in-place change could not void the marker: decode searches for the nonzeros then.
        if not feature_acts.is_inference():
            setattr(feature_acts, _ACTIVE_ATTR, (feature_acts._version, indices))
        return feature_acts

    def predict_k(self, x: torch.Tensor) -> torch.Tensor:
        """Per-input predicted k (float, shape ``x.shape[:-1]``, before rounding)."""
        return self._predict_k_from_sae_in(self.process_sae_in(x))  # type: ignore[attr-defined]

    def _encode_hard(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        hidden_pre = self._hidden_pre(sae_in)
        k_hat = self.hook_sae_k(self._predict_k_from_sae_in(sae_in))
        feature_acts = self.hook_sae_acts_post(self._hard_topk(hidden_pre, k_hat))  # type: ignore[attr-defined]
        return feature_acts, hidden_pre, k_hat

    def _decoder_rows(self) -> torch.Tensor:
        if not self.cfg.rescale_acts_by_decoder_norm:
            return self.W_dec
        # (f / |W_dec|) @ W_dec == f @ (W_dec / |W_dec|): scaling the [d_sae, d_in] rows costs a
        # fraction of TopK's scaling of the [batch, d_sae] activations, forward and backward.
        return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)

    def _finish_decode(self, sae_out_pre: torch.Tensor) -> torch.Tensor:
        sae_out_pre = self.hook_sae_recons(sae_out_pre + self.b_dec)  # type: ignore[attr-defined]
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)  # type: ignore[attr-defined]
        return self.reshape_fn_out(sae_out_pre, self.d_head)  # type: ignore[attr-defined]

    def decode_dense(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """``decode`` as one dense ``feature_acts @ W_dec`` (any number of active latents)."""
        if feature_acts.is_sparse:
            feature_acts = feature_acts.to_dense()
        return self._finish_decode(feature_acts @ self._decoder_rows())

    def decode_rows(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``decode`` of activations given as ``values`` at latent ``indices`` (both
        ``[..., w]``): the sum of ``w`` decoder rows per input, never a ``[..., d_sae]`` matmul."""
        W_dec = self._decoder_rows()
        width = indices.shape[-1]
        summed = F.embedding_bag(
            indices.reshape(-1, width),
            W_dec,
            per_sample_weights=values.reshape(-1, width).to(W_dec.dtype),
            mode="sum",
        )
        return self._finish_decode(summed.reshape(*indices.shape[:-1], W_dec.shape[-1]))

    def _decode_selected(
        self, values: torch.Tensor, indices: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        """``decode`` of activations ``values`` at latent ``indices`` (zeros elsewhere; ``like``
        is a tensor of the dense activations' shape and dtype): summed rows where that is
        cheaper than the dense product."""
        if _ROW_SUM_MIN_RATIO * indices.shape[-1] <= self.cfg.d_sae:
            return self.decode_rows(values, indices)
        return self.decode_dense(
            torch.zeros_like(like).scatter_(-1, indices, values.to(like.dtype))
        )

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction from feature activations (``W_dec`` and ``b_dec``, hooks fired).

        When every input has at most ``hard_width`` active latents (always, for activations
        from :meth:`encode`) and ``d_sae`` is large enough for it to pay, only those decoder
        rows are summed (:meth:`decode_rows`), the same result to float rounding at a fraction
        of a dense matmul's cost. Activations straight from :meth:`encode` carry their top-k
        indices; others are searched, which costs one read of a count from the device.
        Anything denser (a hook that switched latents on, say) takes the dense product, and so
        do activations that need a gradient, which the dense product gives every latent.
        """
        width = self.hard_width
        if feature_acts.is_sparse or _ROW_SUM_MIN_RATIO * width > feature_acts.shape[-1]:
            return self.decode_dense(feature_acts)
        if torch.is_grad_enabled() and feature_acts.requires_grad:
            # The dense product's gradient reaches every latent, active or not (attribution
            # methods read it there); a sum of the active rows would give the others none.
            return self.decode_dense(feature_acts)
        active = getattr(feature_acts, _ACTIVE_ATTR, None)
        if active is not None and active[0] == feature_acts._version:
            # Straight from encode, untouched: its top-k indices hold every nonzero.
            return self.decode_rows(feature_acts.gather(-1, active[1]), active[1])
        if feature_acts.numel() and int(torch.count_nonzero(feature_acts, dim=-1).max()) > width:
            return self.decode_dense(feature_acts)
        indices = feature_acts.abs().topk(width, dim=-1, sorted=False).indices
        return self.decode_rows(feature_acts.gather(-1, indices), indices)

    # The folds run through TopK's / SAELens's own and then apply the same transform to the
    # k-estimator, which also reads x - b_dec.

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """SAELens's fold, plus the k-estimator's input weights, so k_hat on raw inputs is unchanged."""
        super().fold_activation_norm_scaling_factor(scaling_factor)  # type: ignore[misc]
        self.W_k_in.data *= scaling_factor

    @torch.no_grad()
    def fold_activation_whitening(
        self, mean: torch.Tensor, whitening_matrix: torch.Tensor, unwhitening_matrix: torch.Tensor
    ) -> None:
        """TopK's whitening fold, extended to the k-estimator (``W_k_in <- M @ W_k_in``)."""
        super().fold_activation_whitening(mean, whitening_matrix, unwhitening_matrix)  # type: ignore[misc]
        dtype = torch.promote_types(self.W_k_in.dtype, whitening_matrix.dtype)
        matrix = whitening_matrix.to(self.W_k_in.device, dtype)
        self.W_k_in.data.copy_(matrix @ self.W_k_in.data.to(dtype))
        if not self.cfg.apply_b_dec_to_input:
            self.b_k_in.data.sub_(mean.to(self.W_k_in.device, dtype) @ self.W_k_in.data.to(dtype))

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)  # type: ignore[misc]
        # Checkpoints of softsae_lens 0.1 carried a step counter; the schedule no longer needs it.
        state_dict.pop(_LEGACY_STEP_BUFFER, None)
        # SAEs saved before k_budget existed (and the paper's) predicted k without a factor.
        if "k_scale" not in state_dict:
            state_dict["k_scale"] = torch.ones((), dtype=torch.float32)


# ---------------------------------------------------------------- inference


class SoftSAE(_SoftEncoderMixin, TopKSAE):
    """Inference SoftSAE: per-input ``k_hat`` from the k-estimator, then hard top-k.

    Hooks: the standard ``hook_sae_input``, ``hook_sae_acts_pre``, ``hook_sae_acts_post``,
    ``hook_sae_recons``, ``hook_sae_output``, ``hook_sae_error``, plus ``hook_sae_k`` carrying
    the float prediction ``k_hat`` (shape ``x.shape[:-1]``) before rounding: a hook that
    replaces it changes how many latents fire.
    """

    cfg: SoftSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: SoftSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations: the top ``round(k_hat)`` ReLU'd pre-activations of each input."""
        return self._encode_hard(x)[0]


# ---------------------------------------------------------------- training


class SoftTrainingSAE(_SoftEncoderMixin, TopKTrainingSAE):
    """Training SoftSAE. ``encode``/``forward`` behave exactly like :class:`SoftSAE` (hard
    per-input top-k), so SAELens's evaluator sees the inference behaviour;
    ``training_forward_pass`` runs the soft or hard phase set by ``cfg.schedule(step)``."""

    cfg: SoftTrainingSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: SoftTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]
        # SAELens hands a resumed run the index of the last completed step again; see
        # load_weights_from_checkpoint. A plain attribute: it is not part of the model's state.
        self.resume_step_offset = 0

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.hook_sae_batch_sums = HookPoint()

    def batch_sums(self, *sums: torch.Tensor) -> torch.Tensor:
        """Sums over the training batch, stacked, passed through ``hook_sae_batch_sums``.

        The identity in one process. Data-parallel training (``softsae_lens.training.distributed``)
        hooks it to sum over every process's batch, with gradients, so that the k penalty and
        the relative alpha see the global batch.
        """
        return self.hook_sae_batch_sums(torch.stack(sums))

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_acts, hidden_pre, _ = self._encode_hard(x)
        return feature_acts, hidden_pre

    def schedule_step(self, trainer_step: int) -> int:
        """The step index the schedule uses for SAELens's ``n_training_steps``: the same number,
        shifted by the offset found when a checkpoint was loaded (a pure function of the step)."""
        return trainer_step + self.resume_step_offset

    @override
    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        """SAELens's resume path; also aligns the schedule with the steps really completed.

        SAELens's trainer writes a checkpoint before it increments ``n_training_steps``, so a
        resumed run continues with the last completed step's index (after an interrupt it may
        not). The learning-rate scheduler saved beside it counts the optimizer steps actually
        taken, and the difference is the offset the schedule needs.
        """
        super().load_weights_from_checkpoint(checkpoint_path)
        self.resume_step_offset = _resume_step_offset(Path(checkpoint_path))

    def soft_alpha(self, pre_activations: torch.Tensor, alpha: float) -> torch.Tensor:
        """Alpha in activation units, a 0-dim float32 tensor on the SAE's device: scaled by the
        batch's RMS positive pre-activation when ``cfg.alpha_scale == "relative"``."""
        if self.cfg.alpha_scale == "absolute":
            return torch.tensor(alpha, dtype=torch.float32, device=pre_activations.device)
        pre = pre_activations.detach()
        # count_nonzero is several times slower than summing a comparison on CPU
        squares, count = self.batch_sums(
            torch.linalg.vector_norm(pre.float().relu()).square(),
            (pre > 0).sum().to(torch.float32),
        )
        rms = (squares / count.clamp(min=1)).sqrt()
        # Kept inside float32's usable range for the operator (no device read: a clamp).
        low, high = alpha_range(torch.float32, self.cfg.d_sae)
        return (alpha * rms).clamp(min=low, max=high)

    def _soft_weights(
        self, pre: torch.Tensor, k_hat: torch.Tensor, alpha: torch.Tensor, rows_sorted: bool
    ) -> torch.Tensor:
        """Soft Top-K weights of the ReLU'd rows ``pre`` ``[..., n]`` (float32) at targets
        k_hat. The arguments are valid by construction, so the operator's checks are skipped."""
        n = pre.shape[-1]
        # sigmoid can round k_hat to exactly k_max = n in float32; the operator needs k < n.
        k_soft = k_hat.clamp(_K_MARGIN, n - _K_MARGIN)
        weights_in = pre if self.cfg.soft_topk_grad_to_pre else pre.detach()
        weights = SoftTopKFunction.apply(
            weights_in.reshape(-1, n),
            k_soft.reshape(-1),
            alpha,
            float(self.cfg.k_max),
            rows_sorted,
        )
        return weights.reshape(pre.shape)

    def _soft_phase_output(
        self,
        hidden_pre: torch.Tensor,
        top_values: torch.Tensor,
        top_indices: torch.Tensor,
        k_hat: torch.Tensor,
        alpha: float,
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The soft phase's reconstruction from ``relu(pre) * soft_topk(relu(pre), k_hat,
        alpha)``, the alpha used (activation units) and whether the candidate path served it.

        ``top_values``/``top_indices`` are each row's ``candidate_count(k_max, d_sae)`` largest
        pre-activations. Once alpha is small, every other weight is below float32 rounding of
        the row's total, so the weights, the k gradient and the decode need only these
        candidates: the operator runs on ``[batch, ~k_max]`` instead of ``[batch, d_sae]`` and
        the decoder sums those rows. One device read per step checks that bound (the largest
        left-out weight is at most the last candidate's); a batch that fails it (alpha still
        large early in the run) takes the exact dense path.
        """
        alpha_used = self.soft_alpha(hidden_pre, alpha)
        n, m = hidden_pre.shape[-1], top_values.shape[-1]
        relu_top = top_values.float().relu()
        weights = self._soft_weights(relu_top, k_hat, alpha_used, rows_sorted=True)
        if m == n or bool(
            ((n - m) * weights[..., -1] <= _SPARSE_TAIL_TOLERANCE * k_hat.detach()).all()
        ):
            acts = (relu_top * weights).to(hidden_pre.dtype)
            return self._decode_selected(acts, top_indices, hidden_pre), alpha_used, True
        relu_pre = hidden_pre.float().relu()
        weights = self._soft_weights(relu_pre, k_hat, alpha_used, rows_sorted=False)
        acts = (relu_pre * weights).to(hidden_pre.dtype)
        return self.decode_dense(acts), alpha_used, False

    def batch_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` over the training batch (every process's, under data-parallel
        training: :meth:`batch_sums`), with gradient."""
        total, count = self.batch_sums(values.sum(), values.new_full((), float(values.numel())))
        return total / count

    def k_loss(
        self, k_raw_mean: torch.Tensor, k_target: float, mse_loss: torch.Tensor
    ) -> torch.Tensor:
        """The k term of the loss, on the batch mean of the estimator's raw predictions
        (:meth:`batch_mean` of them).

        ``k_budget="penalty"``: the one-sided penalty (see ``cfg.k_loss_scale``) on the k_hat
        used. ``"normalize"``: the budget already holds, and this only keeps the raw level at
        ``k`` (``k_loss_coefficient * log(mean / k)^2``, two-sided), so the normalising factor
        stays near 1 and its running average cannot lag behind a drifting level.
        """
        if self.cfg.k_budget == "normalize":
            mean = k_raw_mean.clamp(min=_K_MARGIN)
            return self.cfg.k_loss_coefficient * torch.log(mean / self.cfg.k).square()
        k_loss = self.cfg.k_loss_coefficient * F.softplus(
            k_raw_mean - k_target, beta=self.cfg.k_loss_beta
        )
        if self.cfg.k_loss_scale == "mse":
            k_loss = k_loss * (mse_loss.detach().float() / k_target)
        return k_loss

    def budget_k(
        self, k_raw: torch.Tensor, k_raw_mean: torch.Tensor, schedule: SoftSchedule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k each input gets in this training step and the normalising factor used.

        With ``k_budget="normalize"`` the factor is ``k_target / k_raw_mean`` (the mean over
        the global batch, :meth:`batch_mean`), with gradient: the estimator then learns only
        how the budget is shared. Once the target has reached ``k``, the factor inference uses
        (``k_scale``) becomes ``k`` over a running average of ``k_raw_mean``. With
        ``"penalty"`` the factor is 1.
        """
        if self.cfg.k_budget == "penalty":
            return k_raw, k_raw.new_ones(())
        # k_raw > 0 (a sigmoid), but float32 can round a saturated one to 0.
        scale = schedule.k_target / k_raw_mean.clamp(min=_K_MARGIN)
        if schedule.k_target <= self.cfg.k:
            if schedule.hard:
                # The estimator is frozen: a mean of this phase's factors (then a running
                # average) is unbiased, where one carried over from the soft phase would lag
                # behind the level the estimator ended at.
                n = schedule.steps_in_hard
                decay = min(self.cfg.k_scale_decay, n / (n + 1))
            else:
                # Bias-corrected start (TensorFlow's ExponentialMovingAverage rule): the first
                # steps at k are not averaged with the buffer's initial 1.
                n = schedule.steps_at_k
                decay = min(self.cfg.k_scale_decay, (1 + n) / (10 + n))
            with torch.no_grad():
                # Average the level (k_raw's batch mean) and divide once: a mean of the
                # per-batch ratios k / mean would sit above k / level (Jensen).
                level = (self.cfg.k / self.k_scale).lerp(
                    k_raw_mean.detach().to(self.k_scale.dtype), 1.0 - decay
                )
                self.k_scale.copy_(self.cfg.k / level.clamp(min=_K_MARGIN))
        return self._scale_k(k_raw, scale), scale

    def training_inputs(self, step_input: TrainStepInput) -> SoftTrainingInputs:
        """The schedule at this step, the pre-activations and k (normalised by
        :meth:`budget_k`, then through ``hook_sae_k``; detached in the hard phase, where k does
        not learn): what every training step starts from."""
        schedule = self.cfg.schedule(self.schedule_step(step_input.n_training_steps))
        sae_in = self.process_sae_in(step_input.sae_in)
        hidden_pre = self._hidden_pre(sae_in)
        k_raw = self._predict_raw_k_from_sae_in(sae_in)
        if schedule.hard:
            k_raw = k_raw.detach()
        # One global mean serves the k budget and the k loss (one all-reduce under torchrun).
        k_raw_mean = self.batch_mean(k_raw)
        k_hat, k_scale = self.budget_k(k_raw, k_raw_mean, schedule)
        return SoftTrainingInputs(
            schedule, hidden_pre, self.hook_sae_k(k_hat), k_raw, k_scale, k_raw_mean
        )

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if step_input.sae_in.numel() == 0:
            # Every statistic of the step (k_hat's min, the batch means) needs one row.
            raise ValueError(
                f"sae_in: an empty batch (shape {tuple(step_input.sae_in.shape)}); a training "
                "step needs at least one row"
            )
        schedule, hidden_pre, k_hat, k_raw, k_scale, k_raw_mean = self.training_inputs(step_input)
        # One sorted top-k serves the hard selection (its first hard_width columns) and the soft
        # phase's candidates.
        m = candidate_count(self.cfg.k_max, self.cfg.d_sae)
        top_values, top_indices = hidden_pre.topk(m, dim=-1, sorted=True)
        width = self.hard_width
        hard_values = self._hard_values(top_values[..., :width], k_hat)
        feature_acts = self.hook_sae_acts_post(
            torch.zeros_like(hidden_pre).scatter_(-1, top_indices[..., :width], hard_values)
        )

        if schedule.hard:
            alpha_used, candidates_only = hidden_pre.new_zeros((), dtype=torch.float32), True
            if _has_hooks(self.hook_sae_acts_post):
                sae_out = self.decode(feature_acts)  # what the hook returned
            else:
                sae_out = self._decode_selected(hard_values, top_indices[..., :width], hidden_pre)
        else:
            sae_out, alpha_used, candidates_only = self._soft_phase_output(
                hidden_pre, top_values, top_indices, k_hat, schedule.alpha
            )

        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        k_loss = self.k_loss(k_raw_mean, schedule.k_target, mse_loss)
        losses = {
            "mse_loss": mse_loss,
            "k_loss": k_loss,
            **self.calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out),
        }
        k_detached = k_hat.detach()
        metrics: dict[str, Any] = {
            "softsae/k_hat_mean": k_detached.mean(),
            "softsae/k_hat_min": k_detached.min(),
            "softsae/k_hat_max": k_detached.max(),
            "softsae/k_target": schedule.k_target,
            "softsae/k_raw_mean": k_raw.detach().mean(),
            "softsae/k_scale_batch": k_scale.detach(),
            "softsae/k_scale_running": self.k_scale.detach().clone(),
            "softsae/alpha": alpha_used.detach(),
            "softsae/alpha_schedule": schedule.alpha,
            "softsae/hard_phase": int(schedule.hard),
            "softsae/candidates_only": int(candidates_only),
        }
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=sum(losses.values()),
            losses=losses,
            metrics=metrics,
        )


def _has_hooks(hook_point: nn.Module) -> bool:
    return bool(hook_point._forward_hooks) or bool(hook_point._backward_hooks)


def _resume_step_offset(checkpoint_path: Path) -> int:
    """Optimizer steps completed minus the ``n_training_steps`` a SAELens checkpoint resumes at."""
    state_path = checkpoint_path / TRAINER_STATE_FILENAME
    if not state_path.is_file():
        return 0
    state = torch.load(state_path, map_location="cpu")
    completed = (state.get("lr_scheduler") or {}).get("last_epoch")
    resumed_at = state.get("n_training_steps")
    if not _is_int(completed) or not _is_int(resumed_at):
        logger.warning(
            "%s has no step counts this softsae_lens version understands; the SoftSAE schedule "
            "resumes at SAELens's n_training_steps, which may repeat one step",
            state_path,
        )
        return 0
    return max(0, completed - resumed_at)
