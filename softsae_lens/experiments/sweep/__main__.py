"""``python -m softsae_lens.experiments.sweep``: see :mod:`softsae_lens.experiments.sweep`."""

from __future__ import annotations

import json

import softsae_lens.experiments.sweep as package
from softsae_lens.experiments.sweep.config import parse_args


def main(argv: list[str] | None = None) -> None:
    """Run the sweep, or with ``--replot RESULTS_JSON`` redraw its table and plots."""
    cfg = parse_args(argv, doc=package.__doc__)
    if cfg.replot is not None:
        from softsae_lens.experiments.sweep.report import write_outputs

        write_outputs(json.loads(cfg.replot.read_text()), cfg.replot.parent)
        print(f"redrew {cfg.replot.parent}/results.md and its plots")
        return
    if cfg.merge is not None:
        from softsae_lens.experiments.sweep.report import merge_results, write_outputs

        merged = merge_results([json.loads(p.read_text()) for p in cfg.merge])
        write_outputs(merged, cfg.out)
        print(f"merged {len(cfg.merge)} sweeps into {cfg.out}/results.md and its plots")
        return
    from softsae_lens.experiments.sweep.run import run_sweep

    run_sweep(cfg)


if __name__ == "__main__":
    main()
