"""``python -m softsae_lens.experiments.synthetic``: see :mod:`.cli` for the flags."""

from softsae_lens.experiments.synthetic.cli import main

if __name__ == "__main__":
    main()
