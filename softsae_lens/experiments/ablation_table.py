"""One table from several realistic-ablation runs: each SoftSAE variant against TopK on its cell.

Reads the ``results.json`` of ``python -m softsae_lens.experiments.synthetic
--realistic-ablation`` runs (and of grid cells), trains nothing, and writes ``results.md``: per
cell (size, directions, learning rate, steps) and seed, every SAE's MCC, F1, explained variance,
L0, dead latents, uniqueness and Spearman(k_hat, true L0), SoftSAE's alpha floor as it ran,
and its difference from the same cell's TopK on the same seed when one of the runs holds it.

    python -m softsae_lens.experiments.ablation_table --runs out/abl23/screen_a \\
        "out/grid/f2048-d128-ortho-lr0.001=the grid cell: defaults and TopK" --out out/abl23
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softsae_lens.flags import config_parser, one_or_more, parse_config

__all__ = ["AblationTableConfig", "main", "markdown", "rows"]


@dataclass
class AblationTableConfig:
    """One table from several realistic-ablation runs: each SoftSAE variant against TopK on its
    cell."""

    runs: list[str] | None = one_or_more(None, "DIR[=NOTE]")
    """folders holding a results.json of --realistic-ablation (or of a grid cell), each with an optional note"""
    out: Path = Path("out/ablation")
    """where results.md is written"""

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("--runs: give at least one DIR[=NOTE]")


def _load(entry: str) -> tuple[Path, str, dict[str, Any]]:
    folder, _, note = entry.partition("=")
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (run the experiment first)")
    return Path(folder), note, json.loads(path.read_text())


def _cell(results: dict[str, Any]) -> tuple[Any, ...]:
    settings = results["realistic_settings"]
    regime = settings["regimes"][0]
    steps = settings["training_samples"] // settings["batch_size"]
    return (
        regime["num_features"],
        regime["hidden_dim"],
        "orthogonalised" if regime.get("orthogonalize") else "plain",
        settings["lr"],
        steps,
    )


def rows(runs: Sequence[tuple[Path, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (run, seed, SAE), with ``delta_*`` against TopK of the same cell and seed."""
    out, topk = [], {}
    for folder, note, results in runs:
        cell = _cell(results)
        descriptions = results.get("ablation_descriptions") or {}
        for seed_result in results["per_seed"]:
            for name, m in seed_result["metrics"].items():
                spearman = (m.get("corr_k_hat_vs_true") or {}).get("spearman")
                soft = m.get("soft_config") or {}
                row = {
                    "cell": cell,
                    "seed": seed_result["seed"],
                    "sae": name,
                    "description": descriptions.get(name, name),
                    "alpha_end": soft.get("alpha_end"),
                    "source": str(folder) + (f" ({note})" if note else ""),
                    "mcc": m["mcc"],
                    "f1": m["f1"],
                    "ev": m["explained_variance"],
                    "l0": m["mean_l0"],
                    "dead": m["dead_latents"],
                    "uniqueness": m["uniqueness"],
                    "spearman": spearman,
                }
                out.append(row)
                if m.get("kind") == "topk" and not m.get("overrides"):
                    topk[(cell, seed_result["seed"])] = row
    for row in out:
        ref = topk.get((row["cell"], row["seed"]))
        for key in ("mcc", "f1", "ev"):
            row[f"delta_{key}"] = None if ref is None else row[key] - ref[key]
    return out


def _num(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(runs: Sequence[tuple[Path, str, dict[str, Any]]]) -> str:
    """The results page: one table per cell, rows in the order the runs were given."""
    table = rows(runs)
    lines = [
        "# SoftSAE ablations at the settings where it lost, against TopK",
        "",
        "Written by `python -m softsae_lens.experiments.ablation_table` from each run's "
        "results.json. Each row is one SAE on one seed; the differences are against TopK on "
        "the same cell, seed and recorded training stream. *alpha floor* is SoftSAE's "
        "`alpha_end` as it ran (relative to the RMS positive pre-activation).",
    ]
    for cell in dict.fromkeys(r["cell"] for r in table):
        features, dims, directions, lr, steps = cell
        lines += [
            "",
            f"## {features:,} true features / {dims} dims, {directions}, lr {lr:g}, "
            f"{steps:,} steps",
            "",
            "| SAE | what it changes | seed | alpha floor | MCC | F1 | EV | Δ MCC | Δ F1 | Δ EV "
            "| L0 | dead | uniqueness | Spearman(k_hat, true L0) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in table if r["cell"] == cell):
            alpha = "-" if r["alpha_end"] is None else f"{r['alpha_end']:g}"
            lines.append(
                f"| {r['sae']} | {r['description']} | {r['seed']} | {alpha} | {_num(r['mcc'])} "
                f"| {_num(r['f1'])} | {_num(r['ev'])} | {_num(r['delta_mcc'], signed=True)} "
                f"| {_num(r['delta_f1'], signed=True)} | {_num(r['delta_ev'], signed=True)} "
                f"| {r['l0']:.2f} | {r['dead']} | {_num(r['uniqueness'])} "
                f"| {_num(r['spearman'])} |"
            )
    lines += ["", "Runs (each written by the command in its results.json):", ""]
    lines += [
        f"- `{folder}`{f' ({note})' if note else ''}: `{results.get('command', '?')}`"
        for folder, note, results in runs
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m softsae_lens.experiments.ablation_table``."""
    cfg = parse_config(
        config_parser(AblationTableConfig, "python -m softsae_lens.experiments.ablation_table"),
        argv,
    ).cfg
    runs = [_load(entry) for entry in cfg.runs or ()]
    cfg.out.mkdir(parents=True, exist_ok=True)
    text = markdown(runs)
    (cfg.out / "results.md").write_text(text)
    print(text)
    print(f"wrote {cfg.out / 'results.md'}")


if __name__ == "__main__":
    main()
