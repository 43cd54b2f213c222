"""Local language models as TransformerLens bridges, offline: a GGUF file or a Hugging Face folder.

One path for every local model: :func:`load_bridge` takes a ``.gguf`` file or a folder holding a
Hugging Face causal LM (``config.json``, weights, tokenizer) and returns a
:class:`~softsae_lens.models.bridge.SAEBridge` (SAELens's ``SAETransformerBridge`` whose hooks
survive SAE splices) in eval mode, with TransformerLens hook names. A GGUF file is de-quantised
once into a float32 folder in a cache (:func:`dequantized_folder`: a completion marker and a file
lock make concurrent and interrupted builds safe); later loads read that folder in seconds.

The bridge's ``hook_dict`` holds canonical names (``blocks.5.hook_out``), not TransformerLens
aliases (``blocks.5.hook_resid_post``): pass hook names through :func:`resolve_hook_name` before
giving them to ``run_with_cache``, SAELens's ``ActivationsStore`` / training runner or
``run_evals``.

Example (what the demo, the sweep and ``python -m softsae_lens.analyze --model-path`` do)::

    from softsae_lens.models.local import layer_hook_name, load_bridge, resolve_hook_name

    model = load_bridge("path/to/model.gguf")          # or a Hugging Face model folder
    hook_name = resolve_hook_name(model, layer_hook_name(5))   # "blocks.5.hook_out"
    # Record the path as the runner's model_name: `analyze` then finds the model by itself.

Nothing here reads the network (``local_files_only``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from softsae_lens.cache import cache_root

if TYPE_CHECKING:
    import torch

    from softsae_lens.models.bridge import SAEBridge

__all__ = [
    "dequantize_gguf",
    "dequantized_folder",
    "is_gguf_file",
    "is_hf_folder",
    "layer_hook_name",
    "load_bridge",
    "local_model_path",
    "resolve_hook_name",
]

# Written after everything else: a folder without it (or with a stale one) is rebuilt.
MARKER = "softsae_dequantized.json"
# Bump when the folder's layout or content changes, so old caches are rebuilt.
_FORMAT_VERSION = 1
_ALLOWED = "a .gguf file or a Hugging Face model folder (a folder with config.json)"


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an existing file named ``*.gguf``."""
    path = Path(path).expanduser()
    return path.is_file() and path.suffix.lower() == ".gguf"


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder with a Hugging Face ``config.json``."""
    return (Path(path).expanduser() / "config.json").is_file()


def local_model_path(name: str | os.PathLike[str] | None) -> Path | None:
    """``name`` as a path if it names a local model :func:`load_bridge` can read, else None.

    For model names from SAE metadata: SAELens's runner records whatever it was given as
    ``model_name``, a local folder or file included.
    """
    if not name:
        return None
    path = Path(name).expanduser()
    return path if is_gguf_file(path) or is_hf_folder(path) else None


def _marker_content(gguf_path: Path) -> dict[str, Any]:
    # The GGUF's size identifies a pinned upload well enough to notice a different one.
    return {
        "format_version": _FORMAT_VERSION,
        "source": gguf_path.name,
        "source_bytes": gguf_path.stat().st_size,
    }


def _is_complete(folder: Path, expected: dict[str, Any]) -> bool:
    try:
        found = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return found == expected


def _default_cache_dir(gguf_path: Path) -> Path:
    # One folder per GGUF file: its name plus a digest of where it is and its size.
    slug = re.sub(r"[^a-z0-9]+", "-", gguf_path.stem.lower()).strip("-") or "model"
    source = f"{gguf_path.resolve()}:{gguf_path.stat().st_size}"
    return cache_root() / f"{slug}-{hashlib.sha1(source.encode()).hexdigest()[:10]}"


def dequantize_gguf(gguf_path: Path, folder: Path) -> None:
    """Load ``gguf_path`` with transformers (de-quantising to float32) and save model and
    tokenizer into ``folder`` as an ordinary Hugging Face folder. Reads local files only."""
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


def dequantized_folder(
    gguf_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return a local Hugging Face folder holding the GGUF model ``gguf_path`` in float32.

    The first call de-quantises (:func:`dequantize_gguf`) into ``cache_dir``; later calls find
    the completion marker and return at once without touching the files. Concurrent callers are
    serialised with a file lock; a build that died half-way (no marker, or a stale one) is
    redone. Only local files are read, so it works with ``HF_HUB_OFFLINE=1``.

    Args:
        gguf_path: the ``.gguf`` file.
        cache_dir: folder dedicated to this model; created if missing (default: a folder named
            after the file under :func:`cache_root`).

    Raises:
        ValueError: if ``gguf_path`` is not an existing ``.gguf`` file.
    """
    gguf_path = Path(gguf_path).expanduser()
    if not is_gguf_file(gguf_path):
        raise ValueError(f"gguf_path must be an existing .gguf file, got {str(gguf_path)!r}")
    folder = (
        Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir(gguf_path)
    )
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
        (folder / MARKER).unlink(missing_ok=True)
        dequantize_gguf(gguf_path, folder)
        tmp_marker = folder / (MARKER + ".tmp")
        tmp_marker.write_text(json.dumps(expected, indent=2) + "\n")
        tmp_marker.replace(folder / MARKER)
    return folder


