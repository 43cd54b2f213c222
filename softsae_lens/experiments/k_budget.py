"""The k budget's evidence page: held-out L0 against the target, from runs already made.

Reads the ``results.json`` of sweeps (``python -m softsae_lens.experiments.sweep``) and of
ground-truth runs (``python -m softsae_lens.experiments.synthetic``), trains nothing, and writes
one ``results.md``: per run length and target, each SoftSAE's held-out mean L0 and how far it is
from the target, its k_hat spread, and its scores against TopK at SoftSAE's own L0.

    python -m softsae_lens.experiments.k_budget --sweeps out/l0/sweep_1x out/l0/sweep_2x \\
        --synthetic out/l0/synth_1000 --out out/l0
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simple_parsing import field

from softsae_lens.experiments.sweep.report import (
    PARETO_METRICS,
    format_number,
    matched_l0_rows,
    off_target,
    relative_to_cwd,
    sweep_command,
)
from softsae_lens.experiments.synthetic.report import format_mean_std
from softsae_lens.flags import config_parser, parse_config

__all__ = ["KBudgetConfig", "main", "markdown", "parse_args"]

_SYNTHETIC_SAES = (
    "soft",
    "k_budget_penalty",
    "hard_selection_loss_0.3",
    "k_max_4k",
    "k_max_4k_hard_selection_0.3",
    "topk",
    "topk_plus1",
    "batchtopk",
)


def _load(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (run the experiment first)")
    return json.loads(path.read_text())


def _load_noted(entry: str) -> dict[str, Any]:
    """``DIR[=NOTE]``: the run's results, with the note (if any) and the folder it came from."""
    folder, _, note = entry.partition("=")
    results = _load(Path(folder))
    results["folder"] = Path(folder)
    if note:
        results["note"] = note
    return results


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.1%}"


def _soft_label(results: dict[str, Any]) -> str:
    budget = results["config"].get("soft_k_budget", "penalty")
    factor = results["config"].get("soft_k_max_factor", 2.0)
    return f"SoftSAE ({budget})" if factor == 2 else f"SoftSAE ({budget}, k_max {factor:g}k)"


def sweep_lines(runs: Sequence[dict[str, Any]]) -> list[str]:
    """One row per SoftSAE of every sweep: L0 on target, k_hat spread, TopK at its L0."""
    lines = [
        "| training tokens | SAE | target | held-out L0 | off target | k_hat p5 / p50 / p95 | "
        + " | ".join(f"{label} (vs TopK at that L0)" for label in PARETO_METRICS.values())
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(PARETO_METRICS),
    ]
    for results in runs:
        tokens = f"{results['config']['tokens']:,}"
        if results.get("note"):
            tokens += f" ({results['note']})"
        matched = {(r["target_l0"], r["metric"]): r for r in matched_l0_rows(results)}
        for run in results["runs"]:
            m = run["metrics"]
            if run["architecture"] == "soft":
                k = run.get("k_hat") or {}
                spread = (
                    f"{k['p5']:.1f} / {k['median']:.1f} / {k['p95']:.1f}" if "p5" in k else "n/a"
                )
                scores = []
                for metric in PARETO_METRICS:
                    row = matched.get((run["target_l0"], metric), {})
                    diff = row.get("difference")
                    scores.append(
                        f"{format_number(m.get(metric))} ({'n/a' if diff is None else f'{diff:+.4f}'})"
                    )
                label = _soft_label(results)
            elif run["architecture"] == "topk":
                spread, label = "-", "TopK"
                scores = [format_number(m.get(metric)) for metric in PARETO_METRICS]
            else:
                continue
            lines.append(
                f"| {tokens} | {label} | {run['target_l0']} | {format_number(m['l0'], 3)} | "
                f"{off_target(m['l0'], run['target_l0'])} | {spread} | " + " | ".join(scores) + " |"
            )
    return lines


