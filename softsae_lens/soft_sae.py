"""SoftSAE: a TopK SAE whose k is predicted per input and trained through a Soft Top-K.

The inference and training classes (their configs are in :mod:`softsae_lens.soft_config`, the
parts they share in :mod:`softsae_lens.soft_encoder`) subclass SAELens's TopK classes and
override only what differs: the per-input k, the encoder that predicts it, and the soft
training phase. TopK's dead-latent aux loss, its decoder-norm fold rules and its save-time fold
are inherited unchanged.

Inference: ``k_hat = min(k_max, k_scale * k_max * sigmoid(MLP(x - b_dec)))`` per input
(``k_scale``: ``k`` over the estimator's mean raw prediction on training inputs, read at
the end of training; 1 for SAEs trained with the penalty), rounded and clamped to ``[1, k_max]``, then a hard top-k of the pre-activations. The prediction passes through the
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

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens.constants import TRAINER_STATE_FILENAME
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.saes.topk_sae import TopKSAE, TopKTrainingSAE
from torch import nn
from transformer_lens.hook_points import HookPoint
from typing_extensions import override

from softsae_lens.soft_config import (
    ARCHITECTURE,
    SoftSAEConfig,
    SoftSchedule,
    SoftTrainingSAEConfig,
    is_int,
)
from softsae_lens.soft_encoder import SoftEncoderMixin
from softsae_lens.soft_k_budget import _K_MARGIN, SoftKBudgetMixin
from softsae_lens.soft_topk import SoftTopKFunction, alpha_range, candidate_count

__all__ = [
    "ARCHITECTURE",
    "SoftSAE",
    "SoftSAEConfig",
    "SoftSchedule",
    "SoftTrainingInputs",
    "SoftTrainingSAE",
    "SoftTrainingSAEConfig",
]

logger = logging.getLogger(__name__)

# The soft phase serves a batch from its top candidates when every left-out Soft Top-K weight
# together is below this fraction of k (float32 rounding of the row's total).
_SPARSE_TAIL_TOLERANCE = torch.finfo(torch.float32).eps


class SoftTrainingInputs(NamedTuple):
    """What a training step starts from (:meth:`SoftTrainingSAE.training_inputs`)."""

    schedule: SoftSchedule
    hidden_pre: torch.Tensor
    k_hat: torch.Tensor  # the k each input gets (normalised, through hook_sae_k)
    k_raw: torch.Tensor  # the estimator's own prediction, before the k_budget factor
    k_scale: torch.Tensor  # the factor used in this step (1 with k_budget="penalty")
    k_raw_mean: torch.Tensor  # k_raw's mean over the (global) batch, with gradient


class SoftSAE(SoftEncoderMixin, TopKSAE):
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


class SoftTrainingSAE(SoftKBudgetMixin, SoftEncoderMixin, TopKTrainingSAE):
    """Training SoftSAE. ``encode``/``forward`` behave exactly like :class:`SoftSAE` (hard
    per-input top-k), so SAELens's evaluator sees the inference behaviour;
    ``training_forward_pass`` runs the soft or hard phase set by ``cfg.schedule(step)``."""

    cfg: SoftTrainingSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: SoftTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)  # type: ignore[arg-type]
        # SAELens hands a resumed run the index of the last completed step again; see
        # load_weights_from_checkpoint. A plain attribute: it is not part of the model's state.
        self.resume_step_offset = 0
        self.register_k_scale_reservoir()

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.hook_sae_batch_sums = HookPoint()

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
        self.keep_for_k_scale(step_input.sae_in, schedule, rows=k_raw.numel())
        return SoftTrainingInputs(
            schedule, hidden_pre, self.hook_sae_k(k_hat), k_raw, k_scale, k_raw_mean
        )

    def _hard_selection_mse(
        self,
        step_input: TrainStepInput,
        schedule: SoftSchedule,
        mse_loss: torch.Tensor,
        hard_values: torch.Tensor,
        top_indices: torch.Tensor,
        hidden_pre: torch.Tensor,
    ) -> torch.Tensor | None:
        """The reconstruction error of the hard top-k that inference uses, on this batch.

        In the hard phase it is the step's own ``mse_loss``. In the soft phase the soft weights
        may spread the reconstruction over more than ``k_hat`` latents per input (inputs denser
        than k, a large ``alpha_end``); this error shows what inference would lose, and the last
        soft step warns once when its ratio to ``mse_loss`` is over ``_HARD_SWITCH_WARN_RATIO``.
        The soft phase computes it where it is used: on logging steps, on the last soft step and,
        with ``hard_selection_loss_coefficient``, on every step; elsewhere it returns None (the
        extra decode cost about 5% of a soft step on the sweep's size).
        """
        if schedule.hard:
            return mse_loss.detach()
        trains = self.cfg.hard_selection_loss_coefficient > 0
        if not (trains or schedule.last_soft or step_input.is_logging_step):
            return None
        with torch.set_grad_enabled(trains):
            width = self.hard_width
            hard_out = self._decode_selected(hard_values, top_indices[..., :width], hidden_pre)
            hard_mse = self.mse_loss_fn(hard_out, step_input.sae_in).sum(dim=-1).mean()
        if schedule.last_soft:
            ratio = (hard_mse.detach() / mse_loss.detach().clamp(min=1e-12)).item()  # once a run
            if ratio > _HARD_SWITCH_WARN_RATIO:
                logger.warning(
                    "Last soft step: once SoftSAE has switched to hard top-k, its inference "
                    "selection has reconstruction error %.1fx the soft phase's: the soft "
                    "weights spread each input over more latents than k_hat. Seen where inputs "
                    "hold more true features than k at a large alpha_end (%g); "
                    "hard_selection_loss_coefficient=0.3 (now %g) or a lower alpha_end "
                    "(0.03 or 0.01) avoids it.",
                    ratio,
                    self.cfg.alpha_end,
                    self.cfg.hard_selection_loss_coefficient,
                )
        return hard_mse

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
        hard_mse = self._hard_selection_mse(
            step_input, schedule, mse_loss, hard_values, top_indices, hidden_pre
        )
        k_loss = self.k_loss(k_raw_mean, schedule.k_target, mse_loss)
        losses = {
            "mse_loss": mse_loss,
            "k_loss": k_loss,
            **self.calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out),
        }
        if self.cfg.hard_selection_loss_coefficient > 0:
            assert hard_mse is not None  # computed on every step when it trains
            coefficient = self.cfg.hard_selection_loss_coefficient * (not schedule.hard)
            losses["hard_selection_loss"] = coefficient * hard_mse
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
        if hard_mse is not None:
            metrics["softsae/hard_selection_mse"] = hard_mse.detach()
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=sum(losses.values()),
            losses=losses,
            metrics=metrics,
        )


# The soft phase's reconstruction error may rise this many times at the switch to hard top-k
# before the last soft step warns: on SmolLM2 the two were within 5%, on a toy whose inputs hold
# twice k true features at alpha floor 0.05 the hard one was 1,600x the soft one.
_HARD_SWITCH_WARN_RATIO = 2.0


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
    if not is_int(completed) or not is_int(resumed_at):
        logger.warning(
            "%s has no step counts this softsae_lens version understands; the SoftSAE schedule "
            "resumes at SAELens's n_training_steps, which may repeat one step",
            state_path,
        )
        return 0
    return max(0, completed - resumed_at)
