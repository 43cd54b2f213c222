"""The phase clock the demo and the sweep print."""

from __future__ import annotations

import time

__all__ = ["PhaseClock"]


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
