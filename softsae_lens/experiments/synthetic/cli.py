"""The command line of the synthetic experiment: ``python -m softsae_lens.experiments.synthetic``.

Parses the flags, runs :func:`.runner.run_experiment` (or redraws a saved result with
``--replot``) and writes ``results.json``, ``results.md`` and the PNGs.

Depends on every other module of this package; nothing depends on it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simple_parsing import field

from softsae_lens.experiments.synthetic.arms import (
    ABLATION_DESCRIPTIONS,
    ABLATION_VARIANTS,
    REALISTIC_ABLATION_DESCRIPTIONS,
    REALISTIC_ABLATION_VARIANTS,
)
from softsae_lens.experiments.synthetic.plots import make_plots
from softsae_lens.experiments.synthetic.realistic import RealisticRegime
from softsae_lens.experiments.synthetic.report import markdown_report
from softsae_lens.experiments.synthetic.runner import MAIN_TITLE, run_experiment
from softsae_lens.experiments.synthetic.settings import default_realistic, default_settings
from softsae_lens.flags import config_parser, one_or_more, optional, parse_config, switch

REGIMES = ("bimodal", "spread", "realistic")
PROG = "python -m softsae_lens.experiments.synthetic"


@dataclass
class SyntheticConfig:
    """Does SoftSAE's k_hat track the true number of active features, does any other SAE's L0
    track it better, and do they learn the true features? Trains SoftSAE, TopK (k and k+1),
    BatchTopK, Matryoshka BatchTopK, JumpReLU and matching pursuit on synthetic data with known
    per-input L0: two toy regimes (bimodal, spread) and a realistic one (SAELens's SynthSAEBench
    recipe, scaled down, trained through SyntheticSAERunner). An unset setting keeps the
    experiment's default (see ``settings.py``), which --quick shrinks."""

    quick: bool = switch()
    """tiny run (seconds) for the test suite"""
    ablation: bool = switch()
    """instead of the main comparison, compare SoftSAE variants (package defaults, gradient to
    the pre-activations, the paper's settings, alpha_end, k_max) with TopK on the toy regimes"""
    realistic_ablation: bool = switch()
    """instead of the main comparison, compare SoftSAE training variants with TopK and BatchTopK
    on the realistic regime (one change at a time)"""
    variants: list[str] | None = one_or_more(None, "NAME")
    """with --ablation or --realistic-ablation: run only these variants (unset: all; the names
    are the ablation tables' rows)"""
    out: Path | None = optional("DIR")
    """output folder (unset: out/synthetic, out/synthetic_ablation,
    out/synthetic_realistic_ablation or out/synthetic_quick)"""
    json: Path | None = optional("PATH")
    """JSON path (unset: OUT/results.json)"""
    regimes: list[str] | None = one_or_more(None, "REGIME", choices=REGIMES)
    """regimes to run, of bimodal, spread, realistic (unset: all three; the ablations run their
    own)"""
    seeds: list[int] | None = one_or_more(None, "SEED")
    """toy regimes' seeds (unset: 0 1 2)"""
    training_samples: int | None = optional("int")
    """toy regimes' training samples"""
    lr: float | None = optional("float")
    """toy regimes' learning rate"""
    k_max_factor: float | None = optional("float")
    """SoftSAE k_max = factor * k on the toy regimes (unset: 4)"""
    realistic_seeds: list[int] | None = one_or_more(None, "SEED")
    """the realistic regime's seeds (unset: 0 1 2)"""
    realistic_size: tuple[int, int] | None = field(default=None, type=int, metavar="FEATURES DIMS")
    """true features and dimensions of the realistic regime (unset: 2048 128; d_sae is a
    quarter of the features)"""
    realistic_samples: int | None = optional("int")
    """the realistic regime's training samples (unset: 1,024,000)"""
    realistic_lr: float | None = optional("float")
    """the realistic regime's lr (unset: 3e-3)"""
    realistic_orthogonalize: bool = switch()
    """orthogonalise the true feature directions, as SynthSAEBench does (minutes at thousands
    of features; cached with the stream)"""
    cache: Path = field(default=Path("out") / "synthetic_cache", metavar="DIR")
    """where the realistic regime's recorded training streams are kept for later runs"""
    no_cache: bool = switch()
    """record the streams afresh, keep none"""
    workers: int | None = optional("int")
    """processes training SAEs in parallel (unset: 2; 1 with --quick)"""
    threads: int = 1
    """PyTorch threads per process"""
    no_plots: bool = switch()
    """write no PNGs"""
    replot: Path | None = optional("JSON")
    """train nothing: redraw the Markdown and PNGs of a saved results JSON into --out (unset:
    the JSON's folder)"""
    no_progress: bool = switch()
    """no progress bars"""

    def __post_init__(self) -> None:
        """A one-line ValueError naming the flag, its value and what is allowed."""
        if self.ablation and self.realistic_ablation:
            raise ValueError("--ablation and --realistic-ablation: choose one")
        if self.realistic_lr is not None and not self.realistic_lr > 0:
            raise ValueError(f"--realistic-lr must be > 0, got {self.realistic_lr}")
        if self.variants is not None:
            known = (
                ABLATION_VARIANTS
                if self.ablation
                else REALISTIC_ABLATION_VARIANTS
                if self.realistic_ablation
                else None
            )
            if known is None:
                raise ValueError("--variants needs --ablation or --realistic-ablation")
            unknown = [v for v in self.variants if v not in known]
            if unknown:
                raise ValueError(f"--variants: unknown {unknown}; allowed: {', '.join(known)}")
        for name in ("training_samples", "realistic_samples", "workers", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {value}"
                )
        if self.realistic_size is not None and (
            self.realistic_size[0] < 128 or self.realistic_size[1] < 1
        ):
            raise ValueError(
                "--realistic-size needs FEATURES >= 128 and DIMS >= 1, got "
                f"{list(self.realistic_size)}"
            )


