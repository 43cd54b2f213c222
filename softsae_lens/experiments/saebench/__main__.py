"""``python -m softsae_lens.experiments.saebench``: see :mod:`softsae_lens.experiments.saebench`."""

from __future__ import annotations

from softsae_lens.experiments.saebench.config import parse_args


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    from softsae_lens.experiments.saebench.run import run

    run(cfg)


if __name__ == "__main__":
    main()
