"""Building the SAELens SoftSAE from a paper checkpoint: the folding of ``norm_factor`` and
``shift_factor`` into raw-unit weights, and the in-memory and on-disk entry points.

:func:`convert_paper_state_dict` turns a validated state dict (see
:mod:`softsae_lens.convert.paper_format`) into a :class:`~softsae_lens.SoftSAE` that takes and
returns raw activations, with the maths in :mod:`softsae_lens.convert`'s docstring;
:func:`load_paper_checkpoint` reads the files first; :func:`convert_paper_checkpoint` also writes
a SAELens SAE folder.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.saes.sae import SAEMetadata

from softsae_lens.convert.paper_format import (
    CORE_KEYS,
    EXPECTED_LAYOUT,
    K_ESTIMATOR_KEYS,
    HookNameError,
    PaperCheckpointError,
    buffer_entry,
    checkpoint_file,
    find_paper_config,
    paper_hook_name,
    read_paper_config,
    read_paper_state_dict,
    scalar_buffer,
    trainer_entry,
    validate_state_dict,
)
from softsae_lens.soft_sae import SoftSAE, SoftSAEConfig

__all__ = [
    "DTYPES",
    "PAPER_CLIP",
    "PAPER_LLM",
    "convert_paper_checkpoint",
    "convert_paper_state_dict",
    "fold_paper_weights",
    "load_paper_checkpoint",
]

PAPER_LLM = "paper-softsae-llm"
PAPER_CLIP = "paper-softsae-clip"
DTYPES = ("float32", "float64", "bfloat16", "float16")


def fold_paper_weights(
    sd: Mapping[str, torch.Tensor], norm_factor: float, shift_factor: torch.Tensor
) -> dict[str, torch.Tensor]:
    """SoftSAE parameters (float64) that take raw inputs, from the paper's normalised-unit ones.

    With ``nf = norm_factor`` and ``b_dec_raw = nf * b_dec + shift_factor``,
    ``x_n - b_dec = (x - b_dec_raw) / nf``: the encoder and the k-estimator's first layer are
    divided by ``nf``, the decoder multiplied by it (see :mod:`softsae_lens.convert`).
    """
    nf = norm_factor
    weights = {name: sd[name].to(torch.float64) for name in (*CORE_KEYS, *K_ESTIMATOR_KEYS)}
    b_dec_raw = nf * weights["b_dec"] + shift_factor
    return {
        "W_enc": weights["encoder.weight"].T / nf,
        "b_enc": weights["encoder.bias"],
        "W_dec": weights["decoder.weight"].T * nf,
        "b_dec": b_dec_raw,
        "W_k_in": weights["k_estimator.0.weight"].T / nf,
        "b_k_in": weights["k_estimator.0.bias"],
        "W_k_out": weights["k_estimator.2.weight"][0],
        "b_k_out": weights["k_estimator.2.bias"].reshape(1),
    }


def _variant(sd: Mapping[str, torch.Tensor], trainer: Mapping[str, Any]) -> str:
    """``paper-softsae-clip`` for ``SoftTopKSAE``, ``paper-softsae-llm`` for ``SoftSAE``; the
    ``shift_factor`` buffer decides when the config names no class. (Only the label and the
    hook-name fallback depend on it: a ``shift_factor`` present is always folded.)"""
    dict_class = trainer.get("dict_class")
    if dict_class == "SoftTopKSAE":
        return PAPER_CLIP
    if dict_class == "SoftSAE":
        return PAPER_LLM
    if dict_class is not None:
        warnings.warn(
            f"config.json dict_class is {dict_class!r}, not the paper's SoftSAE or SoftTopKSAE; "
            "converting with the paper's SoftSAE maths (see softsae_lens.convert's docstring)",
            stacklevel=3,
        )
    return PAPER_CLIP if "shift_factor" in sd else PAPER_LLM


def convert_paper_state_dict(
    state_dict: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    source_path: str | Path | None = None,
    config_path: str | Path | None = None,
) -> SoftSAE:
    """A SAELens :class:`~softsae_lens.SoftSAE` equivalent to a paper state dict, on raw inputs.

    Args:
        state_dict: the paper's ``ae.pt`` contents (see the module docstring for the layout).
            The CLIP variant is recognised by its ``shift_factor`` buffer.
        config: the paper's ``config.json`` contents (``{"trainer": {...}, ...}``), if any;
            supplies the model name, the hook name (:func:`paper_hook_name`), ``k`` when the
            state dict has no ``k`` buffer, and provenance.
        hook_name: the hook the SAE reads; overrides the config. Required when the config does
            not determine it, except for the CLIP variant whose ``submodule_name`` (no
            TransformerLens model to map to) is then used as is.
        model_name: overrides the config's ``lm_name``.
        dtype: dtype of the converted weights (the folding is computed in float64).
        device: device of the converted SAE.
        source_path, config_path: recorded in ``cfg.metadata.source``.

    ``k`` comes from the ``k`` buffer (the final, annealed k; the config's ``k`` was written
    before training), ``k_max`` from the ``k_max`` buffer or, when absent, ``2 * k`` (the
    paper's default). ``k_rounding="floor"`` and ``rescale_acts_by_decoder_norm=False``.
    """
    if dtype not in DTYPES:
        raise PaperCheckpointError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    sd, ignored = validate_state_dict(state_dict)
    trainer = trainer_entry(config)
    buffer = buffer_entry(config)
    d_sae, d_in = sd["encoder.weight"].shape
    width = sd["k_estimator.0.weight"].shape[0]
    variant = _variant(sd, trainer)
    if ignored:
        warnings.warn(
            f"ignoring state dict entries that are not part of a paper SoftSAE: {', '.join(ignored)}",
            stacklevel=2,
        )

    for key, actual in (("activation_dim", d_in), ("dict_size", d_sae)):
        if trainer.get(key) is not None and trainer[key] != actual:
            raise PaperCheckpointError(
                f"config.json says {key}={trainer[key]!r} but the state dict has {actual} "
                "(is the config from another run?)"
            )

    # k, k_max
    k_value = scalar_buffer(sd, "k")
    k_from = "checkpoint buffer k"
    if k_value is None:
        if trainer.get("k") is None:
            raise PaperCheckpointError(
                "no k: the state dict has no 'k' buffer and the config gives no trainer k; "
                + EXPECTED_LAYOUT
            )
        k_value, k_from = float(trainer["k"]), "config.json trainer k"
    if not math.isfinite(k_value) or k_value != int(k_value) or k_value <= 0:
        raise PaperCheckpointError(f"k must be a positive integer, got k={k_value!r} ({k_from})")
    k = int(k_value)
    k_max = scalar_buffer(sd, "k_max")
    k_max_from = "checkpoint buffer k_max"
    if k_max is None:
        k_max, k_max_from = float(2 * k), "2 * k (no k_max buffer; the paper's default)"

    # normalisation
    nf = scalar_buffer(sd, "norm_factor")
    nf_from = "checkpoint buffer norm_factor"
    if nf is None:
        nf, nf_from = 1.0, "1.0 (no norm_factor buffer)"
    if not math.isfinite(nf) or nf <= 0:
        raise PaperCheckpointError(f"norm_factor must be positive and finite, got {nf!r}")
    f64 = torch.float64
    shift = torch.zeros(d_in, dtype=f64)
    if "shift_factor" in sd:
        shift = sd["shift_factor"].to(f64).reshape(-1).expand(d_in).clone()

    # hook and model names
    if hook_name is not None:
        hook_from = "given explicitly"
    else:
        try:
            hook_name = paper_hook_name(config)
            hook_from = f"config.json submodule_name {trainer.get('submodule_name')!r}"
        except HookNameError:
            submodule = trainer.get("submodule_name")
            if variant != PAPER_CLIP or not isinstance(submodule, str) or not submodule:
                raise
            hook_name = submodule
            hook_from = "config.json submodule_name, as is (CLIP: no TransformerLens model)"
    if model_name is None and trainer.get("lm_name") is not None:
        model_name = str(trainer["lm_name"])

    source = {
        "format": variant,
        "path": str(Path(source_path).resolve()) if source_path is not None else None,
        "config_path": str(Path(config_path).resolve()) if config_path is not None else None,
        "dict_class": trainer.get("dict_class"),
        "trainer_class": trainer.get("trainer_class"),
        "hook_name_from": hook_from,
        "k_from": k_from,
        "k_max_from": k_max_from,
        "norm_factor": nf,
        "norm_factor_from": nf_from,
        "shift_factor": shift.tolist() if "shift_factor" in sd else None,
        "alpha": scalar_buffer(sd, "alpha"),
        "ignored_keys": ignored,
        "folding": (
            "raw-unit SAE: W_enc = encoder.weight.T / norm_factor, W_k_in = "
            "k_estimator.0.weight.T / norm_factor, W_dec = decoder.weight.T * norm_factor, "
            "b_dec = norm_factor * b_dec + shift_factor; feature activations and k_hat as in "
            "the paper; reconstructions in raw units"
        ),
        "trainer_config": trainer or None,
        "buffer_config": buffer or None,
    }
    metadata = SAEMetadata(model_name=model_name, hook_name=hook_name, source=source)
    if isinstance(buffer.get("ctx_len"), int):
        metadata.context_size = buffer["ctx_len"]

    try:
        cfg = SoftSAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            k=k,
            k_max=k_max,
            k_rounding="floor",
            k_estimator_width=width,
            rescale_acts_by_decoder_norm=False,
            apply_b_dec_to_input=True,
            dtype=dtype,
            device="meta",
            metadata=metadata,
        )
    except ValueError as e:
        raise PaperCheckpointError(
            f"the paper checkpoint's k={k} ({k_from}), k_max={k_max:g} ({k_max_from}) with "
            f"d_sae={d_sae} cannot be represented: SoftSAE needs 1 <= k <= k_max <= d_sae ({e})"
        ) from e

    folded = fold_paper_weights(sd, nf, shift)
    torch_dtype = getattr(torch, dtype)
    sae = SoftSAE(cfg)  # built on the meta device, like SAE.load_from_disk
    sae.cfg.device = device
    state = {
        name: t.to(device=device, dtype=torch_dtype).contiguous() for name, t in folded.items()
    }
    sae.process_state_dict_for_loading(state)  # the paper's SAEs have no k_scale: it is 1
    sae.load_state_dict(state, assign=True)
    sae.to(device=device, dtype=torch_dtype)
    sae.eval()
    return sae


def load_paper_checkpoint(
    path: str | Path,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    config_path: str | Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    unsafe_pickle: bool = False,
) -> SoftSAE:
    """Read a paper ``ae.pt`` (file or folder) and its ``config.json`` into a SoftSAE.

    ``config_path`` defaults to :func:`find_paper_config`; the other arguments are those of
    :func:`convert_paper_state_dict` and :func:`read_paper_state_dict`. Nothing is written.
    """
    ckpt = checkpoint_file(path)
    state_dict = read_paper_state_dict(ckpt, unsafe_pickle=unsafe_pickle)
    config_path = find_paper_config(ckpt) if config_path is None else Path(config_path)
    config = read_paper_config(config_path) if config_path is not None else None
    return convert_paper_state_dict(
        state_dict,
        config,
        hook_name=hook_name,
        model_name=model_name,
        dtype=dtype,
        device=device,
        source_path=ckpt,
        config_path=config_path,
    )


def convert_paper_checkpoint(
    path: str | Path,
    out_dir: str | Path,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    config_path: str | Path | None = None,
    dtype: str = "float32",
    unsafe_pickle: bool = False,
    overwrite: bool = False,
) -> SoftSAE:
    """Convert a paper checkpoint and write a SAELens SAE folder (``cfg.json`` and
    ``sae_weights.safetensors``) that ``sae_lens.SAE.load_from_disk(out_dir)`` loads once
    ``softsae_lens`` is imported. Refuses to replace an existing SAE there unless
    ``overwrite``. Returns the converted SAE."""
    out_dir = Path(out_dir)
    blocking = next((p for p in (out_dir, *out_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise PaperCheckpointError(
            f"out_dir {out_dir} cannot be a folder: {blocking} is an existing file; pass a "
            "folder path (it is created if missing)"
        )
    existing = [n for n in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME) if (out_dir / n).exists()]
    if existing and not overwrite:
        raise PaperCheckpointError(
            f"{out_dir} already holds {', '.join(existing)}; pass overwrite=True (CLI: --overwrite)"
        )
    sae = load_paper_checkpoint(
        path,
        hook_name=hook_name,
        model_name=model_name,
        config_path=config_path,
        dtype=dtype,
        device="cpu",
        unsafe_pickle=unsafe_pickle,
    )
    sae.save_model(out_dir)
    return sae
