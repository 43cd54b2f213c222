"""What SoftSAE's inference and training classes share: the k-estimator, the per-input hard
top-k, the decoding paths and the folds that must also reach the k-estimator."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint
from typing_extensions import override

__all__ = ["SoftEncoderMixin"]

# Summing w decoder rows per input (embedding_bag) reads W_dec at random; it beats the dense
# [batch, d_sae] @ W_dec once d_sae is this many times w (measured on CPU: at d_sae 512, d_in
# 160, 54 rows per input were 1.35x slower than the dense product, 22 rows 1.7x faster; at
# d_sae 16384, d_in 768, 160 rows 3.4x faster).
_ROW_SUM_MIN_RATIO = 16
# Written by SoftSAE v0.1 checkpoints; training-only state with no meaning on load.
_LEGACY_STEP_BUFFER = "completed_training_steps"
# Attribute on the activations encode() returns: (their tensor version, the top-k indices).
_ACTIVE_ATTR = "_softsae_active"
_TRAINING_ONLY_BUFFER = "k_scale_reservoir_rows"
# calibrate_k_scale divides by the raw level; a sigmoid's float32 mean can round to 0.
_LEVEL_FLOOR = 1e-3


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """A context that turns autocast off where it is on (k_hat must be float32: in bf16 it
    moves in steps of 4-8 near k ~ 600)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class SoftEncoderMixin:
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

    @torch.no_grad()
    def calibrate_k_scale(self, inputs: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
        """Set the inference factor ``k_scale`` so that the mean k over ``inputs`` is ``k``.

        ``inputs``: SAE inputs (``[..., d_in]``, as ``encode`` takes them). The estimator's raw
        predictions are averaged over every row (over every process's rows under data-parallel
        training) and ``k_scale = k / mean``; the mean L0 on that data then sits at ``k``
        (less where ``k_max`` caps an input or fewer than k pre-activations are positive).
        Training with ``k_budget="normalize"`` calls it at its last step on the rows
        ``k_scale_reservoir`` kept; call it on your own activations to hold ``k`` on them.
        Returns the new ``k_scale``.
        """
        rows = inputs.reshape(-1, inputs.shape[-1]) if inputs.dim() else inputs
        if inputs.dim() == 0 or rows.shape[0] == 0 or rows.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"inputs: shape {tuple(inputs.shape)}; needs at least one row of d_in="
                f"{self.cfg.d_in}"
            )
        bad = int((~torch.isfinite(rows).all(-1)).sum())
        if bad:
            raise ValueError(
                f"inputs: {bad} of {rows.shape[0]} rows hold NaN or inf; calibrate on finite "
                "activations"
            )
        return self._set_k_scale_from(rows, None, chunk_rows)

    @torch.no_grad()
    def _set_k_scale_from(
        self, rows: torch.Tensor, valid: torch.Tensor | None, chunk_rows: int = 4096
    ) -> torch.Tensor:
        """``k_scale = k / mean raw prediction`` over ``rows`` (``[n, d_in]``), counting only
        the rows where ``valid`` (float 0/1 per row) is 1; rows left out may hold NaN."""
        k_raw = torch.cat(
            [
                self._predict_raw_k_from_sae_in(self.process_sae_in(chunk.nan_to_num()))  # type: ignore[attr-defined]
                for chunk in rows.split(chunk_rows)
            ]
        )
        if valid is None:
            total, count = k_raw.sum(), k_raw.new_full((), float(k_raw.numel()))
        else:
            total, count = (k_raw * valid).sum(), valid.sum().to(k_raw.dtype)
        total, count = self._sums_over_inputs(total, count)
        self.k_scale.copy_(self.cfg.k * count / total.clamp(min=_LEVEL_FLOOR * count))
        return self.k_scale.detach().clone()

    def _sums_over_inputs(self, *sums: torch.Tensor) -> torch.Tensor:
        """The sums :meth:`calibrate_k_scale` takes, stacked (training: over every process's
        rows)."""
        return torch.stack(sums)

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
        # The training reservoir's buffer (SoftTrainingSAE, k_scale_reservoir) in a training
        # checkpoint loaded by a class or config that keeps none.
        if _TRAINING_ONLY_BUFFER in state_dict and _TRAINING_ONLY_BUFFER not in self._buffers:  # type: ignore[attr-defined]
            del state_dict[_TRAINING_ONLY_BUFFER]
