"""Bring SoftSAE checkpoints trained with the paper's own code into SAELens.

The paper's code (a fork of ``dictionary_learning``) saves a ``torch.save``d state dict ``ae.pt``
and, beside it, a ``config.json`` whose ``trainer`` entry describes the run. Two variants:

- LLM (``SoftSAE``): ``x_n = x / norm_factor``; ``pre = relu(W_enc (x_n - b_dec) + b_enc)``;
  ``k_hat = clamp(sigmoid(MLP(x_n - b_dec)) * k_max, 1, dict_size)``; hard top-``floor(k_hat)``
  per row; ``x_hat = W_dec f + b_dec``, returned in normalised units (``x_hat ~ x / norm_factor``).
- CLIP (``SoftTopKSAE``): the same, plus a ``shift_factor`` buffer: ``x_n = (x - shift_factor) /
  norm_factor``, and outputs denormalised back to raw units.

State dict keys (PyTorch ``Linear`` layout, ``weight`` is ``[out, in]``): ``encoder.weight``
``[d_sae, d_in]``, ``encoder.bias`` ``[d_sae]``, ``decoder.weight`` ``[d_in, d_sae]``, ``b_dec``
``[d_in]``, ``k_estimator.0.weight`` ``[d_sae, d_in]``, ``k_estimator.0.bias`` ``[d_sae]``,
``k_estimator.2.weight`` ``[1, d_sae]``, ``k_estimator.2.bias`` ``[1]``, scalar buffers ``k``,
``k_max``, ``alpha``, ``norm_factor`` and (CLIP) ``shift_factor`` (``[d_in]`` or a scalar).

The converted :class:`~softsae_lens.SoftSAE` takes and returns raw activations: with
``nf = norm_factor``, ``sf = shift_factor`` (0 for the LLM variant) and
``b_dec_raw = nf * b_dec + sf`` we have ``x_n - b_dec = (x - b_dec_raw) / nf``, so

    W_enc = encoder.weight.T / nf        b_enc = encoder.bias
    W_k_in = k_estimator.0.weight.T / nf  b_k_in = k_estimator.0.bias
    W_k_out = k_estimator.2.weight[0]     b_k_out = k_estimator.2.bias
    W_dec = decoder.weight.T * nf         b_dec = b_dec_raw

(the decoder gives ``nf * x_hat_n + sf``, the reconstruction in raw units). Feature activations
and ``k_hat`` are exactly the paper's; the reconstruction equals the CLIP variant's output and
``norm_factor`` times the LLM variant's (which is in normalised units). ``k_rounding="floor"``
reproduces the paper's selection: the paper keeps the top ``floor(clamp(k_hat, 1, d_sae))``
entries; SoftSAE keeps ``clamp(floor(k_hat), 1, floor(k_max))``, the same number because
``k_hat <= k_max <= d_sae``. Note that ``SoftSAE.predict_k`` returns the unclamped
``k_max * sigmoid(...)``: the paper's ``k_hat`` is ``clamp(predict_k(x), 1, d_sae)``.

Python::

    from softsae_lens.convert import convert_paper_checkpoint, load_paper_checkpoint
    sae = load_paper_checkpoint("run/trainer_0/ae.pt")  # in memory, no files written
    convert_paper_checkpoint("run/trainer_0/ae.pt", "saes/softsae-l12")  # writes a SAELens dir

Command line::

    python -m softsae_lens.convert run/trainer_0/ae.pt saes/softsae-l12 [--hook-name ...]
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.saes.sae import SAEMetadata
from torch import nn

from softsae_lens.soft_sae import SoftSAE, SoftSAEConfig

PAPER_LLM = "paper-softsae-llm"
PAPER_CLIP = "paper-softsae-clip"
CHECKPOINT_FILENAME = "ae.pt"
CONFIG_FILENAME = "config.json"
DTYPES = ("float32", "float64", "bfloat16", "float16")

_CORE_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec")
_K_ESTIMATOR_KEYS = (
    "k_estimator.0.weight",
    "k_estimator.0.bias",
    "k_estimator.2.weight",
    "k_estimator.2.bias",
)
_SCALAR_KEYS = ("k", "k_max", "alpha", "norm_factor")
_KNOWN_KEYS = frozenset(_CORE_KEYS + _K_ESTIMATOR_KEYS + _SCALAR_KEYS + ("shift_factor",))

_EXPECTED_LAYOUT = (
    "a paper SoftSAE state dict holds encoder.weight [d_sae, d_in], encoder.bias [d_sae], "
    "decoder.weight [d_in, d_sae], b_dec [d_in], k_estimator.0.weight [d_sae, d_in], "
    "k_estimator.0.bias [d_sae], k_estimator.2.weight [1, d_sae], k_estimator.2.bias [1], "
    "scalar buffers k, k_max, alpha, norm_factor, and (CLIP variant) shift_factor [d_in]"
)

# dictionary_learning-style names: "resid_post_layer_12", "mlp_out_layer_3", ...
_NAMED_SUBMODULE = re.compile(r"^(resid_pre|resid_post|mlp_out|attn_out)_layer_(\d+)$")
# A whole decoder layer as a module path: "model.layers.12", "layers.12", "gpt_neox.layers.3",
# "transformer.h.5". Its output is the residual stream after the block.
_LAYER_MODULE = re.compile(
    r"^(?:(?:model|language_model|gpt_neox|transformer)\.)*(?:layers|h)\.(\d+)$"
)


class PaperCheckpointError(ValueError):
    """A paper checkpoint that cannot be converted; the message says what was expected."""


class HookNameError(PaperCheckpointError):
    """The TransformerLens hook name cannot be read unambiguously from the paper's config."""


