"""Where softsae_lens caches what it builds (de-quantised models, tokenised text, rendered docs)."""

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$SOFTSAE_CACHE`` if set, else ``~/.cache/softsae_lens``."""
    root = os.environ.get("SOFTSAE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "softsae_lens"
