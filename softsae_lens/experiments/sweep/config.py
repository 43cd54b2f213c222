"""The sweep's settings (:class:`SweepConfig`, whose fields are the CLI flags) and the SAE config
of each run.

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
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from simple_parsing import field

from softsae_lens.data.corpus.sources import SOURCES, parse_sources
from softsae_lens.evals.lm import EvalBudget
from softsae_lens.flags import (
    comma_separated,
    config_parser,
    names_from,
    one_or_more,
    optional,
    parse_config,
    switch,
)
from softsae_lens.models import check_model_choice
from softsae_lens.training.decoder_bias import DecoderBiasInit

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
PROG = "python -m softsae_lens.experiments.sweep"


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
    return names_from(ARCHITECTURES, text, "architecture")


@dataclass
class SweepConfig:
    """Settings of one sweep: SoftSAE against SAELens's architectures at each target L0."""

    targets: tuple[int, ...] = comma_separated(DEFAULT_TARGETS, _int_list, "L0[,L0...]")
    """target L0s, comma-separated"""
    architectures: tuple[str, ...] = comma_separated(ARCHITECTURES, _arch_list, "ARCH[,ARCH...]")
    """comma-separated subset of soft,topk,batchtopk,matryoshka_batchtopk,jumprelu,matching_pursuit"""
    tokens: int = 100_000
    """training tokens"""
    d_sae: int | None = optional("int")
    """latents of every SAE (unset: 4 x d_model)"""
    lr: float = 1e-3
    """learning rate of every SAE"""
    b_dec_init: DecoderBiasInit = "zeros"
    """where every SAE's decoder bias starts: zeros (SAELens's default) or mean (the pilot rows' mean activation; for residual streams whose mean dominates, as Gemma's does)"""
    batch_tokens: int = 512
    """tokens per step"""
    context_size: int = 128
    """tokens per row"""
    layer: int = 5
    """residual stream layer (hook_resid_post)"""
    model: str | None = optional("NAME")
    """TransformerLens model name (unset: SmolLM2-135M-Instruct, offline)"""
    model_path: Path | None = optional("PATH")
    """a .gguf file or a local Hugging Face model folder, booted as a bridge, offline"""
    sources: tuple[str, ...] = comma_separated(SOURCES, parse_sources, "SOURCE[,SOURCE...]")
    """local text sources to use when present, comma-separated"""
    out: Path = DEFAULT_OUT
    """output folder (out/sweep_quick with --quick)"""
    seed: int = 0
    """seed (also picks the held-out documents)"""
    device: str = "cpu"
    """torch device"""
    threads: int = 1
    """torch CPU threads"""
    eval_batches: int = 1
    """held-out batches per SAE for CE/KL, 3 full forwards each"""
    eval_variance_batches: int = 32
    """held-out batches per SAE for EV, MSE, L0"""
    eval_batch_prompts: int = 8
    """rows per evaluation batch"""
    k_report_docs: int = 12
    """held-out documents for SoftSAE's per-token k_hat"""
    mp_max_iterations_factor: float = 2.0
    """matching pursuit's max_iterations = factor x target (2, as SoftSAE's k_max = 2k)"""
    soft_k_budget: str = field(default="normalize", choices=("normalize", "penalty"))
    """SoftSAE's k_budget: 'normalize' holds the mean k on the target; 'penalty' is the
    previous one-sided penalty alone"""
    soft_k_max_factor: float = 2.0
    """SoftSAE's k_max = factor x target: the most latents one token may get (2, the package
    default; 4 lets the per-token k spread further)"""
    pilot_rows: int = 16
    """rows of the pilot batch (from the far end of the training split) that sets the activation
    scale, starts JumpReLU's threshold and times a training step (0: no pilot, as in the demo:
    the SAEs draw in turn from the seeded stream, the plan prices the evaluation only and the
    decoder bias starts at the first training rows' mean; not with jumprelu)"""
    activation_cache: Path | None = optional("DIR")
    """train every SAE from the model's activations cached on disk in DIR (computed once, then
    reused; the file is keyed by model, hook, tokens and count, so sweeps over other
    architectures, run at the same time on other cores, wait for it and share it) instead of
    one activation stream feeding every SAE"""
    autocast: bool = switch()
    """train the SAEs under bf16 autocast"""
    plan_only: bool = switch()
    """print the corpus, run and costs; train nothing"""
    quick: bool = switch()
    """a smoke test: every SAE, 8 steps, tiny evaluations (minutes on SmolLM2); sets the
    defaults of --tokens, --d-sae, --batch-tokens, the --eval-* flags, --k-report-docs,
    --pilot-rows and --out"""
    replot: Path | None = optional("RESULTS_JSON")
    """redraw results.md and the plots next to an earlier results.json; train nothing"""
    merge: list[Path] | None = one_or_more(None, "RESULTS_JSON", type=Path)
    """one report in --out (results.json, results.md, plots) from the results.json of sweeps over
    disjoint architectures with the same settings (run side by side, one per core); train nothing"""
    # What a preset of the pipeline sets (the demo, :mod:`softsae_lens.experiments.demo`); no flags.
    names: dict[str, str] | None = field(default=None, cmd=False)
    """each architecture's SAE name (its folder under ``out/saes``; one target only), in place of
    ``<architecture>-<target>``"""
    d_sae_per_d_model: int = field(default=4, cmd=False)
    """``d_sae`` when ``--d-sae`` is unset, in multiples of the model's ``d_model``"""
    dataset: str | None = field(default=None, cmd=False)
    """a Hugging Face dataset with a 'text' column, streamed, in place of the local corpus (its
    first 200 documents held out; needs ``pilot_rows=0``)"""
    l0_report: bool = field(default=True, cmd=False)
    """compare every SAE's per-token L0 with the token's surprisal (with ``k_report_docs``)"""
    label: str = field(default="sweep", cmd=False)
    """the prefix of the progress lines"""

    def __post_init__(self) -> None:
        """A one-line ValueError naming the first setting that cannot work (with ``--replot``,
        only that the file is there: nothing else is read)."""
        if self.replot is not None:
            if not self.replot.is_file():
                raise ValueError(f"--replot {self.replot}: no such file")
            return
        if self.merge is not None:
            missing = [str(p) for p in self.merge if not p.is_file()]
            if missing:
                raise ValueError(f"--merge {' '.join(missing)}: no such file")
            return
        validate(self)

    def run_name(self, arch: str, target: int) -> str:
        """Name of one SAE (its folder under ``out/saes``)."""
        return f"{arch}-{target}" if self.names is None else self.names[arch]

    def runs(self) -> list[tuple[str, str, int]]:
        """``(name, architecture, target)`` for every SAE, architecture-major."""
        return [(self.run_name(a, t), a, t) for a in self.architectures for t in self.targets]

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_tokens

    def eval_budget(self) -> EvalBudget:
        """What ``run_evals`` and the per-token reports read per SAE."""
        return EvalBudget(
            ce_batches=self.eval_batches,
            variance_batches=self.eval_variance_batches,
            batch_prompts=self.eval_batch_prompts,
            context_size=self.context_size,
            k_report_docs=self.k_report_docs,
            k_report_tokens=self.context_size,
        )


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


