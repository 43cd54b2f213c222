"""``python -m softsae_lens.convert``: runs :func:`softsae_lens.convert.cli.main`."""

import sys

from softsae_lens.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
