"""Experiment-only SoftSAE training variants, for the realistic-regime ablation.

The core (``softsae_lens.soft_sae``) trains in a soft phase (``relu(pre) * soft_topk(...)``)
and then a final hard phase. The ablation asks which of its parts costs feature quality, so it
needs ways of training that the core does not offer yet. They live here, as a subclass of the
core's training config and class, until one of them earns a place in the core:

* ``train_code="soft"``: the core's training, unchanged;
* ``train_code="straight_through"``: the forward pass uses the hard per-input top-k that
  inference uses, from the first step (the encoder and decoder learn exactly as in a TopK
  SAE), and the k-estimator gets the Soft Top-K weights' exact gradient through a
  straight-through term ``relu(pre).detach() * (w - w.detach())``, which is zero in the forward
  pass.

Two more fields ask about the k-estimator's own training, whatever ``train_code`` is:

* ``k_estimator_init="random"``: its first layer starts as random directions (with the
  norms of the encoder columns it would have copied) instead of as a copy of those columns;
* ``k_estimator_lr_scale``: its effective learning rate relative to the encoder's. SAELens's
  trainer builds one Adam group over every parameter, so the estimator is reparametrised as
  ``scale * stored`` (Adam's step on ``stored`` is about the learning rate, so the step on the
  estimator is ``scale`` times it); the product is folded back when the inference model is
  saved.

Inference is unchanged (the class saves as architecture ``"soft"``), so these variants load
and evaluate as ordinary SoftSAEs.

Depends on the core SoftSAE classes only (their protected helpers: the variants are
experiments on the core's own training step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from typing_extensions import override

from softsae_lens.soft_sae import SoftTrainingSAE, SoftTrainingSAEConfig

TrainCode = Literal["soft", "straight_through"]
EstimatorInit = Literal["encoder", "random"]
_ESTIMATOR_PARAMS = ("W_k_in", "b_k_in", "W_k_out", "b_k_out")


@dataclass(kw_only=True)
class ProtoSoftTrainingSAEConfig(SoftTrainingSAEConfig):
    """:class:`~softsae_lens.SoftTrainingSAEConfig` plus ``train_code`` (see the module)."""

    train_code: TrainCode = "soft"
    k_estimator_init: EstimatorInit = "encoder"
    k_estimator_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.train_code not in ("soft", "straight_through"):
            raise ValueError(
                f"train_code must be 'soft' or 'straight_through', got {self.train_code!r}"
            )
        if self.k_estimator_init not in ("encoder", "random"):
            raise ValueError(
                f"k_estimator_init must be 'encoder' or 'random', got {self.k_estimator_init!r}"
            )
        if not self.k_estimator_lr_scale > 0:
            raise ValueError(f"k_estimator_lr_scale must be > 0, got {self.k_estimator_lr_scale!r}")
        super().__post_init__()


class ProtoSoftTrainingSAE(SoftTrainingSAE):
    """:class:`~softsae_lens.SoftTrainingSAE` with the training variants of this module."""

    cfg: ProtoSoftTrainingSAEConfig  # type: ignore[assignment]

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        if self.W_k_in.device.type == "meta":
            return
        with torch.no_grad():
            if self.cfg.k_estimator_init == "random":
                # Random directions with the copied columns' norms: only the directions change.
                random = torch.randn_like(self.W_k_in)
                self.W_k_in.copy_(random * (self.W_k_in.norm(dim=0) / random.norm(dim=0)))
            for name in _ESTIMATOR_PARAMS:
                getattr(self, name).div_(self.cfg.k_estimator_lr_scale)

    def _estimator(self, name: str) -> torch.Tensor:
        return getattr(self, name).float() * self.cfg.k_estimator_lr_scale

    @override
    def _predict_raw_k_from_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        if self.cfg.k_estimator_lr_scale == 1.0:
            return super()._predict_raw_k_from_sae_in(sae_in)
        hidden = F.relu(sae_in.float() @ self._estimator("W_k_in") + self._estimator("b_k_in"))
        logit = hidden @ self._estimator("W_k_out") + self._estimator("b_k_out")[0]
        return self.cfg.k_max * torch.sigmoid(logit)

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        for name in _ESTIMATOR_PARAMS:
            state_dict[name] = state_dict[name] * self.cfg.k_estimator_lr_scale

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if self.cfg.train_code == "soft":
            return super().training_forward_pass(step_input)
        schedule, hidden_pre, k_hat, _, _, k_raw_mean = self.training_inputs(step_input)
        feature_acts = self.hook_sae_acts_post(self._hard_topk(hidden_pre, k_hat))
        train_acts = feature_acts
        if not schedule.hard:
            # Zero in the forward pass; carries dL/d(acts) * relu(pre) into the weights' exact
            # gradient with respect to k_hat, and nothing to the encoder.
            relu_pre = hidden_pre.detach().float().relu()
            alpha = self.soft_alpha(hidden_pre, schedule.alpha)
            weights = self._soft_weights(relu_pre, k_hat, alpha, rows_sorted=False)
            train_acts = feature_acts + (relu_pre * (weights - weights.detach())).to(
                feature_acts.dtype
            )
        sae_out = self.decode_dense(train_acts)
        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        losses = {
            "mse_loss": mse_loss,
            "k_loss": self.k_loss(k_raw_mean, schedule.k_target, mse_loss),
            **self.calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out),
        }
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=sum(losses.values()),
            losses=losses,
            metrics={
                "softsae/k_hat_mean": k_hat.detach().mean(),
                "softsae/k_target": schedule.k_target,
                "softsae/hard_phase": int(schedule.hard),
            },
        )
