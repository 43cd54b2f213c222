"""``python -m softsae_lens.experiments.minilm``: runs :func:`.run.main`; nothing imports it."""

from softsae_lens.experiments.minilm.run import main

if __name__ == "__main__":
    main()
