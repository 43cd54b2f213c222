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

Inference is unchanged (the class saves as architecture ``"soft"``), so these variants load
and evaluate as ordinary SoftSAEs.

Depends on the core SoftSAE classes and the Soft Top-K operator only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from typing_extensions import override

from softsae_lens.soft_sae import SoftTrainingSAE, SoftTrainingSAEConfig
from softsae_lens.soft_topk import soft_topk

TrainCode = Literal["soft", "straight_through"]
# Keeps the Soft Top-K target strictly inside (0, d_sae), as the core does.
_K_MARGIN = 1e-3


@dataclass(kw_only=True)
class ProtoSoftTrainingSAEConfig(SoftTrainingSAEConfig):
    """:class:`~softsae_lens.SoftTrainingSAEConfig` plus ``train_code`` (see the module)."""

    train_code: TrainCode = "soft"

    def __post_init__(self) -> None:
        if self.train_code not in ("soft", "straight_through"):
            raise ValueError(
                f"train_code must be 'soft' or 'straight_through', got {self.train_code!r}"
            )
        super().__post_init__()


class ProtoSoftTrainingSAE(SoftTrainingSAE):
    """:class:`~softsae_lens.SoftTrainingSAE` with the training variants of this module."""

    cfg: ProtoSoftTrainingSAEConfig  # type: ignore[assignment]

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if self.cfg.train_code == "soft":
            return super().training_forward_pass(step_input)
        schedule = self.cfg.schedule(self._schedule_step(step_input.n_training_steps))
        sae_in = self.process_sae_in(step_input.sae_in)
        hidden_pre = self._hidden_pre(sae_in)
        k_hat = self._predict_k_from_sae_in(sae_in)
        if schedule.hard:
            k_hat = k_hat.detach()
        k_hat = self.hook_sae_k(k_hat)
        feature_acts = self.hook_sae_acts_post(self._hard_topk(hidden_pre, k_hat))
        train_acts = feature_acts
        alpha_used: Any = 0.0
        if not schedule.hard:
            # Zero in the forward pass; carries dL/d(acts) * relu(pre) into the weights' exact
            # gradient with respect to k_hat, and nothing to the encoder.
            relu_pre = hidden_pre.detach().float().relu()
            alpha_used = self.soft_alpha(relu_pre, schedule.alpha)
            k_soft = k_hat.clamp(_K_MARGIN, self.cfg.d_sae - _K_MARGIN)
            weights = soft_topk(relu_pre, k_soft, alpha_used)
            train_acts = feature_acts + (relu_pre * (weights - weights.detach())).to(
                feature_acts.dtype
            )
        sae_out = self.decode(train_acts)
        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        k_loss = self.cfg.k_loss_coefficient * F.softplus(
            k_hat.mean() - schedule.k_target, beta=self.cfg.k_loss_beta
        )
        if self.cfg.k_loss_scale == "mse":
            k_loss = k_loss * (mse_loss.detach().float() / schedule.k_target)
        aux_loss = self._aux_loss(step_input, hidden_pre, sae_out)
        k_detached = k_hat.detach()
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=mse_loss + k_loss + aux_loss,
            losses={
                "mse_loss": mse_loss,
                "k_loss": k_loss,
                "auxiliary_reconstruction_loss": aux_loss,
            },
            metrics={
                "softsae/k_hat_mean": k_detached.mean(),
                "softsae/k_target": schedule.k_target,
                "softsae/alpha": torch.as_tensor(alpha_used).detach(),
                "softsae/hard_phase": int(schedule.hard),
            },
        )
