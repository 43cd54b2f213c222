"""The sweep's model and text flags (the demo's are DemoConfig's fields), and the phase clock both print."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["PhaseClock", "add_model_and_text_flags"]


def add_model_and_text_flags(parser: Any, default_sources: tuple[str, ...]) -> None:
    """``--model``, ``--model-path`` and ``--sources`` (checked afterwards by
    :func:`softsae_lens.models.check_model_choice`)."""
    from softsae_lens.data.corpus.sources import SOURCES, parse_sources

    parser.add_argument(
        "--model", default=None, help="TransformerLens model name (default: SmolLM2, offline)"
    )
    parser.add_argument(
        "--model-path",
        type=Path,
        default=None,
        help="a .gguf file or a local Hugging Face model folder, booted as a bridge, offline",
    )
    parser.add_argument(
        "--sources",
        type=parse_sources,
        default=default_sources,
        help=f"local text sources to use when present (default: all of {','.join(SOURCES)})",
    )


class PhaseClock:
    """Wall seconds per phase, printed with ``prefix`` as each phase ends."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self.last
        print(f"[{self.prefix}] {phase}: {now - self.last:.0f} s", flush=True)
        self.last = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start