def synthetic_lines(results: dict[str, Any]) -> list[str]:
    """Mean ± std over seeds per SAE of the realistic regime: L0 against k, features, k tracking."""
    per_seed = [r for r in results["per_seed"] if r["regime"] == "realistic"]
    summary = results["summary"]["realistic"]
    steps = (
        results["realistic_settings"]["training_samples"]
        // results["realistic_settings"]["batch_size"]
    )
    lines = []
    for name in _SYNTHETIC_SAES:
        if name not in summary:
            continue
        agg = summary[name]
        offsets = [
            (r["metrics"][name]["mean_l0"] - r["k"]) / r["k"]
            for r in per_seed
            if name in r["metrics"] and not name.startswith("topk")
        ]
        off = (
            f"{_pct(sum(offsets) / len(offsets))} (worst {_pct(max(offsets, key=abs))})"
            if offsets
            else "-"
        )

        def ms(key: str, digits: int = 3, agg: dict[str, Any] = agg) -> str:
            return format_mean_std(agg.get(key), digits)

        when = f"{steps:,}" + (f" ({results['note']})" if results.get("note") else "")
        lines.append(
            f"| {when} | {results['labels'].get(name, name)} | {ms('mean_l0', 2)} | {off} | "
            f"{ms('mcc')} | {ms('f1')} | {ms('explained_variance')} | "
            f"{ms('spearman_k_hat') if 'spearman_k_hat' in agg else '-'} | "
            f"{ms('dead_latents', 0)} |"
        )
    return lines


def _model_label(results: dict[str, Any]) -> str:
    """The sweep's model as a reader knows it: SmolLM2 by default, else the file or name given."""
    c = results["config"]
    if c.get("model_path"):
        return Path(c["model_path"]).name
    return c.get("model") or "SmolLM2-135M-Instruct"


def markdown(sweeps: Sequence[dict[str, Any]], synthetic: Sequence[dict[str, Any]]) -> str:
    lines = [
        "# The k budget: held-out L0 against the target",
        "",
        "Written by `python -m softsae_lens.experiments.k_budget` from the runs' own results.json.",
        "",
    ]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for s in sweeps:
        by_model.setdefault(_model_label(s), []).append(s)
    for model, runs in by_model.items():
        lines += [
            f"## {model} (the sweep): SoftSAE and TopK at each run length",
            "",
            "Held-out `run_evals`, special tokens excluded. In brackets: SoftSAE's score minus "
            "TopK's interpolated (linearly in log L0) to SoftSAE's held-out L0 (TopK's outermost "
            "run where that L0 is within 3% beyond it; n/a further out).",
            "",
            *sweep_lines(runs),
            "",
            "Commands:",
            "",
            *(
                f"- `{s.get('command', 'python -m softsae_lens.experiments.sweep')}`"
                + (f" ({s['note']})" if s.get("note") else "")
                + (f" ({s['wall_time_s'] / 60:.0f} min)" if s.get("wall_time_s") else "")
                for s in runs
            ),
            "",
        ]
    if synthetic:
        lines += [
            "## Realistic ground truth (SynthSAEBench recipe), mean ± std over seeds",
            "",
            "| steps | SAE | mean L0 | off k (mean over seeds, worst seed) | MCC | F1 | EV | "
            "Spearman(k_hat, true L0) | dead latents |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for results in synthetic:
            lines += synthetic_lines(results)
        lines += [
            "",
            "Commands:",
            "",
            *(
                f"- `{relative_to_cwd(s['command'])}` ({s['wall_s'] / 60:.0f} min)"
                for s in synthetic
            ),
            "",
        ]
    return "\n".join(lines)


@dataclass
class KBudgetConfig:
    """Write the k budget's results page from sweep and ground-truth results."""

    sweeps: list[str] = field(default_factory=list, nargs="*", metavar="[DIR[=NOTE] ...]")
    """sweep output folders, each with an optional note shown beside its run length (e.g. which
    code or data it ran on)"""
    synthetic: list[str] = field(default_factory=list, nargs="*", metavar="[DIR[=NOTE] ...]")
    """ground-truth output folders, each with an optional note as for --sweeps"""
    out: Path = field(default=Path("out/l0"), metavar="DIR")
    """where results.md goes"""

    def __post_init__(self) -> None:
        """A one-line ValueError when there is nothing to read."""
        if not self.sweeps and not self.synthetic:
            raise ValueError("give --sweeps and/or --synthetic folders holding results.json")


def parse_args(argv: Sequence[str] | None = None) -> KBudgetConfig:
    """The page's command line (one flag per :class:`KBudgetConfig` field)."""
    parser = config_parser(KBudgetConfig, "python -m softsae_lens.experiments.k_budget")
    return parse_config(parser, argv, usage_on_error=True).cfg


def main(argv: Sequence[str] | None = None) -> None:
    """Read the runs the flags name and write ``OUT/results.md``."""
    args = parse_args(argv)
    sweeps = [_load_noted(entry) for entry in args.sweeps]
    for s in sweeps:
        s.setdefault("command", sweep_command(s))
    text = markdown(sweeps, [_load_noted(entry) for entry in args.synthetic])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
