"""SoftSAE's inference and training configs, their checks, and the training schedule they define."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

import torch
from sae_lens.saes.topk_sae import TopKSAEConfig, TopKTrainingSAEConfig
from typing_extensions import override

from softsae_lens.soft_topk import alpha_range

__all__ = ["ARCHITECTURE", "SoftSAEConfig", "SoftSchedule", "SoftTrainingSAEConfig", "is_int"]

ARCHITECTURE = "soft"
KRounding = Literal["round", "floor"]
AlphaScale = Literal["absolute", "relative"]
KLossScale = Literal["mse", "absolute"]
KBudget = Literal["normalize", "penalty"]


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name} must be {allowed}, got {name}={value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
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
    if not is_int(cfg.k) or cfg.k <= 0:
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
    if not is_int(cfg.k_estimator_width) or cfg.k_estimator_width <= 0:
        _fail("k_estimator_width", cfg.k_estimator_width, "a positive integer or None")
    _check_choice(cfg, "rescale_acts_by_decoder_norm", (True, False))


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
            level being the mean of ``k_raw`` over training inputs (the ``k_scale`` buffer,
            saved with the weights), as BatchTopK uses a running threshold: re-read at the last
            step from inputs kept over the whole run (``k_scale_reservoir``), or, with that
            off, a running average over the hard phase, whose steps must then be a fair sample
            of the data (a shuffled stream, not the rows of one long document). ``"penalty"`` is the paper's one-sided penalty alone: a fixed
            price per latent, so the mean settles above the target wherever one more latent
            buys more reconstruction than the price (it drifts up as the dictionary improves).
        k_scale_decay: decay of the running average of the raw level behind the normalising
            factor that inference uses (``k_budget="normalize"``); it starts once the k target
            has annealed to ``k``, and restarts (a plain mean for its first steps) when the hard
            phase freezes the estimator. Short (ten batches) because the frozen estimator reads
            ``x - b_dec`` and the decoder bias still moves in the hard phase: a longer average
            lags the level inference will see.
        k_scale_reservoir: training inputs kept, sampled uniformly over the whole run
            (reservoir sampling, ``k_budget="normalize"``); at the last training step the
            factor inference uses is re-read from them with the final weights
            (:meth:`SoftTrainingSAE.calibrate_k_scale`), so it neither lags the decoder bias nor
            depends on which batches ended the run. 0 keeps the running average. The rows are
            in the training SAE's checkpoints (a resumed run keeps the rows an uninterrupted one
            would), never in the inference SAE.
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
            The floor ``alpha_end`` (relative: 0.05 of the RMS positive pre-activation) keeps
            the weights of latents just below the threshold away from 0, so they still get a
            share of the reconstruction's gradient; at 0.01 (the default before) SoftSAE kept
            more dead and duplicated latents than TopK at lr 1e-3 on realistic ground truth.
            Far larger floors break the switch to hard top-k (0.2 failed there).
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
        hard_selection_loss_coefficient: weight, in the soft phase, of the reconstruction error
            of the hard top-k that inference uses (on top of the soft reconstruction's). The
            soft weights sum to k_hat per input but may spread it over more latents at partial
            weight; where inputs hold more true features than k that pays, the soft phase
            learns it (from a large enough ``alpha_end``), and the switch to hard top-k undoes
            it (toy: explained variance 0.39 against TopK's 0.71). This term keeps the hard
            selection trained all along. 0 (default) leaves it out, as in the paper.
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
    k_scale_decay: float = 0.9
    k_scale_reservoir: int = 8192
    k_loss_coefficient: float = 1.0
    k_loss_scale: KLossScale = "mse"
    k_loss_beta: float = 5.0
    k_target_start: float | None = None
    k_anneal_fraction: float = 0.01
    alpha_start: float = 1.0
    alpha_end: float = 0.05
    alpha_anneal_fraction: float = 0.01
    alpha_scale: AlphaScale = "relative"
    soft_topk_grad_to_pre: bool = False
    hard_topk_fraction: float = 0.04
    hard_selection_loss_coefficient: float = 0.0

    def __post_init__(self) -> None:
        _validate_inference_fields(self)
        if self.k_target_start is None:
            self.k_target_start = float(max(self.d_in, self.k_max))
        self._validate_training_fields()
        super().__post_init__()

    def _validate_training_fields(self) -> None:
        steps = self.total_training_steps
        if steps is not None and (not is_int(steps) or steps <= 0):
            _fail("total_training_steps", steps, "a positive integer or None")
        _check_choice(self, "k_budget", ("normalize", "penalty"))
        if not 0.0 <= _number(self, "k_scale_decay") < 1.0:
            _fail("k_scale_decay", self.k_scale_decay, "in [0, 1)")
        if not is_int(self.k_scale_reservoir) or self.k_scale_reservoir < 0:
            _fail("k_scale_reservoir", self.k_scale_reservoir, "an integer >= 0 (0: off)")
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
        if _number(self, "hard_selection_loss_coefficient") < 0:
            _fail("hard_selection_loss_coefficient", self.hard_selection_loss_coefficient, ">= 0")
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
            last_soft=hard_steps > 0 and step == total - hard_steps - 1,
            last=step == total - 1,
            step=step,
        )


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
    # The step before the hard phase: the switch's warning compares the hard selection's error
    # with the soft one's there.
    last_soft: bool = False
    # The run's last step: the inference factor is re-read from the kept inputs there.
    last: bool = False
    # The optimizer step this schedule is for (0-based).
    step: int = 0