def parse_args(argv: Sequence[str] | None = None) -> SyntheticConfig:
    """The experiment's flags (one per :class:`SyntheticConfig` field)."""
    parser = config_parser(SyntheticConfig, PROG)
    return parse_config(parser, argv, usage_on_error=True).cfg


def _chosen(variants: dict[str, Any], names: Sequence[str] | None) -> dict[str, Any]:
    """The variants named on the command line, in the table's order (all when none named)."""
    return dict(variants) if names is None else {n: v for n, v in variants.items() if n in names}


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
    realistic = default_realistic(quick=args.quick)
    variants = realistic_variants = labels = None
    title = MAIN_TITLE
    regimes = set(args.regimes or REGIMES)
    if args.ablation:
        variants = _chosen(ABLATION_VARIANTS, args.variants)
        labels = {n: n for n in variants}
        title = "Ablation: SoftSAE variants against TopK"
        regimes = set(args.regimes or ("bimodal", "spread"))
    if args.realistic_ablation:
        realistic_variants = _chosen(REALISTIC_ABLATION_VARIANTS, args.variants)
        labels = {n: n for n in realistic_variants}
        title = "Ablation on the realistic regime: SoftSAE training variants against TopK"
        regimes = {"realistic"}
    settings.regimes = [r for r in settings.regimes if r.name in regimes]
    if args.seeds is not None:
        settings.seeds = list(args.seeds)
    if args.training_samples is not None:
        settings.training_samples = args.training_samples
    if args.lr is not None:
        settings.lr = args.lr
    if args.k_max_factor is not None:
        settings.k_max_factor = args.k_max_factor
    if args.realistic_seeds is not None:
        realistic.seeds = list(args.realistic_seeds)
    if args.realistic_samples is not None:
        realistic.training_samples = args.realistic_samples
    if args.realistic_lr is not None:
        realistic.lr = args.realistic_lr
    if args.realistic_size is not None:
        features, dims = args.realistic_size
        realistic.regimes = [RealisticRegime("realistic", features, dims)]
    if args.realistic_orthogonalize:
        realistic.regimes = [dataclasses.replace(r, orthogonalize=True) for r in realistic.regimes]
    suffix = (
        "_ablation"
        if args.ablation
        else "_realistic_ablation"
        if args.realistic_ablation
        else ("_quick" if args.quick else "")
    )
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
        realistic=realistic if "realistic" in regimes else None,
        realistic_variants=realistic_variants,
        cache_dir=None if args.no_cache else args.cache,
    )
    if args.ablation:
        result["ablation_descriptions"] = ABLATION_DESCRIPTIONS
    if args.realistic_ablation:
        result["ablation_descriptions"] = REALISTIC_ABLATION_DESCRIPTIONS
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
