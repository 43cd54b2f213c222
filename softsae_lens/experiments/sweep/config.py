"""The sweep's settings (:class:`SweepConfig`, the CLI flags) and the SAE config of each run.

Every SAE gets the same width, learning rate, steps, normalisation and data; each
architecture gets its package defaults plus its sparsity knob set from the target L0:

* ``soft`` (this package): ``k`` = target (the mean k_hat the one-sided penalty holds);
* ``topk``, ``batchtopk``: ``k`` = target;
* ``matryoshka_batchtopk``: ``k`` = target, nested widths ``d_sae/16, d_sae/4, d_sae``;
* ``jumprelu``: SAELens's ``"quadratic"`` sparsity loss (Gemma Scope 2) with
  ``target_l0`` = target and ``jumprelu_ste_to_input=True`` (Anthropic's straight-through
  estimator); its initial threshold is calibrated on a pilot batch (:mod:`.calibrate`);
* ``matching_pursuit``: ``max_iterations`` = ``mp_max_iterations_factor`` x target (the same
  per-token ceiling as SoftSAE's default ``k_max = 2k``) and a residual threshold steered
  toward the target during training (:mod:`.calibrate`).

Depends on SAELens's config classes and :mod:`softsae_lens`; knows nothing about models,
data or files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from softsae_lens.data.corpus.sources import SOURCES
from softsae_lens.experiments.lm_shared import add_model_and_text_flags
from softsae_lens.models import check_model_choice

ARCHITECTURES = (
    "soft",
    "topk",
    "batchtopk",
    "matryoshka_batchtopk",
    "jumprelu",
    "matching_pursuit",
)
K_BASED = ("soft", "topk", "batchtopk", "matryoshka_batchtopk")
DEFAULT_TARGETS = (16, 32, 64)
DEFAULT_OUT = Path("out/sweep")


@dataclass
class SweepConfig:
    """Settings of one sweep (the CLI flags; see ``--help``)."""

    targets: tuple[int, ...] = DEFAULT_TARGETS
    architectures: tuple[str, ...] = ARCHITECTURES
    tokens: int = 100_000
    d_sae: int | None = None  # default 4 x d_model
    lr: float = 1e-3
    batch_tokens: int = 512
    context_size: int = 128
    layer: int = 5
    model: str | None = None  # TransformerLens name; None: SmolLM2-135M-Instruct offline
    model_path: Path | None = None  # a .gguf file or a local Hugging Face model folder
    sources: tuple[str, ...] = SOURCES  # local text sources to use when present
    out: Path = DEFAULT_OUT
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    eval_batches: int = 1
    eval_variance_batches: int = 32
    eval_batch_prompts: int = 8
    k_report_docs: int = 12
    mp_max_iterations_factor: float = 2.0
    soft_k_budget: str = "normalize"  # SoftTrainingSAEConfig.k_budget
    pilot_rows: int = 16
    autocast: bool = False
    plan_only: bool = False
    quick: bool = False
    replot: Path | None = None

    def run_name(self, arch: str, target: int) -> str:
        """Name of one SAE (its folder under ``out/saes``)."""
        return f"{arch}-{target}"

    def runs(self) -> list[tuple[str, str, int]]:
        """``(name, architecture, target)`` for every SAE, architecture-major."""
        return [(self.run_name(a, t), a, t) for a in self.architectures for t in self.targets]

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_tokens


# A smoke test of the whole pipeline on the real model: every SAE, a few steps, tiny evals.
QUICK = {
    "tokens": 4096,
    "d_sae": 1152,
    "batch_tokens": 512,
    "eval_batches": 1,
    "eval_variance_batches": 1,
    "eval_batch_prompts": 2,
    "k_report_docs": 2,
    "pilot_rows": 8,
}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 16,32,64, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _arch_list(text: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in values if v not in ARCHITECTURES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown architecture(s) {unknown or text!r}; choose from {','.join(ARCHITECTURES)}"
        )
    return values


def parse_args(argv: list[str] | None = None, doc: str | None = None) -> SweepConfig:
    """Parse the sweep's flags into a :class:`SweepConfig` (``--quick`` applies :data:`QUICK`
    to every flag left at its default)."""
    d = SweepConfig()
    p = argparse.ArgumentParser(
        prog="python -m softsae_lens.experiments.sweep",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--targets", type=_int_list, default=d.targets, help="target L0s (default 16,32,64)")
    add(
        "--architectures",
        type=_arch_list,
        default=d.architectures,
        help=f"comma-separated subset of {','.join(ARCHITECTURES)} (default: all)",
    )
    add("--tokens", type=int, default=None, help=f"training tokens (default {d.tokens:,})")
    add("--d-sae", type=int, default=None, help="latents of every SAE (default 4 x d_model)")
    add("--lr", type=float, default=d.lr, help="learning rate of every SAE")
    add(
        "--batch-tokens", type=int, default=None, help=f"tokens per step (default {d.batch_tokens})"
    )
    add("--context-size", type=int, default=d.context_size, help="tokens per row")
    add("--layer", type=int, default=d.layer, help="residual stream layer (hook_resid_post)")
    add_model_and_text_flags(p, d.sources)
    add("--out", type=Path, default=None, help=f"output folder (default {d.out})")
    add("--seed", type=int, default=d.seed, help="seed (also picks the held-out documents)")
    add("--device", default=d.device, help="torch device")
    add("--threads", type=int, default=d.threads, help="torch CPU threads (default 1)")
    add(
        "--eval-batches",
        type=int,
        default=None,
        help=f"held-out batches per SAE for CE/KL, 3 full forwards each (default {d.eval_batches})",
    )
    add(
        "--eval-variance-batches",
        type=int,
        default=None,
        help=f"held-out batches per SAE for EV, MSE, L0 (default {d.eval_variance_batches})",
    )
    add(
        "--eval-batch-prompts",
        type=int,
        default=None,
        help=f"rows per evaluation batch (default {d.eval_batch_prompts})",
    )
    add(
        "--k-report-docs",
        type=int,
        default=None,
        help=f"held-out documents for SoftSAE's per-token k_hat (default {d.k_report_docs})",
    )
    add(
        "--mp-max-iterations-factor",
        type=float,
        default=d.mp_max_iterations_factor,
        help="matching pursuit's max_iterations = factor x target (default 2, as k_max = 2k)",
    )
    add(
        "--soft-k-budget",
        choices=("normalize", "penalty"),
        default=d.soft_k_budget,
        help="SoftSAE's k_budget: 'normalize' (default) holds the mean k on the target; "
        "'penalty' is the previous one-sided penalty alone",
    )
    add("--autocast", action="store_true", help="train the SAEs under bf16 autocast")
    add(
        "--quick",
        action="store_true",
        help="a smoke test: every SAE, 8 steps, tiny evaluations (minutes on SmolLM2)",
    )
    add("--plan-only", action="store_true", help="print the corpus, run and costs; train nothing")
    add(
        "--replot",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="redraw results.md and the plots next to an earlier results.json; train nothing",
    )
    a = p.parse_args(argv)
    if a.replot is not None:
        if not a.replot.is_file():
            p.error(f"--replot {a.replot}: no such file")
        return replace(d, replot=a.replot)

    cfg = replace(
        d,
        targets=a.targets,
        architectures=a.architectures,
        lr=a.lr,
        context_size=a.context_size,
        layer=a.layer,
        model=a.model,
        model_path=a.model_path,
        sources=a.sources,
        seed=a.seed,
        device=a.device,
        threads=a.threads,
        mp_max_iterations_factor=a.mp_max_iterations_factor,
        soft_k_budget=a.soft_k_budget,
        autocast=a.autocast,
        quick=a.quick,
        plan_only=a.plan_only,
    )
    if a.quick:
        cfg = replace(cfg, **QUICK, out=Path("out/sweep_quick"))
    given = {
        "tokens": a.tokens,
        "d_sae": a.d_sae,
        "batch_tokens": a.batch_tokens,
        "out": a.out,
        "eval_batches": a.eval_batches,
        "eval_variance_batches": a.eval_variance_batches,
        "eval_batch_prompts": a.eval_batch_prompts,
        "k_report_docs": a.k_report_docs,
    }
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    try:
        validate(cfg)
    except ValueError as err:
        p.error(str(err))
    return cfg


def validate(cfg: SweepConfig) -> None:
    """Raise ValueError naming the first setting that cannot work."""
    for name in (
        "tokens",
        "batch_tokens",
        "context_size",
        "threads",
        "eval_batches",
        "eval_variance_batches",
        "eval_batch_prompts",
        "pilot_rows",
    ):
        if getattr(cfg, name) <= 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}"
            )
    if cfg.k_report_docs < 0:
        raise ValueError(f"--k-report-docs must be >= 0, got {cfg.k_report_docs}")
    if cfg.tokens < cfg.batch_tokens:
        raise ValueError(
            f"--tokens={cfg.tokens} is less than one batch (--batch-tokens={cfg.batch_tokens})"
        )
    if cfg.mp_max_iterations_factor < 1:
        raise ValueError(
            f"--mp-max-iterations-factor must be >= 1 (a cap below the target L0 cannot reach "
            f"it), got {cfg.mp_max_iterations_factor}"
        )
    if cfg.d_sae is not None and max(cfg.targets) * 2 > cfg.d_sae:
        raise ValueError(
            f"--d-sae={cfg.d_sae} must be at least twice the largest target L0 "
            f"({max(cfg.targets)}): SoftSAE's k_max is 2k"
        )
    check_model_choice(cfg.model, cfg.model_path)
    if len(set(cfg.targets)) != len(cfg.targets):
        raise ValueError(f"--targets has repeated values: {cfg.targets}")


def matryoshka_widths(d_sae: int) -> list[int]:
    """Nested dictionary sizes for Matryoshka BatchTopK: d_sae/16, d_sae/4, d_sae."""
    widths = sorted({max(1, d_sae // 16), max(1, d_sae // 4), d_sae})
    return widths


def sae_config(arch: str, target: int, d_in: int, d_sae: int, cfg: SweepConfig) -> Any:
    """The training config of one SAE: package defaults plus the sparsity knob for ``target``."""
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.matching_pursuit_sae import MatchingPursuitTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAEConfig

    from softsae_lens import SoftTrainingSAEConfig

    # Residual norms vary by model and layer; SAELens's scaling (folded into the saved weights)
    # lets one learning rate serve every architecture.
    common = {
        "d_in": d_in,
        "d_sae": d_sae,
        "device": cfg.device,
        "normalize_activations": "expected_average_only_in",
    }
    if arch == "soft":
        return SoftTrainingSAEConfig(k=target, k_budget=cfg.soft_k_budget, **common)
    if arch == "topk":
        return TopKTrainingSAEConfig(k=target, **common)
    if arch == "batchtopk":
        return BatchTopKTrainingSAEConfig(k=target, **common)
    if arch == "matryoshka_batchtopk":
        return MatryoshkaBatchTopKTrainingSAEConfig(
            k=target, matryoshka_widths=matryoshka_widths(d_sae), **common
        )
    if arch == "jumprelu":
        # The STE also reaching the pre-activations lets the L0 loss shrink the encoder, not
        # only raise the threshold by ~lr per step (see calibrate.py for the measurement).
        return JumpReLUTrainingSAEConfig(
            jumprelu_sparsity_loss_mode="quadratic",
            target_l0=float(target),
            jumprelu_ste_to_input=True,
            **common,
        )
    if arch == "matching_pursuit":
        from softsae_lens.experiments.sweep.calibrate import initial_residual_threshold

        return MatchingPursuitTrainingSAEConfig(
            max_iterations=max(target, round(cfg.mp_max_iterations_factor * target)),
            residual_threshold=initial_residual_threshold(d_in),
            **common,
        )
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
