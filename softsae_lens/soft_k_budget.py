"""SoftTrainingSAE's k budget: how the batch's k_hat is held on the target during training, and
how the factor inference uses (``k_scale``) is kept and re-read at the end.

``k_budget="normalize"`` rescales each batch's raw predictions to the target mean (with
gradient, so the estimator learns only how the budget is shared between inputs); the inference
factor follows a running average of the raw level and, with ``k_scale_reservoir``, is re-read at
the last step from a uniform sample of the run's inputs kept as training state
(:mod:`softsae_lens.soft_reservoir`). ``k_budget="penalty"`` is the paper's one-sided penalty.
Every batch statistic goes through :meth:`SoftKBudgetMixin.batch_sums`, the one place
data-parallel training hooks to make it global.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from softsae_lens.soft_config import SoftSchedule
from softsae_lens.soft_encoder import _TRAINING_ONLY_BUFFER as _RESERVOIR_ROWS
from softsae_lens.soft_reservoir import held_rows, keep_rows

__all__ = ["SoftKBudgetMixin"]

# Keeps a k (or a batch mean of them) away from 0, where float32 rounds a saturated sigmoid.
_K_MARGIN = 1e-3


class SoftKBudgetMixin:
    """The k budget of :class:`~softsae_lens.soft_sae.SoftTrainingSAE` (before
    :class:`~softsae_lens.soft_encoder.SoftEncoderMixin` in its bases): expects ``cfg`` (a
    ``SoftTrainingSAEConfig``), the ``k_scale`` buffer, ``hook_sae_batch_sums`` and the
    encoder mixin's ``_scale_k`` and ``_set_k_scale_from``."""

    cfg: Any
    k_scale: torch.Tensor

    def register_k_scale_reservoir(self) -> None:
        """The reservoir's rows: training state (in checkpoints, so that a resumed run ends
        where an uninterrupted one does), never in the inference SAE. Which slots hold rows
        follows from the step index and the batch size alone."""
        if self.uses_reservoir:
            self.register_buffer(  # type: ignore[attr-defined]
                _RESERVOIR_ROWS,
                torch.zeros(
                    self.cfg.k_scale_reservoir,
                    self.cfg.d_in,
                    dtype=self.dtype,  # type: ignore[attr-defined]
                    device=self.device,  # type: ignore[attr-defined]
                ),
            )

    @property
    def uses_reservoir(self) -> bool:
        """Whether training keeps inputs to re-read ``k_scale`` at its last step."""
        return self.cfg.k_budget == "normalize" and self.cfg.k_scale_reservoir > 0

    def batch_sums(self, *sums: torch.Tensor) -> torch.Tensor:
        """Sums over the training batch, stacked, passed through ``hook_sae_batch_sums``.

        The identity in one process. Data-parallel training (``softsae_lens.training.distributed``)
        hooks it to sum over every process's batch, with gradients, so that the k penalty and
        the relative alpha see the global batch.
        """
        return self.hook_sae_batch_sums(torch.stack(sums))

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
        (``k_scale``) becomes ``k`` over a running average of ``k_raw_mean`` (re-read at the
        last step from ``k_scale_reservoir``'s inputs, :meth:`calibrate_k_scale`). With
        ``"penalty"`` the factor is 1.
        """
        if self.cfg.k_budget == "penalty":
            return k_raw, k_raw.new_ones(())
        # k_raw > 0 (a sigmoid), but float32 can round a saturated one to 0.
        scale = schedule.k_target / k_raw_mean.clamp(min=_K_MARGIN)
        if schedule.k_target <= self.cfg.k:
            if schedule.hard:
                # The estimator's weights are frozen, so restart: one carried over from the
                # soft phase would lag behind the level they ended at. Still a short average,
                # not a plain mean over the phase: b_dec learns on, and the level moves with it.
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

    def _sums_over_inputs(self, *sums: torch.Tensor) -> torch.Tensor:
        """The encoder mixin's sums for :meth:`calibrate_k_scale`, global under torchrun."""
        return self.batch_sums(*sums)

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        state_dict.pop(_RESERVOIR_ROWS, None)

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_loading(state_dict)
        # A checkpoint written before the reservoir existed, or with it off: NaN marks the
        # slots no row has filled, and the last step leaves them out (the rows after the
        # resume are the sample).
        if self.uses_reservoir and _RESERVOIR_ROWS not in state_dict:
            state_dict[_RESERVOIR_ROWS] = torch.full_like(getattr(self, _RESERVOIR_ROWS), math.nan)

    def keep_for_k_scale(self, sae_in: torch.Tensor, schedule: SoftSchedule, rows: int) -> None:
        """Fold this step's ``rows`` inputs into the reservoir and, at the run's last step,
        re-read ``k_scale`` from every row it holds (a no-op without the reservoir)."""
        if not self.uses_reservoir:
            return
        kept = getattr(self, _RESERVOIR_ROWS)
        keep_rows(kept, sae_in, seen=schedule.step * rows)
        if schedule.last:
            self._set_k_scale_from(kept, held_rows(kept, (schedule.step + 1) * rows))  # type: ignore[attr-defined]