def load_bridge(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> SAEBridge:
    """Boot a local model as an :class:`~softsae_lens.models.bridge.SAEBridge`, in eval mode.

    Args:
        path: a ``.gguf`` file (de-quantised once, see :func:`dequantized_folder`) or a Hugging
            Face model folder (``config.json``, weights and tokenizer), e.g. one written by
            ``save_pretrained``.
        device: torch device for the weights, e.g. ``"cpu"`` or ``"cuda"``.
        dtype: weight dtype (default float32: the bridge keeps raw Hugging Face numerics).
        cache_dir: for a GGUF file, passed to :func:`dequantized_folder`.

    Raises:
        ValueError: naming the path, when it is neither a ``.gguf`` file nor a model folder.
    """
    import torch

    from softsae_lens.models.bridge import SAEBridge

    given = Path(path).expanduser()
    if is_gguf_file(given):
        folder = dequantized_folder(given, cache_dir)
    elif is_hf_folder(given):
        folder = given
    else:
        problem = "does not exist" if not given.exists() else "is not a model"
        raise ValueError(f"model path {str(given)!r} {problem}: expected {_ALLOWED}")
    bridge = SAEBridge.boot_transformers(
        str(folder), device=device, dtype=torch.float32 if dtype is None else dtype
    )
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


def _hf_module_hook(model: Any, module_name: str) -> str | None:
    """The bridge hook on the output of the Hugging Face module ``module_name``, or None.

    SAELens's ``AutoModelForCausalLM`` path (``HookedProxyLM``) names hooks after Hugging Face
    modules (``transformer.h.0``, ``model.layers.5``) and reads each module's output; a bridge
    component records the module it wraps as ``name``, and its ``hook_out`` is that output.
    """
    hooks = getattr(model, "hook_dict", {})
    named = getattr(model, "named_modules", None)
    if not callable(named):
        return None
    for path, module in named():
        if path and getattr(module, "name", None) == module_name and f"{path}.hook_out" in hooks:
            return f"{path}.hook_out"
    return None


def resolve_hook_name(model: Any, hook_name: str) -> str:
    """Return the name under which ``model.hook_dict`` really holds the hook ``hook_name``.

    ``SAETransformerBridge.hook_dict`` drops TransformerLens alias names, so an alias such as
    ``blocks.5.hook_resid_post`` silently matches nothing: ``run_with_cache`` returns an empty
    cache, ``run_with_hooks`` ignores the hook and SAELens's ``ActivationsStore`` fails with a
    ``KeyError``. This maps an alias to its target (``blocks.5.hook_out``) using the bridge's
    own alias table, and a Hugging Face module name (``transformer.h.0``, what SAELens's
    ``AutoModelForCausalLM`` path hooks) to the hook on that module's output
    (``blocks.0.hook_out``). A name already in ``hook_dict`` is returned unchanged, so it is also safe
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
    module_hook = _hf_module_hook(model, hook_name)
    if module_hook is not None:
        return module_hook
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
