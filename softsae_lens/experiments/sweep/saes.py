"""The untrained SAEs of a comparison: their configs, the pilot batch that calibrates them, and
where their decoder bias starts."""

from __future__ import annotations

from typing import Any

import torch

from softsae_lens.data.corpus import TokenCorpus
from softsae_lens.experiments.sweep.calibrate import (
    L0SteeredMatchingPursuit,
    calibrate_jumprelu_threshold,
)
from softsae_lens.experiments.sweep.config import SweepConfig, sae_config
from softsae_lens.training.decoder_bias import activation_mean, start_decoder_bias_at_mean

__all__ = ["build_saes", "pilot_activations", "sae_configs", "start_at_training_mean"]


@torch.no_grad()
def pilot_activations(model: Any, text: TokenCorpus, hook: str, rows: int) -> torch.Tensor:
    """Activations of the last ``rows`` training rows, special tokens dropped, flattened."""
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name, get_special_token_ids

    n = text.train.num_rows
    tokens = text.train.select(range(n - rows, n)).with_format("torch")[:]["tokens"]
    _, cache = model.run_with_cache(
        tokens,
        names_filter=[hook],
        stop_at_layer=extract_stop_at_layer_from_tlens_hook_name(hook),
        prepend_bos=False,
    )
    keep = ~torch.isin(tokens, torch.tensor(get_special_token_ids(model.tokenizer)))
    return cache[hook][keep].float()


def sae_configs(cfg: SweepConfig, d_in: int, d_sae: int) -> dict[str, Any]:
    """The training config of every SAE of the sweep, by run name."""
    return {name: sae_config(arch, target, d_in, d_sae, cfg) for name, arch, target in cfg.runs()}


@torch.no_grad()
def _with_decoder_bias(sae: Any, cfg: SweepConfig, scaled_pilot: torch.Tensor) -> Any:
    """The SAE with its decoder bias at the pilot's mean when ``--b-dec-init mean`` (set before
    JumpReLU's threshold is calibrated on the pilot, which reads it)."""
    if cfg.b_dec_init == "mean":
        sae.b_dec.copy_(scaled_pilot.mean(0).to(sae.b_dec.dtype))
    return sae


def build_saes(
    cfg: SweepConfig, sae_cfgs: dict[str, Any], scaled_pilot: torch.Tensor | None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Untrained SAEs (JumpReLU thresholds calibrated on the pilot, matching pursuit steered)
    and, per SAE, the sparsity knob that was set to reach its target.

    With a pilot every architecture starts from ``cfg.seed``; without one (``pilot_rows=0``)
    they draw in turn from the seeded stream, as SAELens's runner would build them, and the
    decoder bias is left to :func:`start_at_training_mean`.
    """
    from sae_lens.registry import get_sae_training_class

    saes, knobs = {}, {}
    for name, arch, target in cfg.runs():
        sae_cfg = sae_cfgs[name]
        if scaled_pilot is not None:
            torch.manual_seed(cfg.seed)
        if arch == "matching_pursuit":
            saes[name] = L0SteeredMatchingPursuit(sae_cfg, target_l0=target)
            knobs[name] = {
                "max_iterations": sae_cfg.max_iterations,
                "initial_residual_threshold": sae_cfg.residual_threshold,
            }
        else:
            saes[name] = get_sae_training_class(arch)[0](sae_cfg)
            knobs[name] = {"k": target}
        if scaled_pilot is None:
            continue
        _with_decoder_bias(saes[name], cfg, scaled_pilot)
        if arch == "jumprelu":
            threshold = calibrate_jumprelu_threshold(saes[name], scaled_pilot, target)
            knobs[name] = {"sparsity_loss": "quadratic", "initial_threshold": threshold}
    return saes, knobs


def start_at_training_mean(
    saes: dict[str, Any], model: Any, hook_name: str, text: Any, label: str, rows: int = 32
) -> None:
    """Without a pilot: every SAE's decoder bias at the mean activation of the first ``rows``
    training rows, special tokens left out (the training stream drops them too)."""
    if not isinstance(text, TokenCorpus):
        raise ValueError(
            "--b-dec-init mean needs the local corpus (its pre-tokenised rows), not --dataset"
        )
    from sae_lens.util import get_special_token_ids

    ids = torch.tensor(text.train[:rows]["tokens"])
    # The tokens SAELens's runner drops from the stream (exclude_special_tokens=True), as the
    # pilot does: the tokenizer's all_special_ids would also drop chat-template tokens.
    mean = activation_mean(
        model, hook_name, ids.split(8), exclude_token_ids=get_special_token_ids(model.tokenizer)
    )
    print(
        f"[{label}] decoder bias starts at the mean of {mean.tokens:,} training tokens", flush=True
    )
    start_decoder_bias_at_mean(saes, mean)
