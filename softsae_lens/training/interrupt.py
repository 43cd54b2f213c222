"""Stopping a training run on SIGINT/SIGTERM between two steps, with a complete checkpoint.

SAELens 6.54's runner raises from inside whatever a signal interrupted (an optimizer step, a
checkpoint write) and then saves only the runner's files into a folder it never created, which
crashes. :func:`fit_until_signalled` instead lets the signal set a flag; the trainer stops when it
next asks its data provider for a batch, which is between two steps, and the checkpoint is written
the SAELens way (``trainer.save_checkpoint``, which calls the runner's ``save_checkpoint_fn``). A
second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from softsae_lens.training.checkpoints import is_complete

__all__ = ["TrainingInterrupted", "fit_until_signalled"]


class TrainingInterrupted(Exception):
    """A run stopped by SIGINT/SIGTERM between two steps.

    Attributes:
        signal_name: "SIGINT" or "SIGTERM".
        steps: optimizer steps completed.
        checkpoint: the complete checkpoint to resume from, or None without a checkpoint folder.
    """

    def __init__(self, signal_name: str, steps: int, checkpoint: Path | None):
        self.signal_name, self.steps, self.checkpoint = signal_name, steps, checkpoint
        where = (
            f"checkpoint written to {checkpoint}; continue with --resume_from_checkpoint {checkpoint}"
            if checkpoint is not None
            else "no checkpoint written (checkpoint_path is None)"
        )
        super().__init__(f"{signal_name} received: stopped after {steps} steps; {where}")

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it."""
        return 128 + signal.Signals[self.signal_name].value


class _StopRequested(Exception):
    pass


class _StopAtStepBoundary:
    """The trainer's data provider, raising at the next batch once a stop has been requested."""

    def __init__(self, provider: Any):
        self.provider, self.signal_name = provider, ""

    def request(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signal_name:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __iter__(self) -> _StopAtStepBoundary:
        return self

    def __next__(self) -> Any:
        if self.signal_name:
            raise _StopRequested
        return next(self.provider)


def fit_until_signalled(trainer: Any, checkpoint_path: str | Path | None) -> Any:
    """``trainer.fit()``; on SIGINT/SIGTERM, stop between two steps, write a checkpoint under
    ``checkpoint_path`` (if set) and raise :class:`TrainingInterrupted`. The previous signal
    handlers are restored afterwards. Outside the main thread (where Python allows no signal
    handler) it is plain ``trainer.fit()``."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    stop = _StopAtStepBoundary(trainer.data_provider)
    trainer.data_provider = stop
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop.request) for sig in signals}
    try:
        return trainer.fit()
    except _StopRequested:
        checkpoint = None
        if checkpoint_path is not None:
            name = str(trainer.n_training_samples)
            checkpoint = Path(checkpoint_path) / name
            if not is_complete(checkpoint):  # a periodic checkpoint may be this very state
                trainer.save_checkpoint(checkpoint_name=name)
        raise TrainingInterrupted(stop.signal_name, trainer.n_training_steps, checkpoint) from None
    finally:
        trainer.data_provider = stop.provider
        for sig, handler in previous.items():
            signal.signal(sig, handler)
