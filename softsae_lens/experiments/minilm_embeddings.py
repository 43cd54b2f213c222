"""``python -m softsae_lens.experiments.minilm_embeddings``: SoftSAE vs TopK on all-MiniLM-L6-v2
sentence embeddings. The experiment lives in :mod:`softsae_lens.experiments.minilm`; this name
is kept for the Makefile (``make minilm``), the README and existing imports, and forwards every
name there. Depends on that package only; nothing in ``softsae_lens`` imports it.
"""

from typing import Any

import softsae_lens.experiments.minilm as _minilm
from softsae_lens.experiments.minilm import main

__all__ = _minilm.__all__


def __getattr__(name: str) -> Any:
    try:
        return getattr(_minilm, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


if __name__ == "__main__":
    main()