# --------------------------------------------------------------------------------------------
# Reading the paper's files


def read_paper_state_dict(path: str | Path, *, unsafe_pickle: bool = False) -> dict[str, Any]:
    """Load ``ae.pt`` (a file, or a folder holding ``ae.pt``) onto the CPU.

    Tries ``torch.load(..., weights_only=True)`` (plain tensors, the paper's format). A file
    that needs arbitrary unpickling (e.g. a whole ``torch.save``d module) is only loaded with
    ``unsafe_pickle=True``, which runs its pickled code: use it only for files you trust.
    """
    path = _checkpoint_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        # weights_only refuses both pickled objects ("Unsupported global: ...", older torch:
        # "Unsupported class ...") and files that are not pickles at all; only the former can
        # be read by unpickling.
        if not re.search(r"unsupported (global|class)", reason, re.IGNORECASE):
            raise PaperCheckpointError(
                f"could not read {path} as a torch checkpoint: {reason}"
            ) from e
        if not unsafe_pickle:
            raise PaperCheckpointError(
                f"{path} is not a plain state dict of tensors (torch.load with weights_only=True "
                "refused it; perhaps a whole pickled module). If you trust the file, pass "
                "unsafe_pickle=True (CLI: --unsafe-pickle), which runs its pickled code. "
                f"torch said: {reason}"
            ) from e
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise PaperCheckpointError(f"could not read {path} as a torch checkpoint: {e}") from e
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if not isinstance(loaded, Mapping):
        raise PaperCheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict; {_EXPECTED_LAYOUT}"
        )
    return dict(loaded)


def find_paper_config(checkpoint: str | Path) -> Path | None:
    """The ``config.json`` for a checkpoint: beside ``ae.pt``, or for a dictionary_learning
    intermediate checkpoint (``<run>/checkpoints/ae_<step>.pt``) in ``<run>``; None if absent."""
    ckpt = _checkpoint_file(checkpoint)
    candidates = [ckpt.parent / CONFIG_FILENAME]
    if ckpt.parent.name == "checkpoints":
        candidates.append(ckpt.parent.parent / CONFIG_FILENAME)
    return next((c for c in candidates if c.is_file()), None)


