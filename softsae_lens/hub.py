"""SAEs in the Hugging Face layout that ``SAE.from_pretrained(repo_id, sae_id)`` reads.

How SAELens 6.54 resolves a repo id that is not one of its named releases
(``pretrained_saes.yaml``): a ``release`` containing "/" is taken as a Hugging Face repo id and
``sae_id`` as a folder in it; the default "sae_lens" loader fetches ``<sae_id>/cfg.json``,
``<sae_id>/sae_weights.safetensors`` and, when present, ``<sae_id>/sparsity.safetensors`` with
``hf_hub_download`` (with ``HF_HUB_OFFLINE=1``, from the local cache
``<HF_HOME>/hub/models--<owner>--<name>/snapshots/<commit>/...`` that ``refs/<revision>``
points to), then builds the class registered for ``cfg["architecture"]``. For ``"soft"`` that
registration comes from softsae_lens (installed, it registers itself when SAELens is imported;
see ``softsae_lens_autoload``).

Holds :func:`save_for_hub` (the repository tree: one folder per SAE in inference format, and a
model card) and :func:`push_to_hub` (that tree through SAELens's own
``upload_saes_to_huggingface``, plus the card).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sae_lens import SAE, TrainingSAE
from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
)

__all__ = ["MODEL_CARD_FILENAME", "SAE_FILES", "model_card", "push_to_hub", "save_for_hub"]

# The files SAELens's upload_saes_to_huggingface sends for each SAE, and from_pretrained reads.
SAE_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, RUNNER_CFG_FILENAME)
MODEL_CARD_FILENAME = "README.md"

SaeRef = SAE[Any] | str | Path


def _check_sae_id(sae_id: Any) -> None:
    if not isinstance(sae_id, str):
        raise ValueError(
            f"sae_id={sae_id!r}: must be a string (a folder name in the repository), "
            f"got {type(sae_id).__name__}"
        )
    parts = sae_id.split("/")
    if not sae_id or "\\" in sae_id or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"sae_id={sae_id!r}: must be a relative folder name in the repository "
            "(e.g. 'blocks.5.hook_resid_post' or 'layer_5/width_16k'), with no empty, '.' or '..' parts"
        )


def _write_one(ref: SaeRef, dest: Path) -> None:
    if isinstance(ref, TrainingSAE):
        # The inference format (decoder norms folded), as SAELens's runner saves its final SAE.
        ref.save_inference_model(dest)
        return
    if isinstance(ref, SAE):
        ref.save_model(dest)
        return
    source = Path(ref)
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (source / name).is_file():
            raise FileNotFoundError(f"{source}: no {name}; pass a folder saved by SAELens")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)


def model_card(repo_id: str, saes: Mapping[str, SAE[Any]]) -> str:
    """A README for the repository: what each SAE is and how to load it."""
    rows = []
    for sae_id, sae in saes.items():
        cfg = sae.cfg
        k = getattr(cfg, "k", None)
        meta = cfg.metadata
        rows.append(
            f"| `{sae_id}` | {cfg.architecture()} | {cfg.d_in} | {cfg.d_sae} | "
            f"{'' if k is None else k} | {meta.model_name or ''} | {meta.hook_name or ''} |"
        )
    first = next(iter(saes))
    soft = any(sae.cfg.architecture() == "soft" for sae in saes.values())
    install = (
        'pip install softsae_lens   # registers SAELens\'s "soft" architecture\n' if soft else ""
    )
    note = (
        '\n`architecture="soft"` is [SoftSAE](https://arxiv.org/abs/2605.06610) (a per-input k '
        "predicted by a small network), provided by the `softsae_lens` package. Installed, it "
        "registers itself whenever SAELens is imported; if loading stops with `KeyError: 'soft'` "
        "(softsae_lens missing, `python -S`, or `SOFTSAE_LENS_AUTOLOAD=0`), install it or run "
        "`import softsae_lens` before loading.\n"
        if soft
        else ""
    )
    return (
        "---\nlibrary_name: saelens\ntags:\n- sparse-autoencoder\n- saelens\n"
        + ("- softsae_lens\n" if soft else "")
        + "---\n\n# Sparse autoencoders for SAELens\n\n"
        "| sae_id | architecture | d_in | d_sae | k | model | hook |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Load one with SAELens:\n\n```python\n"
        + (f"# {install}" if install else "")
        + "from sae_lens import SAE\n\n"
        f'sae = SAE.from_pretrained("{repo_id}", "{first}")\n```\n' + note
    )


def save_for_hub(
    saes: Mapping[str, SaeRef],
    folder: str | Path,
    repo_id: str | None = None,
    card: bool = True,
) -> Path:
    """Write the repository tree ``SAE.from_pretrained(repo_id, sae_id)`` reads into ``folder``.

    Args:
        saes: ``sae_id -> SAE``: a training SAE (saved in inference form, as SAELens's runner
            saves its final SAE), an inference SAE, or a folder saved by SAELens
            (``cfg.json``, ``sae_weights.safetensors``, and ``sparsity.safetensors`` /
            ``runner_cfg.json`` if present). ``sae_id`` becomes the folder in the repository
            and may contain "/".
        folder: where to write; each SAE goes to ``folder/<sae_id>/``, which must not hold
            an SAE yet.
        repo_id: used in the model card's loading example (default ``"<owner>/<name>"``).
        card: write ``README.md`` (a model card saying how to load, and that "soft" needs
            softsae_lens) unless ``folder`` already has one.

    Every written SAE is loaded back with ``SAE.load_from_disk``; one that does not load raises
    ValueError here rather than after publishing. Returns ``folder``.
    """
    if not saes:
        raise ValueError("saes={}: give at least one sae_id -> SAE (or folder)")
    folder = Path(folder)
    for sae_id, ref in saes.items():
        _check_sae_id(sae_id)
        if not isinstance(ref, (SAE, str, Path)):
            raise ValueError(
                f"saes[{sae_id!r}]={type(ref).__name__}: must be an SAE, a TrainingSAE or the "
                "folder of an SAE saved by SAELens"
            )
        if (folder / sae_id).exists() and any((folder / sae_id).iterdir()):
            held = "an SAE" if (folder / sae_id / SAE_CFG_FILENAME).exists() else "files"
            raise FileExistsError(f"sae_id={sae_id!r}: {folder / sae_id} already holds {held}")
    folder.mkdir(parents=True, exist_ok=True)
    # Built beside the destination and moved into place only once every SAE loads back, so a
    # failure leaves nothing behind and a retry is not refused.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".save_for_hub-") as tmp:
        staging = Path(tmp)
        loaded: dict[str, SAE[Any]] = {}
        for sae_id, ref in saes.items():
            dest = staging / sae_id
            _write_one(ref, dest)
            try:
                loaded[sae_id] = SAE.load_from_disk(dest)
            except Exception as err:
                raise ValueError(
                    f"sae_id={sae_id!r}: the SAE does not load with SAE.load_from_disk "
                    f"({type(err).__name__}: {err}); is its architecture's package installed? "
                    "Nothing was written"
                ) from err
        if card and not (folder / MODEL_CARD_FILENAME).exists():
            (staging / MODEL_CARD_FILENAME).write_text(
                model_card(repo_id or "<owner>/<name>", loaded)
            )
            os.replace(staging / MODEL_CARD_FILENAME, folder / MODEL_CARD_FILENAME)
        for sae_id in saes:
            target = folder / sae_id
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rmdir()  # empty (checked above)
            os.replace(staging / sae_id, target)
    return folder


def push_to_hub(
    saes: Mapping[str, SaeRef],
    repo_id: str,
    revision: str = "main",
    private: bool = False,
    card: bool = True,
) -> None:
    """Publish SAEs to the Hugging Face repository ``repo_id`` (needs the network and a token).

    Writes the tree with :func:`save_for_hub`, uploads each SAE with SAELens's own
    ``upload_saes_to_huggingface`` (one commit per SAE, its file list), then the model card if
    the repository has no README yet. ``private=True`` creates the repository as private
    first. Afterwards ``SAE.from_pretrained(repo_id, sae_id)`` loads each one.
    """
    from huggingface_hub import HfApi, constants
    from sae_lens import upload_saes_to_huggingface

    if constants.HF_HUB_OFFLINE:
        raise RuntimeError(
            f"push_to_hub(repo_id={repo_id!r}) needs the Hugging Face hub, but HF_HUB_OFFLINE is set"
        )
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hub(saes, tmp, repo_id=repo_id, card=card)
        api = HfApi()
        if private:
            api.create_repo(repo_id, private=True, exist_ok=True)
        upload_saes_to_huggingface(
            {sae_id: Path(tmp) / sae_id for sae_id in saes},
            hf_repo_id=repo_id,
            hf_revision=revision,
            add_default_readme=False,
        )
        if card and not api.file_exists(repo_id, MODEL_CARD_FILENAME, revision=revision):
            api.upload_file(
                path_or_fileobj=io.BytesIO((Path(tmp) / MODEL_CARD_FILENAME).read_bytes()),
                path_in_repo=MODEL_CARD_FILENAME,
                repo_id=repo_id,
                revision=revision,
                commit_message="Add README.md",
            )