def _quick_given(argv: list[str]) -> bool:
    """Whether ``argv`` holds ``--quick`` (read as the parser will, abbreviations included)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--quick", action="store_true")
    return probe.parse_known_args(argv)[0].quick


def parse_args(argv: list[str] | None = None, doc: str | None = None) -> SweepConfig:
    """Parse the sweep's flags into a :class:`SweepConfig`: ``--quick`` makes :data:`QUICK`
    the defaults, so the flags given beside it still win."""
    argv = list(sys.argv[1:] if argv is None else argv)
    default = None
    if _quick_given(argv):
        default = replace(SweepConfig(), **QUICK, out=Path("out/sweep_quick"), quick=True)
    parser = config_parser(SweepConfig, PROG, doc, default=default)
    return parse_config(parser, argv, usage_on_error=True).cfg


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
    ):
        if getattr(cfg, name) <= 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}"
            )
    for name in ("k_report_docs", "pilot_rows"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.pilot_rows == 0 and "jumprelu" in cfg.architectures:
        raise ValueError("jumprelu needs a pilot batch to start its threshold: --pilot-rows > 0")
    if cfg.activation_cache is not None and cfg.dataset is not None:
        raise ValueError(
            "--activation-cache needs the local corpus (its pre-tokenised rows), not a streamed "
            "dataset"
        )
    if cfg.dataset is not None and cfg.pilot_rows:
        raise ValueError("a streamed dataset has no far end for a pilot batch: pilot_rows=0")
    if cfg.names is not None and (
        len(cfg.targets) != 1 or set(cfg.names) != set(cfg.architectures)
    ):
        raise ValueError(f"names {cfg.names} need one target and a name per architecture")
    if cfg.tokens < cfg.batch_tokens:
        raise ValueError(
            f"--tokens={cfg.tokens} is less than one batch (--batch-tokens={cfg.batch_tokens})"
        )
    if cfg.mp_max_iterations_factor < 1:
        raise ValueError(
            f"--mp-max-iterations-factor must be >= 1 (a cap below the target L0 cannot reach "
            f"it), got {cfg.mp_max_iterations_factor}"
        )
    if cfg.soft_k_max_factor < 1:
        raise ValueError(
            f"--soft-k-max-factor must be >= 1 (a ceiling below the target cannot hold it), "
            f"got {cfg.soft_k_max_factor}"
        )
    # SoftSAE's k_max and matching pursuit's iterations are both at least 2 x the target.
    factor = max(2.0, cfg.soft_k_max_factor) if "soft" in cfg.architectures else 2.0
    if cfg.d_sae is not None and max(cfg.targets) * factor > cfg.d_sae:
        raise ValueError(
            f"--d-sae={cfg.d_sae} must be at least {factor:g} x the largest target L0 "
            f"({max(cfg.targets)}): SoftSAE's k_max is {cfg.soft_k_max_factor:g}k"
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
        return SoftTrainingSAEConfig(
            k=target,
            k_max=cfg.soft_k_max_factor * target,
            k_budget=cfg.soft_k_budget,
            **common,
        )
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
