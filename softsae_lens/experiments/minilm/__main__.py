"""``python -m softsae_lens.experiments.minilm``: runs :func:`.run.main`."""

from softsae_lens.experiments.minilm.run import main

if __name__ == "__main__":
    main()
