"""Starting every SAE's decoder bias at the activations' mean, before training.

SAELens starts ``b_dec`` at zero. On a residual stream whose mean vector dominates each token's
activation (Gemma-3-270M's layer 6: a mean of norm ~3,300 against ~1,300 of per-token
variation, three dimensions holding most of it), every latent's pre-activation is then mostly
``W_enc . mean``, the same on every token: the same few latents win every top-k and the rest
never fire. Starting ``b_dec`` at the mean (as OpenAI's TopK SAEs and sparsify start it from
the data) removes that shared offset from the first step. The runner applies it to every SAE
of a comparison alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

import torch

__all__ = ["DecoderBiasInit", "ActivationMean", "activation_mean", "start_decoder_bias_at_mean"]

DecoderBiasInit = Literal["zeros", "mean"]


class ActivationMean(NamedTuple):
    """The mean activation vector, the mean token norm and how many tokens they came from."""

    mean: torch.Tensor
    mean_norm: float
    tokens: int


@torch.no_grad()
def activation_mean(
    model: Any,
    hook_name: str,
    rows: Iterable[torch.Tensor],
    exclude_token_ids: Iterable[int] = (),
) -> ActivationMean:
    """Mean of ``hook_name``'s activations over ``rows`` (batches of token ids, ``[batch, seq]``),
    leaving out the tokens in ``exclude_token_ids`` (SAELens's runner drops special tokens from
    the training stream, so they are left out here too)."""
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    excluded = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
    # The forward stops at the hook's block: nothing after it (an unembedding of 262k tokens
    # on Gemma) is needed.
    stop_at_layer = extract_stop_at_layer_from_tlens_hook_name(hook_name)
    total: torch.Tensor | None = None
    norm_total, count = 0.0, 0
    for batch in rows:
        _, cache = model.run_with_cache(
            batch, names_filter=[hook_name], stop_at_layer=stop_at_layer
        )
        acts = cache[hook_name].float()
        keep = ~torch.isin(batch.to(acts.device), excluded.to(acts.device))
        kept = acts[keep]
        total = kept.sum(0) if total is None else total + kept.sum(0)
        norm_total += float(kept.norm(dim=-1).sum())
        count += int(kept.shape[0])
    if total is None or count == 0:
        raise ValueError("rows: no token left to average (every row empty or excluded)")
    return ActivationMean(total / count, norm_total / count, count)


def _input_scale(sae: Any, mean_norm: float) -> float:
    """The factor SAELens's trainer multiplies the activations by before the SAE sees them."""
    mode = sae.cfg.normalize_activations
    if mode == "none":
        return 1.0
    if mode == "expected_average_only_in":
        return math.sqrt(sae.cfg.d_in) / mean_norm
    raise ValueError(
        f"normalize_activations={mode!r}: the decoder bias can start at the mean only for "
        "'none' or 'expected_average_only_in'"
    )


@torch.no_grad()
def start_decoder_bias_at_mean(saes: dict[str, Any], mean: ActivationMean) -> None:
    """Set each SAE's ``b_dec`` to ``mean``, in the units its trainer will feed it (scaled by
    the expected-norm factor where the SAE normalises its inputs; the trainer estimates that
    factor on its own batches, so the start is the mean up to that estimate's noise)."""
    for sae in saes.values():
        scale = _input_scale(sae, mean.mean_norm)
        sae.b_dec.copy_((mean.mean * scale).to(sae.b_dec.dtype))
