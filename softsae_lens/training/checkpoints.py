"""Complete and incomplete training checkpoints: a marker written last, and finding the latest.

SAELens's ``SAETrainer`` writes a checkpoint file by file straight into ``<checkpoint_path>/<n>/``
and then calls the runner's ``save_checkpoint_fn``, which adds the runner's own files. A process
killed in between leaves a folder that looks like a checkpoint but is not one. Every runner of
this package therefore ends its ``save_checkpoint_fn`` with :func:`mark_complete`, which writes
:data:`COMPLETE_MARKER` (the name and size of every file in the folder) atomically, last. A folder
without the marker, or whose files no longer match it, is incomplete: :func:`resolve_checkpoint`
refuses it by name, and :func:`latest_complete` skips it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

__all__ = [
    "COMPLETE_MARKER",
    "CheckpointError",
    "is_complete",
    "checkpoint_folders",
    "latest_complete",
    "mark_complete",
    "resolve_checkpoint",
    "write_atomically",
]

COMPLETE_MARKER = "checkpoint_complete.json"
# SAELens names a checkpoint after the samples trained so far (and "final_<n>" at the end).
_NAME = re.compile(r"^(?:final_)?(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, incomplete, or not a checkpoint."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _files(folder: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != COMPLETE_MARKER and not p.name.startswith(".")
    }


def mark_complete(folder: Path | str) -> None:
    """Record that every file of the checkpoint at ``folder`` is written: call it last."""
    folder = Path(folder)
    for name in _files(folder):  # the files' data reach the disk before the marker does
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())
    write_atomically(
        folder / COMPLETE_MARKER, json.dumps({"files": _files(folder)}, indent=1).encode()
    )


def _incomplete_reason(folder: Path) -> str | None:
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"it has no {COMPLETE_MARKER} (the process writing it stopped before the end)"
    try:
        recorded = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"its {COMPLETE_MARKER} is unreadable"
    present = _files(folder)
    for name, size in recorded.items():
        if name not in present:
            return f"{name} is missing"
        if present[name] != size:
            return f"{name} has {present[name]} bytes, {size} were written"
    return None


def is_complete(folder: Path | str) -> bool:
    """Whether ``folder`` holds a checkpoint whose every file was written (see the module doc)."""
    folder = Path(folder)
    return folder.is_dir() and _incomplete_reason(folder) is None


def _holds_checkpoints(folder: Path) -> bool:
    """A folder of checkpoints (or of run ids): it has sub-folders and no files of its own."""
    entries = list(folder.iterdir())
    return any(e.is_dir() for e in entries) and not any(e.is_file() for e in entries)


def checkpoint_folders(root: Path) -> list[tuple[int, Path]]:
    """``(samples, folder)`` of the folders named like SAELens checkpoints under ``root`` and one
    level deeper (SAELens's runner adds a run id), complete or not."""
    found: list[tuple[int, Path]] = []
    if not root.is_dir():
        return found
    for child in (p for p in root.iterdir() if p.is_dir()):
        match = _NAME.match(child.name)
        if match and not _holds_checkpoints(child):
            found.append((int(match.group(1)), child))
            continue
        for p in (q for q in child.iterdir() if q.is_dir()):
            match = _NAME.match(p.name)
            if match:
                found.append((int(match.group(1)), p))
    return found


def latest_complete(root: Path | str) -> Path | None:
    """The complete checkpoint under ``root`` with the most samples trained (incomplete ones are
    skipped; the newest wins a tie), or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    complete = [(n, p.stat().st_mtime, p) for n, p in checkpoint_folders(root) if is_complete(p)]
    return max(complete)[2] if complete else None


def resolve_checkpoint(path: Path | str, argument: str = "resume_from_checkpoint") -> Path:
    """The checkpoint to resume from ``path``: ``path`` itself when it is a complete checkpoint,
    or the latest complete checkpoint under it when it is a folder of checkpoints.

    Raises:
        CheckpointError: ``path`` does not exist, is an incomplete checkpoint (the message says so and names the
            latest complete one beside it), or a folder holding no complete checkpoint.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{argument}={path}: no such folder")
    if not path.is_dir():
        raise CheckpointError(f"{argument}={path}: a checkpoint is a folder, this is a file")
    if not _holds_checkpoints(path) and (_NAME.match(path.name) or any(path.iterdir())):
        reason = _incomplete_reason(path)
        if reason is None:
            return path
        latest = latest_complete(path.parent)
        hint = (
            f"; the latest complete checkpoint beside it is {latest}"
            if latest
            else "; no complete checkpoint lies beside it"
        )
        raise CheckpointError(f"{argument}={path}: incomplete checkpoint: {reason}{hint}")
    latest = latest_complete(path)
    if latest is None:
        raise CheckpointError(
            f"{argument}={path}: holds no complete checkpoint (a folder of SAELens checkpoints "
            f"with {COMPLETE_MARKER}, or one such checkpoint, is allowed)"
        )
    return latest
