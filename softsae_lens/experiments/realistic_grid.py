"""SoftSAE against TopK on realistic ground truth over a grid of settings nobody tuned.

One cell is one size (true features x dimensions; the SAE is a quarter as wide, k the true L0
of the features it can hold), one kind of feature directions (SynthSAEBench's orthogonalised
ones, or plain random ones) and one learning rate; each cell trains SoftSAE (package defaults)
and TopK on the same recorded stream for every seed, through the ground-truth experiment
(:mod:`softsae_lens.experiments.synthetic`, ``--realistic-ablation``), and keeps that run's
own ``results.json`` in ``OUT/<cell>/``. ``report`` reads every cell and writes
``OUT/results.md``: each SAE's scores as mean ± std over seeds, and SoftSAE minus TopK paired
by seed (same stream), with how many seeds SoftSAE won.

    python -m softsae_lens.experiments.realistic_grid run --out out/grid --plan-only
    python -m softsae_lens.experiments.realistic_grid run --out out/grid
    python -m softsae_lens.experiments.realistic_grid report --out out/grid
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softsae_lens.experiments.realistic_grid_config import parse_args
from softsae_lens.experiments.synthetic.report import format_mean_std
from softsae_lens.experiments.synthetic.summary import mean_std

__all__ = ["Cell", "cells", "cell_argv", "markdown", "main"]

# Scores compared, with the direction that is better.
_SCORES = {
    "mcc": "MCC",
    "f1": "F1",
    "explained_variance": "EV",
}


@dataclass(frozen=True)
class Cell:
    """One setting of the grid."""

    features: int
    dims: int
    orthogonalize: bool
    lr: float

    @property
    def name(self) -> str:
        kind = "ortho" if self.orthogonalize else "plain"
        return f"f{self.features}-d{self.dims}-{kind}-lr{self.lr:g}"


def cells(
    sizes: Sequence[tuple[int, int]], directions: Sequence[str], lrs: Sequence[float]
) -> list[Cell]:
    """Every (size, directions, lr) combination, smallest sizes first."""
    return [
        Cell(features, dims, kind == "ortho", lr)
        for features, dims in sorted(sizes)
        for kind in directions
        for lr in lrs
    ]


def cell_argv(
    cell: Cell, out: Path, seeds: Sequence[int], samples: int, quick: bool = False
) -> list[str]:
    """The ground-truth experiment's arguments that run one cell (``quick``: its tiny run,
    seconds, for the test suite)."""
    argv = [
        "--realistic-ablation",
        "--workers",
        "1",
        "--threads",
        "1",
        "--no-progress",
        "--no-plots",
        "--variants",
        "soft",
        "topk",
        "--realistic-size",
        str(cell.features),
        str(cell.dims),
        "--realistic-lr",
        f"{cell.lr:g}",
        "--realistic-seeds",
        *map(str, seeds),
        "--out",
        str(out / cell.name),
    ]
    argv += ["--quick"] if quick else ["--realistic-samples", str(samples)]
    if cell.orthogonalize:
        argv.append("--realistic-orthogonalize")
    return argv


def _load(folder: Path) -> dict[str, Any] | None:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _cell_rows(cell: Cell, results: dict[str, Any]) -> tuple[list[str], list[str]]:
    per_seed = [r for r in results["per_seed"] if r["regime"] == "realistic"]
    settings = results["realistic_settings"]
    steps = settings["training_samples"] // settings["batch_size"]
    k = per_seed[0]["k"]
    width = per_seed[0]["metrics"]["topk"].get("width") or round(
        cell.features * settings["regimes"][0]["width_fraction"]
    )
    head = (
        f"| {cell.features:,} / {cell.dims} | {width:,} | {k} | "
        f"{'orthogonalised' if cell.orthogonalize else 'plain'} | {cell.lr:g} | {steps:,} |"
    )
    summary = results["summary"]["realistic"]
    scores = []
    for name, label in (("soft", "SoftSAE"), ("topk", "TopK")):
        agg = summary[name]
        scores.append(
            f"{head} {label} | "
            + " | ".join(format_mean_std(agg.get(key)) for key in _SCORES)
            + f" | {format_mean_std(agg.get('mean_l0'), 2)} | "
            f"{format_mean_std(agg.get('dead_latents'), 0)} | "
            f"{format_mean_std(agg['spearman_k_hat']) if 'spearman_k_hat' in agg else '-'} |"
        )
    paired = [r for r in per_seed if {"soft", "topk"} <= r["metrics"].keys()]
    diffs = []
    for key in _SCORES:
        d = [r["metrics"]["soft"][key] - r["metrics"]["topk"][key] for r in paired]
        wins = sum(v >= 0 for v in d)
        diffs.append(f"{format_mean_std(mean_std(d))} ({wins}/{len(d)})" if d else "-")
    l0 = [r["metrics"]["soft"]["mean_l0"] / r["k"] - 1 for r in paired]
    off = f"{statistics.fmean(l0):+.1%}" if l0 else "-"
    return scores, [f"{head} " + " | ".join(diffs) + f" | {off} |"]


def markdown(out: Path, grid: Sequence[Cell]) -> str:
    """The grid's results page from every cell's ``results.json`` under ``out``."""
    score_rows, diff_rows, commands, missing = [], [], [], []
    for cell in grid:
        results = _load(out / cell.name)
        if results is None:
            missing.append(cell.name)
            continue
        scores, diffs = _cell_rows(cell, results)
        score_rows += scores
        diff_rows += diffs
        commands.append(f"- `{results['command']}` ({results['wall_s'] / 60:.0f} min)")
    head = "| true features / dims | width | k | directions | lr | steps |"
    lines = [
        "# Realistic ground truth over a grid of settings: SoftSAE against TopK",
        "",
        "Written by `python -m softsae_lens.experiments.realistic_grid report` from each cell's "
        "results.json. SynthSAEBench's recipe scaled down (Zipfian firing, a depth-3 hierarchy "
        "with mutually exclusive children, low-rank correlation), trained through SAELens's "
        "`SyntheticSAERunner`, SoftSAE with package defaults, both SAEs on the same recorded "
        "stream per seed. Mean ± std over seeds.",
        "",
        "## SoftSAE minus TopK, paired by seed (seeds where SoftSAE is at least as good)",
        "",
        f"{head} "
        + " | ".join(f"Δ {label}" for label in _SCORES.values())
        + " | SoftSAE L0 vs k |",
        "|---|---|---|---|---|---|" + "---|" * (len(_SCORES) + 1),
        *diff_rows,
        "",
        "## Scores",
        "",
        f"{head} SAE | "
        + " | ".join(_SCORES.values())
        + " | mean L0 | dead latents | Spearman(k_hat, true L0) |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(_SCORES) + 3),
        *score_rows,
        "",
        "Commands (one per cell):",
        "",
        *commands,
    ]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Run the missing cells or write the results page (flags: :mod:`.realistic_grid_config`)."""
    args = parse_args(argv)
    grid = cells(args.sizes, args.directions, args.lrs)
    if args.action == "report":
        text = markdown(args.out, grid)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text)
        print(text)
        return

    from softsae_lens.experiments.synthetic.cli import main as run_synthetic

    todo = [c for c in grid if _load(args.out / c.name) is None]
    print(
        f"[grid] {len(grid)} cells x {len(args.seeds)} seeds x 2 SAEs, {args.samples:,} samples "
        f"each; {len(grid) - len(todo)} done, {len(todo)} to run",
        flush=True,
    )
    for features, dims in sorted(set(args.sizes)):
        # Every finished cell of this size under --out, in or out of this grid, prices a seed.
        walls = [
            r["wall_s"] / len(r["realistic_settings"]["seeds"])
            for folder in sorted(args.out.glob(f"f{features}-d{dims}-*"))
            if (r := _load(folder)) is not None
        ]
        cost = (
            f"{statistics.fmean(walls) / 60:.0f} min per seed, measured on {len(walls)} finished "
            "cell(s) of this size (wall time, on whatever else the machine was running)"
            if walls
            else "not measured yet (no cell of this size done)"
        )
        print(f"[grid] {features:,} x {dims}: {cost}", flush=True)
    if args.plan_only:
        for cell in todo:
            argv = cell_argv(cell, args.out, args.seeds, args.samples, args.quick)
            print("  python -m softsae_lens.experiments.synthetic " + " ".join(argv))
        return
    for cell in todo:
        start = time.perf_counter()
        print(f"[grid] {cell.name}", flush=True)
        run_synthetic(cell_argv(cell, args.out, args.seeds, args.samples, args.quick))
        print(f"[grid] {cell.name} took {(time.perf_counter() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
