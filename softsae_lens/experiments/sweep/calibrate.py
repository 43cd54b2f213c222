"""Putting the architectures without a k at a target L0, documented and measured.

* JumpReLU trains with SAELens's ``"quadratic"`` sparsity loss (Gemma Scope 2), which pulls
  L0 toward ``target_l0``. With SAELens's default straight-through estimator (DeepMind's:
  the L0 loss reaches the threshold only), Adam moves the threshold by about ``lr`` per step
  while the reconstruction loss grows the pre-activations, and L0 ended short runs far above
  the target, with or without a calibrated start and with ``l0_coefficient`` 1 or 10. With
  ``jumprelu_ste_to_input=True`` (Anthropic's estimator, also a SAELens option) the loss
  reaches the encoder too and L0 lands near the target (tests/test_sweep.py checks it).
  The sweep uses that, and :func:`calibrate_jumprelu_threshold` starts the threshold at the
  target instead of at SAELens's 0.01 (where about half the latents fire): the
  ``1 - target / d_sae`` quantile of the untrained SAE's pre-activations on a pilot batch of
  (scaled) training activations.
* Matching pursuit's L0 is the number of greedy steps until the residual norm falls below
  ``residual_threshold`` (or ``max_iterations`` is reached); no formula maps a threshold to an
  L0 before the dictionary is trained. :class:`L0SteeredMatchingPursuit` is SAELens's training
  class plus one step after every training step: the threshold is multiplied by
  ``(batch L0 / target) ** gain``, an integral controller in log space. The final threshold
  is what gets saved (SAELens folds it to model units), and evaluation uses it unchanged.

Both report where L0 actually landed: the sweep evaluates every SAE's L0 on held-out text.

Depends on SAELens's SAE classes and torch only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from typing_extensions import override

__all__ = [
    "L0SteeredMatchingPursuit",
    "calibrate_jumprelu_threshold",
    "initial_residual_threshold",
]


def initial_residual_threshold(d_in: int) -> float:
    """Starting residual threshold for matching pursuit, in scaled units: half the mean input
    norm (SAELens scales inputs to a mean norm of ``sqrt(d_in)``), i.e. stop once three quarters
    of an average input's energy is explained. The controller takes it from there."""
    return 0.5 * math.sqrt(d_in)


@torch.no_grad()
def calibrate_jumprelu_threshold(sae: Any, scaled_acts: torch.Tensor, target: float) -> float:
    """Set an untrained JumpReLU training SAE's threshold so its L0 on ``scaled_acts`` is
    ``target``; returns the threshold (also stored as ``cfg.jumprelu_init_threshold``)."""
    if not 0 < target < sae.cfg.d_sae:
        raise ValueError(f"target L0 must be in (0, d_sae={sae.cfg.d_sae}), got {target}")
    _, hidden_pre = sae.encode_with_hidden_pre(scaled_acts)
    values = hidden_pre.float().flatten()
    # torch.quantile refuses very large inputs; a strided subsample keeps the estimate exact
    # enough (millions of values) without that limit.
    step = max(1, values.numel() // 4_000_000)
    threshold = float(torch.quantile(values[::step], 1 - target / sae.cfg.d_sae))
    threshold = max(threshold, 1e-6)  # a JumpReLU threshold is kept non-negative
    sae.threshold.data.fill_(threshold)
    sae.cfg.jumprelu_init_threshold = threshold
    return threshold


class L0SteeredMatchingPursuit(MatchingPursuitTrainingSAE):
    """SAELens's matching pursuit SAE whose residual threshold follows a target L0 in training.

    Args:
        cfg: a ``MatchingPursuitTrainingSAEConfig`` (its ``residual_threshold`` is the start).
        target_l0: the mean number of latents per token to steer toward.
        gain: exponent of the per-step correction ``(L0 / target) ** gain``. 0.25 settles in
            a few dozen steps from a threshold 1000x too low, without overshoot, on random
            data (tests/test_sweep.py).
    """

    def __init__(self, cfg: Any, target_l0: float, gain: float = 0.25) -> None:
        super().__init__(cfg)
        if target_l0 <= 0 or gain <= 0:
            raise ValueError(f"target_l0 and gain must be positive, got {target_l0}, {gain}")
        self.target_l0 = float(target_l0)
        self.gain = float(gain)
        self.l0_history: list[float] = []

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        with torch.no_grad():
            l0 = float((output.feature_acts != 0).sum(-1).float().mean())
        self.l0_history.append(l0)
        self.cfg.residual_threshold *= (max(l0, 0.5) / self.target_l0) ** self.gain
        return output
