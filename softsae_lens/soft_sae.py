"""SoftSAE: a TopK SAE whose k is predicted per input and trained through a Soft Top-K.

One module holds the architecture, as SAELens's own ``topk_sae.py`` does: the inference config
and class (``SoftSAEConfig``, ``SoftSAE``), the training config and class
(``SoftTrainingSAEConfig``, ``SoftTrainingSAE``), and the small helpers both share.

Inference: ``k_hat = k_max * sigmoid(MLP(x - b_dec))`` per input, rounded and clamped to
``[1, k_max]``, then a hard top-k of the pre-activations. The prediction passes through the
HookPoint ``hook_sae_k`` before rounding, so a hook can read or replace it.

Training (``SoftTrainingSAE.training_forward_pass``): while the run is in its soft phase the
activations are ``relu(pre) * soft_topk(relu(pre), k_hat, alpha)``, so the reconstruction loss
reaches the k-estimator; a one-sided penalty keeps the batch-mean ``k_hat`` at or below a target
that anneals from ``d_in`` down to ``k``; ``alpha`` anneals from ``alpha_start`` to
``alpha_end``. The last ``hard_topk_fraction`` of the steps use the hard per-row top-k that
inference uses, with the encoder and decoder still learning (the k-estimator is frozen there:
hard top-k carries no gradient to k, and the k penalty alone would only push k down).

Decoder rows: SAELens's ``rescale_acts_by_decoder_norm`` pattern (on by default in training),
which makes the decoder act as if its rows were unit norm and removes the gradient component
along each row, the same effective parametrisation as the paper's renormalise-each-step, but
without needing a hook after the optimizer step (SAELens's trainer has none). The norms are
folded into the weights when the inference model is saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.topk_sae import _fold_norm_topk, act_times_W_dec, calculate_topk_aux_acts
from torch import nn
from transformer_lens.hook_points import HookPoint
from typing_extensions import override

from softsae_lens.soft_topk import soft_topk

ARCHITECTURE = "soft"
KRounding = Literal["round", "floor"]
AlphaScale = Literal["absolute", "relative"]
KLossScale = Literal["mse", "absolute"]

# Keeps the Soft Top-K target strictly inside (0, d_sae) where sigmoid saturates in float32.
_K_MARGIN = 1e-3


def _validate_inference_fields(cfg: SoftSAEConfig | SoftTrainingSAEConfig) -> None:
    """Checks shared by the inference and training configs; fills ``k_max`` and the width."""
    if not isinstance(cfg.k, int) or isinstance(cfg.k, bool) or cfg.k <= 0:
        raise ValueError(
            f"k must be a positive integer (the target mean number of active latents), got k={cfg.k!r}"
        )
    if cfg.k > cfg.d_sae:
        raise ValueError(f"k must be at most d_sae={cfg.d_sae}, got k={cfg.k}")
    if cfg.k_max is None:
        cfg.k_max = float(min(2 * cfg.k, cfg.d_sae))
    cfg.k_max = float(cfg.k_max)
    if not math.isfinite(cfg.k_max) or cfg.k_max < cfg.k:
        raise ValueError(
            f"k_max must be >= k={cfg.k} (the estimator's ceiling), got k_max={cfg.k_max}"
        )
    if cfg.k_max > cfg.d_sae:
        raise ValueError(f"k_max must be <= d_sae={cfg.d_sae}, got k_max={cfg.k_max}")
    if cfg.k_rounding not in ("round", "floor"):
        raise ValueError(
            f"k_rounding must be 'round' or 'floor', got k_rounding={cfg.k_rounding!r}"
        )
    if cfg.k_estimator_width is None:
        cfg.k_estimator_width = max(1, cfg.d_sae // 4)
    if not isinstance(cfg.k_estimator_width, int) or cfg.k_estimator_width <= 0:
        raise ValueError(
            f"k_estimator_width must be a positive integer, got {cfg.k_estimator_width!r}"
        )


@dataclass
class SoftSAEConfig(SAEConfig):
    """Inference config of a SoftSAE (architecture ``"soft"``).

    Args:
        k: the target mean number of active latents the SAE was trained for (kept for
            reference; inference uses the per-input prediction).
        k_max: ceiling of the k-estimator, ``k_hat = k_max * sigmoid(...)``; default ``2k``.
        k_rounding: how ``k_hat`` becomes an integer: ``"round"`` (unbiased) or ``"floor"``
            (what the paper's code does; biases L0 down by about 0.5).
        k_estimator_width: hidden width of the k-estimator MLP; default ``d_sae // 4``. The
            paper uses ``d_sae``, which adds a second full encoder-sized matmul and made
            ``encode`` 1.96x TopK's time (``benchmarks/bench_train_step.py``); a quarter
            width costs 1.3x. Set it to ``d_sae`` to reproduce the paper.
        rescale_acts_by_decoder_norm: as in SAELens's TopK: pre-activations are multiplied by
            the decoder row norms before selection and divided again before decoding.
    """

    k: int = 32
    k_max: float | None = None
    k_rounding: KRounding = "round"
    k_estimator_width: int | None = None
    rescale_acts_by_decoder_norm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_inference_fields(self)

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass(kw_only=True)
class SoftTrainingSAEConfig(TrainingSAEConfig):
    """Training config of a SoftSAE. ``SoftTrainingSAEConfig(d_in=..., d_sae=..., k=...)`` is enough.

    Inference fields (same names and meaning as :class:`SoftSAEConfig`): ``k``, ``k_max``,
    ``k_rounding``, ``k_estimator_width``, ``rescale_acts_by_decoder_norm``.

    Schedules are fractions of the run, so they need its length:

    Args:
        total_training_steps: number of optimizer steps in the run. SAELens does not hand this
            to the SAE; ``softsae_lens.train`` and :func:`softsae_lens.configure_runner` fill it
            from the runner config (``training_tokens // train_batch_size_tokens``), and the
            first training step raises a ValueError saying so when it is missing.
        k_loss_coefficient: weight of the one-sided k penalty
            ``softplus_beta(mean_batch(k_hat) - k_target)``.
        k_loss_scale: ``"mse"`` multiplies the penalty by ``mse.detach() / k_target``: one
            latent over budget then costs one budgeted latent's share of the current
            reconstruction error, whatever the activations' scale. ``"absolute"`` is the
            paper's form, whose slope (at most ``k_loss_coefficient`` per unit of k) only caps
            k when the MSE gained per extra latent is below it: on SmolLM2's residual stream it
            is not, and k_hat ran to k_max.
        k_loss_beta: sharpness of that softplus (paper: 5).
        k_target_start: where the k target starts before annealing down to ``k``
            (default ``d_in``, as in the paper: no pressure on k at first).
        k_anneal_fraction: fraction of the steps over which the k target anneals (paper: about 1 percent).
        alpha_start, alpha_end: the Soft Top-K's Laplace scale anneals linearly between these.
        alpha_anneal_fraction: fraction of the steps over which alpha anneals (paper: about 1 percent).
        alpha_scale: ``"relative"`` multiplies alpha by the batch's RMS positive
            pre-activation, so one setting means the same on every model and normalisation;
            ``"absolute"`` uses alpha in activation units, as the paper does.
        soft_topk_grad_to_pre: whether the Soft Top-K weights pass gradient to the
            pre-activations. The exact gradient scales like ``1/alpha`` near the threshold and
            swamps the encoder once alpha is small (NOTES section 4); with ``False`` the
            weights still pass their exact gradient to ``k_hat`` and the encoder learns
            through ``relu(pre) * w`` as in a TopK SAE.
        hard_topk_fraction: fraction of the steps, at the end, trained with the hard per-row
            top-k used at inference (paper: 10k of 244k steps, about 4 percent).
        aux_loss_coefficient: TopK-style dead-latent auxiliary loss weight (paper: 1/32).

    The paper's exact settings: ``k_loss_scale="absolute", alpha_scale="absolute", alpha_end=1e-4,
    soft_topk_grad_to_pre=True, k_rounding="floor", k_estimator_width=d_sae,
    rescale_acts_by_decoder_norm=True``
    (its hard phase also freezes the encoder, which is not reproduced).
    """

    k: int = 32
    k_max: float | None = None
    k_rounding: KRounding = "round"
    k_estimator_width: int | None = None
    rescale_acts_by_decoder_norm: bool = True
    total_training_steps: int | None = None
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
    aux_loss_coefficient: float = 1 / 32

    def __post_init__(self) -> None:
        _validate_inference_fields(self)
        if self.k_target_start is None:
            self.k_target_start = float(self.d_in)
        self._validate_training_fields()
        super().__post_init__()

    def _validate_training_fields(self) -> None:
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {name}={getattr(self, name)!r}")

        check(
            self.total_training_steps is None
            or (isinstance(self.total_training_steps, int) and self.total_training_steps > 0),
            "total_training_steps",
            "a positive integer or None",
        )
        check(
            self.alpha_start > 0 and math.isfinite(self.alpha_start),
            "alpha_start",
            "positive and finite",
        )
        check(self.alpha_end > 0, "alpha_end", "positive")
        if self.alpha_end > self.alpha_start:
            raise ValueError(
                f"alpha_end must be <= alpha_start={self.alpha_start} (alpha anneals down), got alpha_end={self.alpha_end}"
            )
        check(
            self.alpha_scale in ("absolute", "relative"), "alpha_scale", "'absolute' or 'relative'"
        )
        check(self.k_loss_coefficient >= 0, "k_loss_coefficient", ">= 0")
        check(self.k_loss_beta > 0, "k_loss_beta", "> 0")
        check(self.aux_loss_coefficient >= 0, "aux_loss_coefficient", ">= 0")
        check(self.k_target_start >= self.k, "k_target_start", f">= k={self.k}")
        for name in ("k_anneal_fraction", "alpha_anneal_fraction"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "in [0, 1]")
        check(0.0 <= self.hard_topk_fraction < 1.0, "hard_topk_fraction", "in [0, 1)")

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def schedule(self, step: int) -> SoftSchedule:
        """The k target, alpha and phase at optimizer step ``step`` (0-based)."""
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
        return SoftSchedule(k_target=k_target, alpha=alpha, hard=step >= total - hard_steps)


@dataclass(frozen=True)
class SoftSchedule:
    """Where a training step stands: the k target, the Soft Top-K alpha and the phase."""

    k_target: float
    alpha: float
    hard: bool


class _SoftEncoderMixin:
    """Encoder parts shared by the inference and training classes.

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

    def _init_soft_parameters(self) -> None:
        dtype, device = self.dtype, self.device  # type: ignore[attr-defined]
        width = self.cfg.k_estimator_width
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=dtype, device=device))
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
        self.hook_sae_k = HookPoint()

    def _predict_k_from_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``k_hat`` in float32 (also under autocast) from the processed SAE input."""
        with torch.autocast(device_type=sae_in.device.type, enabled=False):
            x = sae_in.float()
            hidden = F.relu(x @ self.W_k_in.float() + self.b_k_in.float())
            logit = hidden @ self.W_k_out.float() + self.b_k_out.float()
            return self.cfg.k_max * torch.sigmoid(logit)

    def _hidden_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)  # type: ignore[attr-defined]
        if self.cfg.rescale_acts_by_decoder_norm:
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        return hidden_pre

    def round_k(self, k_hat: torch.Tensor) -> torch.Tensor:
        """Integer k per input: ``k_hat`` rounded (``cfg.k_rounding``), clamped to ``[1, k_max]``."""
        rounded = torch.floor(k_hat) if self.cfg.k_rounding == "floor" else torch.round(k_hat)
        return rounded.clamp(1, math.floor(self.cfg.k_max)).long()

    def _hard_topk(self, hidden_pre: torch.Tensor, k_hat: torch.Tensor) -> torch.Tensor:
        """ReLU'd top-``round_k(k_hat)`` of each row of ``hidden_pre``, zeros elsewhere."""
        k_int = self.round_k(k_hat.detach())
        if k_int.numel() == 0:
            return torch.zeros_like(hidden_pre)
        width = min(int(k_int.max()), hidden_pre.shape[-1])
        values, indices = hidden_pre.topk(width, dim=-1, sorted=True)
        keep = torch.arange(width, device=hidden_pre.device) < k_int.unsqueeze(-1)
        values = values.relu() * keep.to(values.dtype)
        return torch.zeros_like(hidden_pre).scatter_(-1, indices, values)

    def predict_k(self, x: torch.Tensor) -> torch.Tensor:
        """Per-input predicted k (float, shape ``x.shape[:-1]``, before rounding)."""
        return self._predict_k_from_sae_in(self.process_sae_in(x))  # type: ignore[attr-defined]

    def _encode_hard(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        hidden_pre = self._hidden_pre(sae_in)
        k_hat = self.hook_sae_k(self._predict_k_from_sae_in(sae_in))
        feature_acts = self.hook_sae_acts_post(self._hard_topk(hidden_pre, k_hat))  # type: ignore[attr-defined]
        return feature_acts, hidden_pre, k_hat

    def _decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        W_dec = self.W_dec
        if self.cfg.rescale_acts_by_decoder_norm:
            # (f / |W_dec|) @ W_dec == f @ (W_dec / |W_dec|): scaling the [d_sae, d_in] rows costs
            # a fraction of scaling the [batch, d_sae] activations, forward and backward.
            W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        sae_out_pre = feature_acts @ W_dec + self.b_dec  # type: ignore[attr-defined]
        sae_out_pre = self.hook_sae_recons(sae_out_pre)  # type: ignore[attr-defined]
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)  # type: ignore[attr-defined]
        return self.reshape_fn_out(sae_out_pre, self.d_head)  # type: ignore[attr-defined]

    # The folds run through SAELens's own (the mixin precedes SAE in the MRO) and then apply
    # the same transform to the k-estimator, which also reads x - b_dec.

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """SAELens's fold, plus the k-estimator's input weights, so k_hat on raw inputs is unchanged."""
        super().fold_activation_norm_scaling_factor(scaling_factor)  # type: ignore[misc]
        self.W_k_in.data *= scaling_factor

    @torch.no_grad()
    def fold_activation_whitening(
        self, mean: torch.Tensor, whitening_matrix: torch.Tensor, unwhitening_matrix: torch.Tensor
    ) -> None:
        """SAELens's whitening fold, extended to the k-estimator (``W_k_in <- M @ W_k_in``)."""
        if self.cfg.rescale_acts_by_decoder_norm:
            # Unwhitening changes the decoder row norms and so the top-k selection (as in TopK).
            self.fold_W_dec_norm()
            self.cfg.rescale_acts_by_decoder_norm = False
        super().fold_activation_whitening(mean, whitening_matrix, unwhitening_matrix)  # type: ignore[misc]
        dtype = torch.promote_types(self.W_k_in.dtype, whitening_matrix.dtype)
        matrix = whitening_matrix.to(self.W_k_in.device, dtype)
        self.W_k_in.data.copy_(matrix @ self.W_k_in.data.to(dtype))
        if not self.cfg.apply_b_dec_to_input:
            self.b_k_in.data.sub_(mean.to(self.W_k_in.device, dtype) @ self.W_k_in.data.to(dtype))

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Fold decoder norms into the encoder; only safe with ``rescale_acts_by_decoder_norm``."""
        if not self.cfg.rescale_acts_by_decoder_norm:
            raise NotImplementedError(
                "Folding W_dec_norm is not safe for SoftSAEs when rescale_acts_by_decoder_norm is False, "
                "as it changes which latents are in each input's top k (same rule as SAELens's TopK)"
            )
        super().fold_W_dec_norm()  # type: ignore[misc]


class SoftSAE(_SoftEncoderMixin, SAE[SoftSAEConfig]):
    """Inference SoftSAE: per-input ``k_hat`` from the k-estimator, then hard top-k.

    Hooks: the standard ``hook_sae_input``, ``hook_sae_acts_pre``, ``hook_sae_acts_post``,
    ``hook_sae_recons``, ``hook_sae_output``, ``hook_sae_error``, plus ``hook_sae_k`` carrying
    the float prediction ``k_hat`` (shape ``x.shape[:-1]``) before rounding: a hook that
    replaces it changes how many latents fire.
    """

    b_enc: nn.Parameter

    def __init__(self, cfg: SoftSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self._init_soft_parameters()

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations: the top ``round(k_hat)`` ReLU'd pre-activations of each input."""
        return self._encode_hard(x)[0]

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction from feature activations (``W_dec`` and ``b_dec``, hooks fired)."""
        return self._decode(feature_acts)


class SoftTrainingSAE(_SoftEncoderMixin, TrainingSAE[SoftTrainingSAEConfig]):
    """Training SoftSAE. ``encode``/``forward`` behave exactly like :class:`SoftSAE` (hard
    per-input top-k), so SAELens's evaluator sees the inference behaviour;
    ``training_forward_pass`` runs the soft or hard phase set by ``cfg.schedule(step)``."""

    b_enc: nn.Parameter

    def __init__(self, cfg: SoftTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self._init_soft_parameters()
        # Saved with training checkpoints so a resumed run continues its schedule exactly; see
        # _schedule_step.
        self.register_buffer(
            "completed_training_steps",
            torch.zeros((), dtype=torch.long, device=self.device),
            persistent=True,
        )

    def _schedule_step(self, trainer_step: int) -> int:
        """The step index the schedule uses.

        SAELens's trainer saves ``n_training_steps`` in a checkpoint before incrementing it, so
        a resumed run hands the SAE the last completed step's index again (``completed - 1``).
        This SAE counts completed steps itself: when the trainer's index is exactly one behind
        that count, the run was resumed and the count is the true index.
        """
        completed = int(self.completed_training_steps)
        step = completed if completed == trainer_step + 1 else trainer_step
        self.completed_training_steps.fill_(step + 1)
        return step

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_acts, hidden_pre, _ = self._encode_hard(x)
        return feature_acts, hidden_pre

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return self._decode(feature_acts)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}

    def soft_alpha(self, relu_pre: torch.Tensor, alpha: float) -> torch.Tensor | float:
        """Alpha in activation units: scaled by the batch's RMS positive pre-activation when
        ``cfg.alpha_scale == "relative"``."""
        if self.cfg.alpha_scale == "absolute":
            return alpha
        positive = relu_pre.detach()
        count = torch.count_nonzero(positive).clamp(min=1)
        rms = torch.linalg.vector_norm(positive) / count.sqrt()
        return (alpha * rms).clamp(min=torch.finfo(torch.float32).tiny)

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        schedule = self.cfg.schedule(self._schedule_step(step_input.n_training_steps))
        sae_in = self.process_sae_in(step_input.sae_in)
        hidden_pre = self._hidden_pre(sae_in)
        k_hat = self._predict_k_from_sae_in(sae_in)
        if schedule.hard:
            k_hat = k_hat.detach()
        k_hat = self.hook_sae_k(k_hat)
        feature_acts = self.hook_sae_acts_post(self._hard_topk(hidden_pre, k_hat))

        if schedule.hard:
            train_acts = feature_acts
            alpha_used = torch.tensor(0.0)
        else:
            relu_pre = hidden_pre.float().relu()
            alpha_used = self.soft_alpha(relu_pre, schedule.alpha)
            k_soft = k_hat.clamp(_K_MARGIN, self.cfg.d_sae - _K_MARGIN)
            weights_in = relu_pre if self.cfg.soft_topk_grad_to_pre else relu_pre.detach()
            weights = soft_topk(weights_in, k_soft, alpha_used)
            train_acts = (relu_pre * weights).to(hidden_pre.dtype)

        sae_out = self.decode(train_acts)
        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        k_loss = self.cfg.k_loss_coefficient * F.softplus(
            k_hat.mean() - schedule.k_target, beta=self.cfg.k_loss_beta
        )
        if self.cfg.k_loss_scale == "mse":
            k_loss = k_loss * (mse_loss.detach().float() / schedule.k_target)
        aux_loss = self._aux_loss(step_input, hidden_pre, sae_out)
        losses = {"mse_loss": mse_loss, "k_loss": k_loss, "auxiliary_reconstruction_loss": aux_loss}
        k_detached = k_hat.detach()
        metrics: dict[str, Any] = {
            "softsae/k_hat_mean": k_detached.mean(),
            "softsae/k_hat_min": k_detached.min(),
            "softsae/k_hat_max": k_detached.max(),
            "softsae/k_target": schedule.k_target,
            "softsae/alpha": alpha_used.detach()
            if isinstance(alpha_used, torch.Tensor)
            else alpha_used,
            "softsae/alpha_schedule": schedule.alpha,
            "softsae/hard_phase": int(schedule.hard),
        }
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=mse_loss + k_loss + aux_loss,
            losses=losses,
            metrics=metrics,
        )

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return {"auxiliary_reconstruction_loss": self._aux_loss(step_input, hidden_pre, sae_out)}

    def _aux_loss(
        self, step_input: TrainStepInput, hidden_pre: torch.Tensor, sae_out: torch.Tensor
    ) -> torch.Tensor:
        """TopK's dead-latent loss: the top ``d_in / 2`` dead latents reconstruct the residual."""
        dead = step_input.dead_neuron_mask
        if dead is None or self.cfg.aux_loss_coefficient == 0 or (num_dead := int(dead.sum())) == 0:
            return sae_out.new_tensor(0.0)
        residual = (step_input.sae_in - sae_out).detach()
        k_aux = step_input.sae_in.shape[-1] // 2
        scale = min(num_dead / k_aux, 1.0)
        aux_acts = calculate_topk_aux_acts(min(k_aux, num_dead), hidden_pre, dead)
        recons = act_times_W_dec(aux_acts, self.W_dec, self.cfg.rescale_acts_by_decoder_norm)
        recons = self.reshape_fn_out(recons, self.d_head)
        return self.cfg.aux_loss_coefficient * scale * (recons - residual).pow(2).sum(dim=-1).mean()

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        # SAELens's disk loader casts every tensor to the SAE's float dtype; a step count is an int.
        if "completed_training_steps" in state_dict:
            state_dict["completed_training_steps"] = (
                state_dict["completed_training_steps"].round().long()
            )

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        state_dict.pop("completed_training_steps", None)
        if self.cfg.rescale_acts_by_decoder_norm:
            _fold_norm_topk(
                W_dec_norm=self.get_W_dec_norm(),
                W_enc=state_dict["W_enc"],
                b_enc=state_dict["b_enc"],
                W_dec=state_dict["W_dec"],
            )
