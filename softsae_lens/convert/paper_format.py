"""The paper's checkpoint files: reading ``ae.pt`` and ``config.json``, validating the state dict
against the paper's layout, and the TransformerLens hook name its config implies.

The paper's code (a fork of ``dictionary_learning``) saves a ``torch.save``d state dict ``ae.pt``
and, beside it, a ``config.json`` whose ``trainer`` entry describes the run (``buffer`` describes
the activations). State dict keys (PyTorch ``Linear`` layout, ``weight`` is ``[out, in]``):
``encoder.weight`` ``[d_sae, d_in]``, ``encoder.bias`` ``[d_sae]``, ``decoder.weight``
``[d_in, d_sae]``, ``b_dec`` ``[d_in]``, ``k_estimator.0.weight`` ``[d_sae, d_in]``,
``k_estimator.0.bias`` ``[d_sae]``, ``k_estimator.2.weight`` ``[1, d_sae]``,
``k_estimator.2.bias`` ``[1]``, scalar buffers ``k``, ``k_max``, ``alpha``, ``norm_factor`` and
(CLIP variant) ``shift_factor`` (``[d_in]`` or a scalar).

Every problem raises :class:`PaperCheckpointError` (or :class:`HookNameError`) with a message
naming what was found and what was expected.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_FILENAME",
    "CONFIG_FILENAME",
    "CORE_KEYS",
    "EXPECTED_LAYOUT",
    "K_ESTIMATOR_KEYS",
    "HookNameError",
    "PaperCheckpointError",
    "buffer_entry",
    "checkpoint_file",
    "find_paper_config",
    "paper_hook_name",
    "read_paper_config",
    "read_paper_state_dict",
    "scalar_buffer",
    "trainer_entry",
    "validate_state_dict",
]

CHECKPOINT_FILENAME = "ae.pt"
CONFIG_FILENAME = "config.json"

CORE_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec")
K_ESTIMATOR_KEYS = (
    "k_estimator.0.weight",
    "k_estimator.0.bias",
    "k_estimator.2.weight",
    "k_estimator.2.bias",
)
_SCALAR_KEYS = ("k", "k_max", "alpha", "norm_factor")
_KNOWN_KEYS = frozenset(CORE_KEYS + K_ESTIMATOR_KEYS + _SCALAR_KEYS + ("shift_factor",))

EXPECTED_LAYOUT = (
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
    path = checkpoint_file(path)
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
        empty = path.is_file() and path.stat().st_size == 0
        reason = "the file is empty (0 bytes)" if empty else str(e).strip() or type(e).__name__
        raise PaperCheckpointError(f"could not read {path} as a torch checkpoint: {reason}") from e
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if not isinstance(loaded, Mapping):
        raise PaperCheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict; {EXPECTED_LAYOUT}"
        )
    return dict(loaded)


def find_paper_config(checkpoint: str | Path) -> Path | None:
    """The ``config.json`` for a checkpoint: beside ``ae.pt``, or for a dictionary_learning
    intermediate checkpoint (``<run>/checkpoints/ae_<step>.pt``) in ``<run>``; None if absent."""
    ckpt = checkpoint_file(checkpoint)
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


def checkpoint_file(path: str | Path) -> Path:
    """The ``ae.pt`` a path names: the file itself, or ``ae.pt`` in a folder; an error if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILENAME
    if not path.is_file():
        raise PaperCheckpointError(
            f"no checkpoint at {path} (expected the paper's {CHECKPOINT_FILENAME} or its folder)"
        )
    return path


def trainer_entry(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config's ``trainer`` entry (the config itself when it has none); ``{}`` for no config."""
    if not config:
        return {}
    trainer = config.get("trainer", config)
    return dict(trainer) if isinstance(trainer, Mapping) else {}


def buffer_entry(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config's ``buffer`` entry (how the activations were read); ``{}`` when absent."""
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
    trainer = trainer_entry(config)
    buffer = buffer_entry(config)
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
# Validating the state dict


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value)
    raise PaperCheckpointError(
        f"state dict entry {name!r} is a {type(value).__name__}, expected a tensor; {EXPECTED_LAYOUT}"
    )


def scalar_buffer(sd: Mapping[str, torch.Tensor], name: str) -> float | None:
    """The scalar buffer ``name`` as a float; None if absent, an error if not one element."""
    if name not in sd:
        return None
    value = sd[name]
    if value.numel() != 1:
        raise PaperCheckpointError(
            f"{name} has shape {list(value.shape)}, expected a scalar buffer; {EXPECTED_LAYOUT}"
        )
    return float(value.reshape(()).item())


def validate_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors by name (checked against the paper layout) and the names of ignored entries.

    Checks the keys (the k-estimator's included), shapes against ``encoder.weight``'s
    ``[d_sae, d_in]``, float dtypes and finite values; entries outside the layout are left out
    and named in the second item.
    """
    if not isinstance(state_dict, Mapping):
        raise PaperCheckpointError(
            f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    keys = set(state_dict)
    found = ", ".join(sorted(map(str, keys))) or "nothing"
    missing_core = [k for k in CORE_KEYS if k not in keys]
    if missing_core:
        raise PaperCheckpointError(
            f"not a paper SoftSAE checkpoint: missing {', '.join(missing_core)}; "
            f"{EXPECTED_LAYOUT}. Found: {found}"
        )
    missing_k = [k for k in K_ESTIMATOR_KEYS if k not in keys]
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
            f"encoder.weight has shape {list(enc.shape)}, expected [d_sae, d_in]; {EXPECTED_LAYOUT}"
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
    for name in (*CORE_KEYS, *K_ESTIMATOR_KEYS, "shift_factor"):
        if name in sd:
            if not sd[name].is_floating_point():
                raise PaperCheckpointError(f"{name} has dtype {sd[name].dtype}, expected floats")
            if not torch.isfinite(sd[name]).all():
                raise PaperCheckpointError(f"{name} holds NaN or infinite values")
    return sd, ignored
