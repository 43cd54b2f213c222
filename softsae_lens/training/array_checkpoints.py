"""A run on arrays beside SAELens's checkpoints: the files it adds, the destinations it refuses
to write over, and resuming exactly where a checkpoint stopped."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME, TRAINER_STATE_FILENAME
from sae_lens.training.sae_trainer import SAETrainer

from softsae_lens.data.batches import ActivationBatches
from softsae_lens.training.checkpoints import checkpoint_folders, is_complete, mark_complete

if TYPE_CHECKING:
    from softsae_lens.training.on_arrays import ActivationsRunnerConfig

__all__ = [
    "EVAL_METRICS_FILENAME",
    "check_destinations",
    "check_same_run",
    "resume_run",
    "save_checkpoint",
    "save_runner_cfg",
]

logger = logging.getLogger(__name__)

EVAL_METRICS_FILENAME = "eval_metrics.json"
# Beside SAELens's checkpoint files: where the data provider stands and torch's RNG state.
DATA_STATE_FILENAME = "activation_batches_state.json"
TORCH_RNG_FILENAME = "torch_rng_state.pt"
# Config fields a resumed run may change: where things are written, not what is trained.
_RESUMABLE_CHANGES = {
    "resume_from_checkpoint",
    "checkpoint_path",
    "output_path",
    "overwrite",
    "logger",
}
# What train_on_activations writes to output_path: all that --overwrite may replace.
_OUTPUT_FILES = {
    "cfg.json",
    "sae_weights.safetensors",
    SPARSITY_FILENAME,
    RUNNER_CFG_FILENAME,
    EVAL_METRICS_FILENAME,
}


def save_runner_cfg(cfg: ActivationsRunnerConfig[Any], folder: Path) -> None:
    (Path(folder) / RUNNER_CFG_FILENAME).write_text(json.dumps(cfg.to_dict()))


def save_checkpoint(
    cfg: ActivationsRunnerConfig[Any], provider: ActivationBatches, checkpoint_path: Path | None
) -> None:
    """The runner's part of a checkpoint (SAELens's trainer has written its files): the
    config, the data position, torch's RNG state, then the completion marker, last."""
    if checkpoint_path is None:
        return
    folder = Path(checkpoint_path)
    save_runner_cfg(cfg, folder)
    (folder / DATA_STATE_FILENAME).write_text(json.dumps(provider.state_dict()))
    torch.save(torch.get_rng_state(), folder / TORCH_RNG_FILENAME)
    mark_complete(folder)


def check_destinations(cfg: ActivationsRunnerConfig[Any], resume: Path | None) -> None:
    """Refuse to write over a finished SAE or into another run's checkpoints."""
    if cfg.output_path is not None:
        out = Path(cfg.output_path)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output_path={out}: is a file; a folder (new or empty) is required")
        entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        held = [n for n in ("cfg.json", "sae_weights.safetensors") if n in entries]
        if held and not cfg.overwrite:
            raise ValueError(
                f"output_path={out}: already holds an SAE ({held[0]}); choose another folder, "
                "remove it, or pass --overwrite true to replace it"
            )
        others = [n for n in entries if n not in _OUTPUT_FILES]
        if others:
            raise ValueError(
                f"output_path={out}: holds files that are not an SAE ({', '.join(others[:3])}); "
                "the SAE is written to a new or empty folder"
            )
    if cfg.checkpoint_path is None:
        return
    root = Path(cfg.checkpoint_path)
    found = sorted(checkpoint_folders(root))
    if resume is None:
        complete = [p.name for _, p in found if is_complete(p)]
        if complete:
            raise ValueError(
                f"checkpoint_path={root}: already holds checkpoints of another run "
                f"({', '.join(complete[:3])}{', ...' if len(complete) > 3 else ''}); "
                f"continue that run with --resume_from_checkpoint {root}, or choose an empty folder"
            )
        if found:
            raise ValueError(
                f"checkpoint_path={root}: holds only incomplete checkpoints "
                f"({', '.join(p.name for _, p in found[:3])}), left by a run stopped while "
                "writing its first; remove them or choose an empty folder"
            )
        return
    resumed_at = _samples_of(resume)
    later = [p for n, p in found if n >= resumed_at and p.resolve() != resume.resolve()]
    if any(is_complete(p) for p in later):
        raise ValueError(
            f"checkpoint_path={root}: holds complete checkpoints at or after the resumed one "
            f"({', '.join(p.name for p in later if is_complete(p))}) that this run would write "
            f"over; resume from the latest (--resume_from_checkpoint {root}) or choose another "
            "checkpoint_path"
        )
    for p in later:  # incomplete (a run killed while writing them): unusable, rewritten below
        logger.warning("removing the incomplete checkpoint %s before resuming", p)
        shutil.rmtree(p)


def _samples_of(checkpoint: Path) -> int:
    state = torch.load(checkpoint / TRAINER_STATE_FILENAME, map_location="cpu")
    return int(state["n_training_samples"])


def check_same_run(cfg: ActivationsRunnerConfig[Any], checkpoint: Path) -> None:
    """A resumed run must train what the checkpoint's run trained (outputs may move)."""
    saved = json.loads((checkpoint / RUNNER_CFG_FILENAME).read_text())
    now = json.loads(json.dumps(cfg.to_dict()))
    for name in sorted(set(saved) | set(now)):
        if name in _RESUMABLE_CHANGES or saved.get(name) == now.get(name):
            continue
        if name == "sae":
            fields = sorted(
                f
                for f in set(saved[name]) | set(now[name])
                if saved[name].get(f) != now[name].get(f)
            )
            name = f"sae.{fields[0]}"
            old, new = saved["sae"].get(fields[0]), now["sae"].get(fields[0])
        else:
            old, new = saved.get(name), now.get(name)
        raise ValueError(
            f"{name}={new}: the checkpoint {checkpoint} was trained with {name}={old}; a resumed "
            "run must use the same arguments (only output_path, checkpoint_path and logging may "
            "change)"
        )


def resume_run(
    trainer: SAETrainer[Any, Any],
    provider: ActivationBatches,
    checkpoint: Path,
    batch_size: int,
) -> None:
    """Load everything a checkpoint holds so that training continues as if never stopped."""
    trainer.load_trainer_state(checkpoint)
    trainer.sae.load_weights_from_checkpoint(checkpoint)
    provider.load_state_dict(json.loads((checkpoint / DATA_STATE_FILENAME).read_text()))
    torch.set_rng_state(torch.load(checkpoint / TORCH_RNG_FILENAME))
    # SAELens saves a checkpoint before counting its step, so n_training_steps comes back one
    # short (SoftTrainingSAE then offsets its schedule); every step here is one full batch, so
    # the true count is exact, and the SoftSAE offset is then not needed.
    trainer.n_training_steps = trainer.n_training_samples // batch_size
    if hasattr(trainer.sae, "resume_step_offset"):
        trainer.sae.resume_step_offset = 0
    # Thresholds already passed would checkpoint again at the first resumed step.
    trainer.checkpoint_thresholds = [
        t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples
    ]