def read_paper_config(path: str | Path) -> dict[str, Any]:
    """Read a paper ``config.json`` (``{"trainer": {...}, "buffer": {...}}``)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PaperCheckpointError(f"could not read the paper config {path}: {e}") from e
    if not isinstance(config, dict):
        raise PaperCheckpointError(f"{path} should hold a JSON object, got {type(config).__name__}")
    return config


def _checkpoint_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILENAME
    if not path.is_file():
        raise PaperCheckpointError(
            f"no checkpoint at {path} (expected the paper's {CHECKPOINT_FILENAME} or its folder)"
        )
    return path


def _trainer_entry(config: Mapping[str, Any] | None) -> dict[str, Any]:
    if not config:
        return {}
    trainer = config.get("trainer", config)
    return dict(trainer) if isinstance(trainer, Mapping) else {}


def _buffer_entry(config: Mapping[str, Any] | None) -> dict[str, Any]:
    buffer = (config or {}).get("buffer")
    return dict(buffer) if isinstance(buffer, Mapping) else {}


# --------------------------------------------------------------------------------------------
# Hook names


def paper_hook_name(config: Mapping[str, Any] | None) -> str:
    """The TransformerLens hook name for a paper run's ``submodule_name`` / ``layer``.

    ``resid_pre|resid_post|mlp_out|attn_out_layer_L`` -> ``blocks.L.hook_<that>``; a whole
    decoder layer (``model.layers.L``, ``layers.L``, ``gpt_neox.layers.L``,
    ``transformer.h.L``) -> ``blocks.L.hook_resid_post`` (``hook_resid_pre`` when the
    activation buffer read the layer's input, ``"io": "in"``). ``layer``, when given, must agree
    with ``L``. Anything else (a sub-module such as ``model.layers.L.mlp``, whose output is not
    a TransformerLens hook on every model, or no ``submodule_name``) raises
    :class:`HookNameError`: pass the hook name yourself.
    """
    trainer = _trainer_entry(config)
    buffer = _buffer_entry(config)
    submodule = trainer.get("submodule_name")
    layer = trainer.get("layer")
    io = buffer.get("io")
    found = f"submodule_name={submodule!r}, layer={layer!r}" + (f", buffer io={io!r}" if io else "")

    def fail(why: str) -> HookNameError:
        example = (
            f"blocks.{layer}.hook_resid_post"
            if isinstance(layer, int)
            else "blocks.12.hook_resid_post"
        )
        return HookNameError(
            f"cannot tell the TransformerLens hook name from the paper config ({found}): {why}. "
            f"Pass it explicitly: --hook-name / hook_name=..., e.g. {example!r}."
        )

    if config is None:
        raise HookNameError(
            "no config.json beside the checkpoint, so the hook the SAE was trained on is "
            "unknown. Pass it explicitly: --hook-name / hook_name=..., e.g. 'blocks.12.hook_resid_post'."
        )
    if not isinstance(submodule, str) or not submodule:
        raise fail("the config names no submodule")

    if match := _NAMED_SUBMODULE.match(submodule):
        kind, number = match.group(1), int(match.group(2))
    elif match := _LAYER_MODULE.match(submodule):
        number = int(match.group(1))
        if io in (None, "out"):
            kind = "resid_post"
        elif io == "in":
            kind = "resid_pre"
        else:
            raise fail(f"a whole layer read with io={io!r} is not one hook")
    else:
        raise fail(
            "known forms are resid_pre/resid_post/mlp_out/attn_out_layer_<L> and whole "
            "decoder layers such as model.layers.<L>"
        )
    if layer is not None and layer != number:
        raise fail(f"submodule_name says layer {number} but layer is {layer!r}")
    return f"blocks.{number}.hook_{kind}"


# --------------------------------------------------------------------------------------------
# Validation and conversion


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value)
    raise PaperCheckpointError(
        f"state dict entry {name!r} is a {type(value).__name__}, expected a tensor; {_EXPECTED_LAYOUT}"
    )


def _scalar(sd: Mapping[str, torch.Tensor], name: str) -> float | None:
    if name not in sd:
        return None
    value = sd[name]
    if value.numel() != 1:
        raise PaperCheckpointError(
            f"{name} has shape {list(value.shape)}, expected a scalar buffer; {_EXPECTED_LAYOUT}"
        )
    return float(value.reshape(()).item())


def _validate(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors by name (checked against the paper layout) and the names of ignored entries."""
    if not isinstance(state_dict, Mapping):
        raise PaperCheckpointError(
            f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    keys = set(state_dict)
    found = ", ".join(sorted(map(str, keys))) or "nothing"
    missing_core = [k for k in _CORE_KEYS if k not in keys]
    if missing_core:
        raise PaperCheckpointError(
            f"not a paper SoftSAE checkpoint: missing {', '.join(missing_core)}; "
            f"{_EXPECTED_LAYOUT}. Found: {found}"
        )
    missing_k = [k for k in _K_ESTIMATOR_KEYS if k not in keys]
    if missing_k:
        raise PaperCheckpointError(
            f"not a SoftSAE checkpoint: missing the k-estimator ({', '.join(missing_k)}); a "
            "SoftSAE predicts k per input with k_estimator = Sequential(Linear(d_in, d_sae), ReLU, "
            "Linear(d_sae, 1), Sigmoid). Without it this looks like a plain (Batch)TopK SAE, "
            f"which SAELens loads as architecture 'topk'. Found: {found}"
        )
    extra_k = sorted(k for k in keys if str(k).startswith("k_estimator.") and k not in _KNOWN_KEYS)
    if extra_k:
        raise PaperCheckpointError(
            f"unexpected k-estimator parameters {', '.join(extra_k)}: the paper's k-estimator is "
            "Linear (k_estimator.0), ReLU, Linear (k_estimator.2), Sigmoid, and a different "
            "estimator cannot be reproduced"
        )
    sd = {k: _as_tensor(k, v) for k, v in state_dict.items() if k in _KNOWN_KEYS}
    ignored = sorted(str(k) for k in keys - _KNOWN_KEYS)

    enc = sd["encoder.weight"]
    if enc.ndim != 2:
        raise PaperCheckpointError(
            f"encoder.weight has shape {list(enc.shape)}, expected [d_sae, d_in]; {_EXPECTED_LAYOUT}"
        )
    d_sae, d_in = enc.shape
    k0 = sd["k_estimator.0.weight"]
    width = k0.shape[0] if k0.ndim == 2 else d_sae
    expected = {
        "encoder.bias": [d_sae],
        "decoder.weight": [d_in, d_sae],
        "b_dec": [d_in],
        "k_estimator.0.weight": [width, d_in],
        "k_estimator.0.bias": [width],
        "k_estimator.2.weight": [1, width],
        "k_estimator.2.bias": [1],
    }
    wrong = [
        f"{name} has shape {list(sd[name].shape)}, expected {shape}"
        for name, shape in expected.items()
        if list(sd[name].shape) != shape
    ]
    if "shift_factor" in sd and sd["shift_factor"].numel() not in (1, d_in):
        wrong.append(
            f"shift_factor has shape {list(sd['shift_factor'].shape)}, expected [{d_in}] or a scalar"
        )
    if wrong:
        raise PaperCheckpointError(
            f"wrong shapes for a paper SoftSAE with d_in={d_in}, d_sae={d_sae} (read from "
            f"encoder.weight [d_sae, d_in] = {list(enc.shape)}): " + "; ".join(wrong)
        )
    for name in (*_CORE_KEYS, *_K_ESTIMATOR_KEYS, "shift_factor"):
        if name in sd:
            if not sd[name].is_floating_point():
                raise PaperCheckpointError(f"{name} has dtype {sd[name].dtype}, expected floats")
            if not torch.isfinite(sd[name]).all():
                raise PaperCheckpointError(f"{name} holds NaN or infinite values")
    return sd, ignored


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
    sd, ignored = _validate(state_dict)
    trainer = _trainer_entry(config)
    buffer = _buffer_entry(config)
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
    k_value = _scalar(sd, "k")
    k_from = "checkpoint buffer k"
    if k_value is None:
        if trainer.get("k") is None:
            raise PaperCheckpointError(
                "no k: the state dict has no 'k' buffer and the config gives no trainer k; "
                + _EXPECTED_LAYOUT
            )
        k_value, k_from = float(trainer["k"]), "config.json trainer k"
    if not math.isfinite(k_value) or k_value != int(k_value) or k_value <= 0:
        raise PaperCheckpointError(f"k must be a positive integer, got k={k_value!r} ({k_from})")
    k = int(k_value)
    k_max = _scalar(sd, "k_max")
    k_max_from = "checkpoint buffer k_max"
    if k_max is None:
        k_max, k_max_from = float(2 * k), "2 * k (no k_max buffer; the paper's default)"

    # normalisation
    nf = _scalar(sd, "norm_factor")
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
        "alpha": _scalar(sd, "alpha"),
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

    weights = {name: sd[name].to(f64) for name in (*_CORE_KEYS, *_K_ESTIMATOR_KEYS)}
    b_dec_raw = nf * weights["b_dec"] + shift
    folded = {
        "W_enc": weights["encoder.weight"].T / nf,
        "b_enc": weights["encoder.bias"],
        "W_dec": weights["decoder.weight"].T * nf,
        "b_dec": b_dec_raw,
        "W_k_in": weights["k_estimator.0.weight"].T / nf,
        "b_k_in": weights["k_estimator.0.bias"],
        "W_k_out": weights["k_estimator.2.weight"][0],
        "b_k_out": weights["k_estimator.2.bias"].reshape(1),
    }
    torch_dtype = getattr(torch, dtype)
    sae = SoftSAE(cfg)  # built on the meta device, like SAE.load_from_disk
    sae.cfg.device = device
    sae.load_state_dict(
        {name: t.to(device=device, dtype=torch_dtype).contiguous() for name, t in folded.items()},
        assign=True,
    )
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
    ckpt = _checkpoint_file(path)
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


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m softsae_lens.convert",
        description=(
            "Convert a SoftSAE checkpoint trained with the paper's code (dictionary_learning "
            "fork: ae.pt plus config.json; LLM SoftSAE or CLIP SoftTopKSAE) into a SAELens SAE "
            "folder (architecture 'soft', k_rounding='floor') that takes and returns raw "
            "activations. Load it with: import softsae_lens; "
            "sae_lens.SAE.load_from_disk(OUT_DIR)."
        ),
    )
    parser.add_argument("checkpoint", help="the paper's ae.pt, or the folder holding it")
    parser.add_argument("out_dir", help="folder to write cfg.json and sae_weights.safetensors to")
    parser.add_argument(
        "--hook-name",
        help="TransformerLens hook the SAE reads, e.g. blocks.12.hook_resid_post "
        "(default: from config.json's submodule_name/layer when unambiguous)",
    )
    parser.add_argument("--model-name", help="model name for the metadata (default: lm_name)")
    parser.add_argument(
        "--config", help="the run's config.json (default: beside the checkpoint)", type=Path
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="default: float32")
    parser.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="allow a checkpoint that is not a plain state dict (runs pickled code: trusted files only)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an SAE in OUT_DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0, or 2 with a message on stderr)."""
    args = _parser().parse_args(argv)
    try:
        sae = convert_paper_checkpoint(
            args.checkpoint,
            args.out_dir,
            hook_name=args.hook_name,
            model_name=args.model_name,
            config_path=args.config,
            dtype=args.dtype,
            unsafe_pickle=args.unsafe_pickle,
            overwrite=args.overwrite,
        )
    except PaperCheckpointError as e:
        print(f"python -m softsae_lens.convert: error: {e}", file=sys.stderr)
        return 2
    cfg = sae.cfg
    source = cfg.metadata.source
    out = Path(args.out_dir).resolve()
    print(f"Wrote SAELens SoftSAE (architecture 'soft') to {out}")
    print(
        f"{source['format']}: d_in={cfg.d_in} d_sae={cfg.d_sae} k={cfg.k} k_max={cfg.k_max:g} "
        f"k_rounding={cfg.k_rounding} dtype={cfg.dtype} model={cfg.metadata.model_name} "
        f"hook={cfg.metadata.hook_name} norm_factor={source['norm_factor']:g} folded"
        + (" shift_factor folded" if source["shift_factor"] is not None else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
