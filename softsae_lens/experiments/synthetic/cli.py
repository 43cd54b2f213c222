"""The command line of the synthetic experiment: ``python -m softsae_lens.experiments.synthetic``.

Parses the flags, runs :func:`.runner.run_experiment` (or redraws a saved result with
``--replot``) and writes ``results.json``, ``results.md`` and the PNGs.

Depends on every other module of this package; nothing depends on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softsae_lens.experiments.synthetic.arms import ABLATION_DESCRIPTIONS, ABLATION_VARIANTS
from softsae_lens.experiments.synthetic.plots import make_plots
from softsae_lens.experiments.synthetic.report import markdown_report
from softsae_lens.experiments.synthetic.runner import MAIN_TITLE, run_experiment
from softsae_lens.experiments.synthetic.settings import default_settings


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m softsae_lens.experiments.synthetic",
        description="Does SoftSAE's k_hat track the true number of active features? Trains "
        "SoftSAE, TopK (k and k+1) and BatchTopK on synthetic data with known per-input L0.",
    )
    p.add_argument("--quick", action="store_true", help="tiny run (seconds) for the test suite")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="instead of the main comparison, compare SoftSAE variants (package defaults, "
        "gradient to the pre-activations, the paper's settings, alpha_end, k_max) with TopK",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default out/synthetic, out/synthetic_ablation or out/synthetic_quick)",
    )
    p.add_argument("--json", type=Path, default=None, help="JSON path (default OUT/results.json)")
    p.add_argument(
        "--regimes",
        nargs="+",
        choices=["bimodal", "spread"],
        default=None,
        help="regimes to run (default: both)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--training-samples", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument(
        "--k-max-factor", type=float, default=None, help="SoftSAE k_max = factor * k (default 4)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes training SAEs in parallel (default 2; 1 with --quick)",
    )
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads per process (default 1)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--replot",
        type=Path,
        default=None,
        metavar="JSON",
        help="train nothing: redraw the Markdown and PNGs of a saved results JSON into --out "
        "(default: the JSON's folder)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def replot(json_path: Path, out_dir: Path | None) -> dict[str, Any]:
    """Redraw ``results.md`` and the PNGs of a saved result (no training)."""
    result = json.loads(json_path.read_text())
    out_dir = out_dir if out_dir is not None else json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    files = make_plots(result, out_dir)
    (out_dir / "results.md").write_text(markdown_report(result))
    print("wrote " + ", ".join([str(out_dir / "results.md"), *files]))
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the experiment the flags describe; returns the result dict it also writes."""
    args = parse_args(argv)
    if args.replot is not None:
        return replot(args.replot, args.out)
    settings = default_settings(quick=args.quick)
    variants = None
    labels = None
    title = MAIN_TITLE
    if args.ablation:
        variants = ABLATION_VARIANTS
        labels = {n: n for n in ABLATION_VARIANTS}
        title = "Ablation: SoftSAE variants against TopK"
    if args.regimes is not None:
        settings.regimes = [r for r in settings.regimes if r.name in args.regimes]
    if args.seeds is not None:
        settings.seeds = list(args.seeds)
    if args.training_samples is not None:
        settings.training_samples = args.training_samples
    if args.lr is not None:
        settings.lr = args.lr
    if args.k_max_factor is not None:
        settings.k_max_factor = args.k_max_factor
    suffix = "_ablation" if args.ablation else ("_quick" if args.quick else "")
    out_dir = args.out if args.out is not None else Path("out") / f"synthetic{suffix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.json if args.json is not None else out_dir / "results.json"
    command = "python -m softsae_lens.experiments.synthetic " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    workers = args.workers if args.workers is not None else (1 if args.quick else 2)
    result, _ = run_experiment(
        settings,
        variants,
        labels,
        title,
        command.strip(),
        progress=not args.no_progress,
        workers=workers,
        threads=args.threads,
    )
    if args.ablation:
        result["ablation_descriptions"] = ABLATION_DESCRIPTIONS
    files = [str(json_path), str(out_dir / "results.md")]
    if not args.no_plots:
        files += make_plots(result, out_dir)
    result["files"] = files
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    report = markdown_report(result)
    (out_dir / "results.md").write_text(report)
    print(report)
    print("wrote " + ", ".join(files))
    return result
