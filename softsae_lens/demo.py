"""``python -m softsae_lens.demo``: SoftSAE next to TopK on SmolLM2 and real text, offline
(the experiment is :mod:`softsae_lens.experiments.demo`)."""

from softsae_lens.experiments.demo import main

if __name__ == "__main__":
    main()
